"""Discrete-event replay of an arrival trace against one simulated executor (policy studies, tests).

The same :class:`edgeskip.runtime.dispatch.Dispatcher` as the daemon and the in-process driver decides;
only the executor is simulated: a request started at ``t`` with config ``c`` finishes at
``t + service_time(c)``. An arrival at the very instant a request finishes finds the executor free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from edgeskip.runtime.dispatch import Dispatcher, Drop, Queued, Start, service_model_for
from edgeskip.runtime.policies import Policy


@dataclass(frozen=True)
class Outcome:
    """One request of a simulated trace (``reason``: why it was dropped, None if processed)."""

    arrival: float
    dropped: bool
    config: int
    start: float | None
    finish: float | None
    reason: str | None = None


def simulate(
    arrivals: Sequence[float],
    service_time: Callable[[int], float],
    policy: Policy,
    queue_depth: int = 0,
    deadline: float | None = None,
    prior: Sequence[float] | None = None,
) -> list[Outcome]:
    """Replay ``arrivals`` (s); returns one outcome per request, in arrival order.

    ``prior``: service-time estimates per config for deadline admission when the policy keeps none of its
    own (``paper``, ``fixed``); default ``service_time(c)`` for each of the policy's configs."""
    times = sorted(arrivals)
    if prior is None:
        n = len(getattr(policy, "accuracies", ())) or max(policy.allowed) + 1
        prior = [service_time(c) for c in range(n)]
    disp = Dispatcher(policy, service_model_for(policy, prior), queue_depth, deadline)
    out: list[Outcome | None] = [None] * len(times)
    run: dict[str, float] = {}  # start, finish, config of the running request

    def apply(actions: Sequence[Start | Drop], now: float) -> None:
        for a in actions:
            if isinstance(a, Drop):
                rid = cast(int, a.rid)  # this simulation's request ids are arrival indices
                out[rid] = Outcome(times[rid], True, a.config, None, None, a.reason)
            else:
                finish = now + service_time(a.config)
                run.update(rid=cast(int, a.rid), config=a.config, start=now, finish=finish)

    def settle(until: float) -> None:
        while disp.busy and run["finish"] <= until:
            rid, f, s = int(run["rid"]), run["finish"], run["start"]
            out[rid] = Outcome(times[rid], False, int(run["config"]), s, f)
            apply(disp.finish(f, f - s), f)

    for i, t in enumerate(times):
        settle(t)
        a = disp.arrive(t, i)
        if not isinstance(a, Queued):
            apply([a], t)
    settle(float("inf"))
    return [o for o in out if o is not None]
