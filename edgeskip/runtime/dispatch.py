"""Admission of requests to one executor: run at once, wait in a bounded queue, or drop. Pure logic.

The daemon, the in-process driver and the simulator all drive this one state machine with the times of
their own clock, so the three behave alike:

- A request that finds the executor idle (and nobody waiting) starts at once, with the policy's config.
- Otherwise, with ``queue_depth`` 0 (the default, the paper's drop-when-busy), it is dropped (``busy``).
- With a queue, it waits if there is room (else ``queue_full``), unless the estimated completion time
  would exceed its arrival + ``deadline`` (``deadline``: dropped at once rather than answered late).
- When a request finishes, the policy learns its service time, queued requests whose deadline can no
  longer be met are dropped (``deadline``), and the next one starts with the config the policy chooses then.

Deadlines bound the time from arrival to the end of the inference (MLPerf server-scenario semantics);
estimates come from :class:`edgeskip.runtime.policies.ServiceModel` fed with every finished request.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.policies import Policy, ServiceModel

DROP_REASONS = ("busy", "queue_full", "deadline")


@dataclass(frozen=True)
class Start:
    """Run request ``rid`` now with Pareto config ``config``."""

    rid: Hashable
    config: int


@dataclass(frozen=True)
class Drop:
    """Answer request ``rid`` as dropped (``reason`` in :data:`DROP_REASONS`); ``config``: the policy's now."""

    rid: Hashable
    reason: str
    config: int


@dataclass(frozen=True)
class Queued:
    """Request ``rid`` waits; ``position`` requests are ahead of it in the queue."""

    rid: Hashable
    position: int


def check_queue(queue_depth: int, deadline: float | None) -> None:
    """One-line errors for a negative depth or a non-positive deadline."""
    if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or queue_depth < 0:
        raise EdgeskipError(f"--queue-depth must be an integer >= 0, got {queue_depth!r}")
    if deadline is not None and not (deadline > 0 and math.isfinite(deadline)):
        raise EdgeskipError(f"--deadline-ms must be > 0, got {deadline!r}")
    if deadline is not None and queue_depth == 0:
        raise EdgeskipError(
            "--deadline-ms needs --queue-depth >= 1 (without a queue every request starts at once or is dropped)"
        )


@dataclass
class Dispatcher:
    """One executor, an optional FIFO queue of ``queue_depth`` with a ``deadline`` (s), and a policy."""

    policy: Policy
    service: ServiceModel
    queue_depth: int = 0
    deadline: float | None = None
    running: tuple[Hashable, int, float] | None = field(init=False, default=None)  # rid, config, start
    queue: deque = field(init=False, default_factory=deque)  # (rid, arrival)
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        check_queue(self.queue_depth, self.deadline)
        self.counts = {"started": 0, **{r: 0 for r in DROP_REASONS}}

    @property
    def busy(self) -> bool:
        """A request is running."""
        return self.running is not None

    @property
    def queued(self) -> int:
        return len(self.queue)

    def _start(self, now: float, rid: Hashable, config: int) -> Start:
        self.running = (rid, config, now)
        self.counts["started"] += 1
        return Start(rid, config)

    def _drop(self, rid: Hashable, reason: str) -> Drop:
        self.counts[reason] += 1
        return Drop(rid, reason, self.policy.config)

    def _free_at(self, now: float) -> float:
        """Estimated time the executor finishes what is running and queued now."""
        t = now
        if self.running is not None:
            _, c, s = self.running
            t = max(now, s + self.service.estimate(c))
        return t + sum(self.service.estimate(self.policy.config) for _ in self.queue)

    def arrive(self, now: float, rid: Hashable) -> Start | Drop | Queued:
        """A request arrives at ``now``."""
        self.policy.on_request(now, self.busy, len(self.queue))
        if not self.busy:
            return self._start(now, rid, self.policy.on_start(now, 0))
        if self.queue_depth == 0:
            return self._drop(rid, "busy")
        if len(self.queue) >= self.queue_depth:
            return self._drop(rid, "queue_full")
        if (
            self.deadline is not None
            and self._free_at(now) + self.service.estimate(self.policy.config) > now + self.deadline
        ):
            return self._drop(rid, "deadline")
        self.queue.append((rid, now))
        return Queued(rid, len(self.queue) - 1)

    def finish(
        self, now: float, service_s: float, config: int | None = None, observed: bool = True
    ) -> list[Start | Drop]:
        """The running request finished at ``now`` after ``service_s`` s (``config``: what it actually ran, if
        not the one it was started with, e.g. a pinned request; ``observed`` False: it failed, its time says
        nothing about the config). Returns what happens next, in order."""
        if self.running is None:
            raise EdgeskipError("finish() without a running request")
        _, started_config, _ = self.running
        ran = started_config if config is None else config
        if observed:
            self.policy.on_finish(now, ran, service_s)
            if self.service is not getattr(self.policy, "service", None):
                self.service.observe(ran, service_s)
        self.running = None
        out: list[Start | Drop] = []
        while self.queue:
            rid, arrival = self.queue.popleft()
            config = self.policy.on_start(now, len(self.queue))
            if self.deadline is not None and now + self.service.estimate(config) > arrival + self.deadline:
                out.append(self._drop(rid, "deadline"))
                continue
            out.append(self._start(now, rid, config))
            break
        return out

    def cancel(self, rid: Hashable) -> bool:
        """Forget a queued request (its client went away); False if it was not waiting."""
        for i, (r, _) in enumerate(self.queue):
            if r == rid:
                del self.queue[i]
                return True
        return False


def service_model_for(policy: Policy, prior: Sequence[float]) -> ServiceModel:
    """The policy's own service model where it has one (``rate``/``mix``), else a new one over ``prior``."""
    model = getattr(policy, "service", None)
    return model if isinstance(model, ServiceModel) else ServiceModel(list(prior))
