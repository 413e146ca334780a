"""Named benchmark runs (``original``, ``paper``, ``rate+q4``, ``config 3`` ...) and a load sweep over them.

A run label is ``NAME[+qDEPTH][+dDEADLINE_MS]``: NAME is ``original`` (config 0, fixed), ``config K`` (or
``cK``; fixed), or a policy of :data:`edgeskip.runtime.choices.POLICIES`; ``+q4`` adds a queue of 4 and
``+d2.5`` a deadline of 2.5 ms (arrival to end of inference). Without ``+q`` requests are dropped when busy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.choices import POLICIES
from edgeskip.runtime.dispatch import check_queue
from edgeskip.runtime.policies import Policy, make_policy

_LABEL = re.compile(r"^(?P<name>[a-z]+|config \d+|c\d+)(?:\+q(?P<q>\d+))?(?:\+d(?P<d>\d+(?:\.\d+)?))?$")


@dataclass(frozen=True)
class RunSpec:
    """One run of a benchmark: a policy (or a fixed config), a queue depth and a deadline (s)."""

    label: str
    policy: str  # a POLICIES name or "fixed"
    fixed: int | None = None
    queue_depth: int = 0
    deadline: float | None = None
    params: dict[str, float] = field(default_factory=dict)

    def build(
        self, accuracies: Sequence[float], min_acc: float, service_prior: Sequence[float], delta_req: float, **_: Any
    ) -> tuple[Policy, int, float | None]:
        """A fresh policy for one run, with this spec's queue depth and deadline."""
        if self.fixed is not None and not 0 <= self.fixed < len(accuracies):
            raise EdgeskipError(f"run {self.label!r}: config {self.fixed} out of range 0..{len(accuracies) - 1}")
        policy = make_policy(
            self.policy,
            accuracies,
            min_acc,
            delta_req=delta_req,
            service_prior=service_prior,
            fixed=self.fixed,
            queue_depth=self.queue_depth,
            **self.params,
        )
        return policy, self.queue_depth, self.deadline

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "fixed": self.fixed,
            "queue_depth": self.queue_depth,
            "deadline_ms": None if self.deadline is None else self.deadline * 1e3,
            **self.params,
        }


def parse_run(label: str, params: dict[str, float] | None = None) -> RunSpec:
    """A run label (see the module docstring) as a RunSpec; a one-line error for anything else."""
    m = _LABEL.match(label.strip())
    if not m:
        raise EdgeskipError(
            f"bad run {label!r}: expected NAME[+qDEPTH][+dDEADLINE_MS], NAME one of original, "
            f"config K, {', '.join(POLICIES)}"
        )
    name, q, d = m["name"], int(m["q"] or 0), (float(m["d"]) / 1e3 if m["d"] else None)
    check_queue(q, d)
    if name == "original":
        return RunSpec(label.strip(), "fixed", 0, q, d)
    if name.startswith("config ") or re.fullmatch(r"c\d+", name):
        return RunSpec(label.strip(), "fixed", int(name.removeprefix("config ").removeprefix("c")), q, d)
    if name not in POLICIES:
        raise EdgeskipError(f"bad run {label!r}: unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return RunSpec(label.strip(), name, None, q, d, dict(params or {}) if name in ("rate", "mix") else {})


DEFAULT_RUNS = ("original", "paper", "rate", "mix")


def default_runs(policy: str = "paper", queue_depth: int = 0, deadline_ms: float | None = None) -> str:
    """The runs a sweep compares when none are named: :data:`DEFAULT_RUNS`, plus the run that ``--policy``,
    ``--queue-depth`` and ``--deadline-ms`` describe when it is not one of them (so those options count)."""
    label = policy + (f"+q{queue_depth}" if queue_depth else "") + (f"+d{deadline_ms:g}" if deadline_ms else "")
    return ",".join(DEFAULT_RUNS if label in DEFAULT_RUNS else (*DEFAULT_RUNS, label))


def parse_runs(labels: str | Sequence[str], params: dict[str, float] | None = None) -> list[RunSpec]:
    """Comma-separated run labels; ``original`` is added first if missing (every ratio is against it)."""
    items = [x for x in (labels.split(",") if isinstance(labels, str) else labels) if x.strip()]
    specs = [parse_run(x, params) for x in items]
    if not any(s.label == "original" for s in specs):
        specs.insert(0, parse_run("original"))
    if len({s.label for s in specs}) != len(specs):
        raise EdgeskipError(f"runs named twice in {','.join(items)}")
    return specs
