"""Algorithm 1 of Korol, Beck, Castrillon: adapt the depth configuration to the request load.

Pure logic, no I/O and no clock of its own: callers pass the arrival time and whether the executor
is busy, so the policy is tested on scripted traces.

- Configs of the Pareto front whose accuracy is below ``min_acc`` are removed once.
- Start with no skipping (the first remaining config).
- A request that arrives while the executor is busy is dropped, and the controller moves one config
  toward more skipping (staying at the last).
- Otherwise, if the time since the last *processed* request exceeds ``delta_req``, it moves one config
  toward less skipping (staying at the first); the request is processed with the current config and
  ``t_last`` becomes its arrival time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from edgeskip.errors import EdgeskipError


@dataclass(frozen=True)
class Decision:
    """What to do with one request: drop it, or process it with Pareto config ``config``."""

    dropped: bool
    config: int  # index into the bundle's Pareto configs (for a drop: the config after moving)


@dataclass
class AdaptiveController:
    """Algorithm 1. ``accuracies[i]`` is the accuracy of Pareto config i (0 = no skipping)."""

    accuracies: Sequence[float]
    min_acc: float
    delta_req: float
    allowed: list[int] = field(init=False)
    position: int = field(init=False, default=0)
    t_last: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.delta_req <= 0:
            raise EdgeskipError(f"delta_req must be > 0, got {self.delta_req}")
        self.allowed = [i for i, a in enumerate(self.accuracies) if a >= self.min_acc]
        if not self.allowed:
            best = max(self.accuracies) if self.accuracies else float("nan")
            raise EdgeskipError(f"no config reaches --min-acc {self.min_acc:.4f} (best is {best:.4f})")

    @property
    def config(self) -> int:
        """The Pareto config index currently selected."""
        return self.allowed[self.position]

    def on_request(self, now: float, busy: bool) -> Decision:
        """Decide for a request arriving at ``now`` (seconds, any monotonic origin)."""
        if busy:
            self.position = min(self.position + 1, len(self.allowed) - 1)
            return Decision(True, self.config)
        if self.t_last is not None and now - self.t_last > self.delta_req:
            self.position = max(self.position - 1, 0)
        self.t_last = now
        return Decision(False, self.config)


@dataclass
class FixedController:
    """Baseline: always the same config; requests arriving while busy are still dropped."""

    fixed: int

    @property
    def config(self) -> int:
        return self.fixed

    def on_request(self, now: float, busy: bool) -> Decision:
        return Decision(busy, self.fixed)


@dataclass(frozen=True)
class Outcome:
    """One request of a simulated trace."""

    arrival: float
    dropped: bool
    config: int
    start: float | None
    finish: float | None


def simulate(arrivals: Sequence[float], service_time: Callable[[int], float],
             controller: AdaptiveController | FixedController) -> list[Outcome]:
    """Replay arrival times against one executor whose service time depends on the config.

    The executor is busy from a request's arrival until ``arrival + service_time(config)``.
    """
    out: list[Outcome] = []
    busy_until = float("-inf")
    for t in sorted(arrivals):
        d = controller.on_request(t, busy=t < busy_until)
        if d.dropped:
            out.append(Outcome(t, True, d.config, None, None))
        else:
            busy_until = t + service_time(d.config)
            out.append(Outcome(t, False, d.config, t, busy_until))
    return out
