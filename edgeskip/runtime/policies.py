"""Adaptation policies: which Pareto config a request runs with as the load changes.

Pure logic, no I/O and no clock of their own: the caller (:class:`edgeskip.runtime.dispatch.Dispatcher`,
driven by the daemon, the in-process driver or the simulator) passes every time. Each policy has three hooks:

- ``on_request(now, busy, queued=0) -> Decision``: a request arrived at ``now``; ``busy``: the executor is
  running one; ``queued``: requests waiting ahead of it (0 without ``--queue-depth``).
- ``on_start(now, queued) -> int``: the config for a request that starts running now.
- ``on_finish(now, config, service_s)``: a request finished after occupying the executor ``service_s`` s.

Policies (:data:`edgeskip.runtime.choices.POLICIES`):

``paper``  Algorithm 1 of Korol, Beck, Castrillon, exactly (:class:`AdaptiveController`).
``rate``   Utilisation target (:class:`RatePolicy`): estimate the arrival rate and each config's service time
           online and run the most accurate allowed config whose utilisation stays under a target, with
           hysteresis on the way back to slower configs and a term that drains a queue.
``mix``    Time-sharing (:class:`MixPolicy`): as ``rate``, but alternates two neighbouring configs so the mean
           service time meets the budget exactly (error diffusion), instead of rounding down to one config.
``fixed``  One config always (the baselines).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgeskip.errors import EdgeskipError


@dataclass(frozen=True)
class Decision:
    """What Algorithm 1 does with one request: drop it (``busy``), or process it with Pareto config ``config``.

    Without a queue every policy drops exactly when busy; with one, the dispatcher queues instead."""

    dropped: bool
    config: int  # index into the bundle's Pareto configs (for a drop: the config after moving)


class Policy(Protocol):
    """The interface every policy implements (see the module docstring)."""

    name: str

    @property
    def allowed(self) -> list[int]: ...

    @property
    def config(self) -> int: ...

    def on_request(self, now: float, busy: bool, queued: int = 0) -> Decision: ...

    def on_start(self, now: float, queued: int = 0) -> int: ...

    def on_finish(self, now: float, config: int, service_s: float) -> None: ...

    def state(self) -> dict[str, object]: ...


def allowed_configs(accuracies: Sequence[float], min_acc: float) -> list[int]:
    """Indices of the configs that reach ``min_acc`` (removed once, as Algorithm 1 does), or a one-line error."""
    if not 0.0 <= min_acc <= 1.0:
        raise EdgeskipError(f"--min-acc must be in [0, 1], got {min_acc}")
    allowed = [i for i, a in enumerate(accuracies) if a >= min_acc]
    if not allowed:
        best = max(accuracies) if accuracies else float("nan")
        raise EdgeskipError(f"no config reaches --min-acc {min_acc:.4f} (best is {best:.4f})")
    return allowed


class _StepPolicy:
    """Hooks of the policies that decide at arrival only: a request starts with the current config, and
    service times are not used."""

    name: str

    @property
    def config(self) -> int:
        raise NotImplementedError

    def on_start(self, now: float, queued: int = 0) -> int:
        return self.config

    def on_finish(self, now: float, config: int, service_s: float) -> None:
        pass

    def state(self) -> dict[str, object]:
        return {"policy": self.name}


@dataclass
class AdaptiveController(_StepPolicy):
    """Algorithm 1 (policy ``paper``). ``accuracies[i]`` is the accuracy of Pareto config i (0 = no skipping).

    - Configs whose accuracy is below ``min_acc`` are removed once; start with no skipping.
    - A request that arrives while the executor is busy is dropped, and the controller moves one config
      toward more skipping (staying at the last).
    - Otherwise, if the time since the last *processed* request exceeds ``delta_req``, it moves one config
      toward less skipping (staying at the first); the request is processed with the current config and
      ``t_last`` becomes its arrival time.

    With a queue, "busy" still means the executor is running a request (the paper's signal of overload); a
    queued request runs with the config current when it starts.
    """

    accuracies: Sequence[float]
    min_acc: float
    delta_req: float
    name: str = field(init=False, default="paper")
    allowed: list[int] = field(init=False)
    position: int = field(init=False, default=0)
    t_last: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not self.delta_req > 0:
            raise EdgeskipError(f"delta_req must be > 0, got {self.delta_req}")
        self.allowed = allowed_configs(self.accuracies, self.min_acc)

    @property
    def config(self) -> int:
        """The Pareto config index currently selected."""
        return self.allowed[self.position]

    def on_request(self, now: float, busy: bool, queued: int = 0) -> Decision:
        """Decide for a request arriving at ``now`` (seconds, any monotonic origin)."""
        if busy:
            self.position = min(self.position + 1, len(self.allowed) - 1)
            return Decision(True, self.config)
        if self.t_last is not None and now - self.t_last > self.delta_req:
            self.position = max(self.position - 1, 0)
        self.t_last = now
        return Decision(False, self.config)

    def state(self) -> dict[str, object]:
        return {"policy": self.name, "delta_req_s": self.delta_req}


@dataclass
class FixedController(_StepPolicy):
    """Baseline: always the same config; requests arriving while busy are still dropped (or queued)."""

    fixed: int
    name: str = field(init=False, default="fixed")

    @property
    def allowed(self) -> list[int]:
        return [self.fixed]

    @property
    def config(self) -> int:
        return self.fixed

    def on_request(self, now: float, busy: bool, queued: int = 0) -> Decision:
        return Decision(busy, self.fixed)


@dataclass
class ServiceModel:
    """Online estimate of each config's service time (seconds the executor is occupied by one request).

    A config seen at least once: an exponentially weighted mean of its observed times (weight ``alpha``).
    A config not seen yet: its prior (the latency measured at start-up or in the manifest) times the
    weighted mean ratio observed ÷ prior over all configs seen (the board may be slower than the prior)."""

    prior: Sequence[float]
    alpha: float = 0.2
    mean: list[float | None] = field(init=False)
    ratio: float = field(init=False, default=1.0)
    seen: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.prior or any(not (p > 0 and math.isfinite(p)) for p in self.prior):
            raise EdgeskipError("service-time priors must be positive and finite, one per config")
        if not 0 < self.alpha <= 1:
            raise EdgeskipError(f"service-time weight must be in (0, 1], got {self.alpha}")
        self.mean = [None] * len(self.prior)

    def estimate(self, config: int) -> float:
        m = self.mean[config]
        return m if m is not None else self.prior[config] * self.ratio

    def observe(self, config: int, seconds: float) -> None:
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        m = self.mean[config]
        self.mean[config] = seconds if m is None else m + self.alpha * (seconds - m)
        r = seconds / self.prior[config]
        self.ratio = r if self.seen == 0 else self.ratio + self.alpha * (r - self.ratio)
        self.seen += 1


# parameters of the rate-based policies: name -> (default, lower bound, upper bound, open-lower, help)
RATE_PARAMS: dict[str, tuple[float, float, float, bool, str]] = {
    "target_util": (
        0.95,
        0.0,
        1.0,
        True,
        "utilisation (arrival rate x service time) the chosen config may reach (1.0 with a queue)",
    ),
    "hysteresis": (
        0.05,
        0.0,
        0.9,
        False,
        "extra margin a slower (more accurate) config needs before moving back to it",
    ),
    "attack": (8.0, 1.0, 1000.0, False, "gap estimator's window (requests) when arrivals speed up"),
    "release": (8.0, 1.0, 1000.0, False, "gap estimator's window (requests) when arrivals slow down"),
    "drain": (8.0, 1.0, 1000.0, False, "requests over which a queue backlog is to be worked off"),
}


QUEUED_TARGET_UTIL = 1.0  # rate/mix default with a queue: it absorbs the jitter a margin would otherwise cover


def check_param(name: str, value: float) -> float:
    """A rate-policy parameter in its range, or a one-line error."""
    if name not in RATE_PARAMS:
        raise EdgeskipError(f"unknown policy parameter {name!r}; choose from {', '.join(RATE_PARAMS)}")
    _, lo, hi, open_lo, _ = RATE_PARAMS[name]
    ok = (
        isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > lo if open_lo else value >= lo)
        and value <= hi
    )
    if not ok:
        raise EdgeskipError(
            f"policy parameter {name} must be in {'(' if open_lo else '['}{lo:g}, {hi:g}], got {value!r}"
        )
    return float(value)


@dataclass
class RatePolicy:
    """Policy ``rate``: keep the executor's utilisation under ``target_util``.

    - Arrival rate: a gap estimator over inter-arrival times (every arrival, dropped ones included), an
      exponential mean over ``attack`` requests when gaps shrink and ``release`` when they grow; a request
      that finds the executor busy without a queue (the service outlasts the gaps) makes it follow a
      shrinking gap within 2 requests.
    - Service times: :class:`ServiceModel`, updated with every finished request.
    - Budget per request: ``target_util × gap``; with ``q`` requests queued, ``× drain / (drain + q)`` so that
      the backlog is worked off within about ``drain`` arrivals.
    - Choice: the most accurate allowed config whose estimated service time fits the budget (the fastest
      allowed one if none does). It moves to a faster config at once, and back to a slower one only if that
      config fits the budget with ``hysteresis`` to spare.

    Guarantee (steady arrivals, accurate estimates): utilisation ≤ ``target_util`` whenever some allowed
    config can achieve it, so without a queue a request is dropped only when arrivals speed up faster than
    the estimator follows; no config below ``min_acc`` ever runs. Under light load (every config fits) it
    runs the most accurate allowed config.
    """

    accuracies: Sequence[float]
    service: ServiceModel
    min_acc: float = 0.0
    target_util: float = RATE_PARAMS["target_util"][0]
    hysteresis: float = RATE_PARAMS["hysteresis"][0]
    attack: float = RATE_PARAMS["attack"][0]
    release: float = RATE_PARAMS["release"][0]
    drain: float = RATE_PARAMS["drain"][0]
    name: str = field(init=False, default="rate")
    allowed: list[int] = field(init=False)
    position: int = field(init=False, default=0)
    gap: float | None = field(init=False, default=None)
    t_prev: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        for p in RATE_PARAMS:
            setattr(self, p, check_param(p, getattr(self, p)))
        if len(self.service.prior) != len(self.accuracies):
            raise EdgeskipError(f"{len(self.service.prior)} service-time priors for {len(self.accuracies)} configs")
        allowed = allowed_configs(self.accuracies, self.min_acc)
        self.allowed = sorted(allowed, key=lambda i: (-self.accuracies[i], i))  # most accurate first

    @property
    def config(self) -> int:
        return self.allowed[self.position]

    def budget(self, queued: int = 0) -> float:
        """Seconds of service one request may take now (infinite before two arrivals were seen)."""
        if self.gap is None:
            return math.inf
        return self.target_util * self.gap * self.drain / (self.drain + max(queued, 0))

    def _observe_arrival(self, now: float, dropped: bool) -> None:
        if self.t_prev is not None:
            g = max(now - self.t_prev, 0.0)
            if self.gap is None:
                self.gap = g
            else:
                window = self.attack if g < self.gap else self.release
                if dropped and g < self.gap:  # evidence the service outlasts the gaps: follow within 2 requests
                    window = min(window, 2.0)
                self.gap += 2.0 / (window + 1.0) * (g - self.gap)
        self.t_prev = now

    def _fits(self, budget: float, margin: float = 0.0) -> int | None:
        """Position of the most accurate allowed config whose estimate fits ``budget × (1 - margin)``."""
        for pos, c in enumerate(self.allowed):
            if self.service.estimate(c) <= budget * (1.0 - margin):
                return pos
        return None

    def _choose(self, queued: int) -> int:
        b = self.budget(queued)
        best = self._fits(b)
        if best is None:  # nothing fits: the fastest allowed config
            best = min(range(len(self.allowed)), key=lambda p: (self.service.estimate(self.allowed[p]), p))
        if best < self.position:  # slower and more accurate: only with the hysteresis margin to spare
            calm = self._fits(b, self.hysteresis)
            best = self.position if calm is None or calm > self.position else max(calm, best)
        self.position = best
        return self.config

    def on_request(self, now: float, busy: bool, queued: int = 0) -> Decision:
        self._observe_arrival(now, busy and queued == 0)
        return Decision(busy, self._choose(queued))

    def on_start(self, now: float, queued: int = 0) -> int:
        return self._choose(queued)

    def on_finish(self, now: float, config: int, service_s: float) -> None:
        self.service.observe(config, service_s)

    def state(self) -> dict[str, object]:
        b = self.budget()
        return {
            "policy": self.name,
            "gap_s": self.gap,
            "budget_s": None if math.isinf(b) else b,
            **{p: getattr(self, p) for p in RATE_PARAMS},
            "service_estimate_s": [self.service.estimate(c) for c in range(len(self.accuracies))],
        }


@dataclass
class MixPolicy(RatePolicy):
    """Policy ``mix``: time-share two neighbouring configs so the mean service time meets the budget.

    With the budget ``b`` between the estimates of a faster config ``lo`` (fits) and the next more accurate
    one ``hi`` (does not), each start runs ``hi`` when the running credit (budget minus service spent, summed
    over starts, bounded to ± one ``hi`` service) allows it, else ``lo``: the fraction of ``hi`` tends to
    ``(b - s_lo) / (s_hi - s_lo)``. Without a queue (``strict``), ``hi`` is used only where its estimate is
    below the current gap itself, so a ``hi`` request does not make the next arrival find the executor busy.
    """

    strict: bool = True
    name: str = field(init=False, default="mix")
    credit: float = field(init=False, default=0.0)

    def _choose_mixed(self, queued: int) -> int:
        b = self.budget(queued)
        lo = self._fits(b)
        if lo is None or lo == 0 or math.isinf(b):
            self.credit = 0.0
            self.position = (
                lo
                if lo is not None
                else min(range(len(self.allowed)), key=lambda p: (self.service.estimate(self.allowed[p]), p))
            )
            return self.config
        hi = lo - 1
        s_hi = self.service.estimate(self.allowed[hi])
        s_lo = self.service.estimate(self.allowed[lo])
        usable = not (self.strict and self.gap is not None and s_hi >= self.gap)
        pick = hi if usable and self.credit + (b - s_hi) >= 0 else lo
        s = s_hi if pick == hi else s_lo
        self.credit = max(-s_hi, min(s_hi, self.credit + b - s))
        self.position = pick
        return self.config

    def on_request(self, now: float, busy: bool, queued: int = 0) -> Decision:
        self._observe_arrival(now, busy and queued == 0)
        return Decision(busy, self.config)

    def on_start(self, now: float, queued: int = 0) -> int:
        return self._choose_mixed(queued)

    def state(self) -> dict[str, object]:
        return {**super().state(), "credit_s": self.credit, "strict": self.strict}


def make_policy(
    name: str,
    accuracies: Sequence[float],
    min_acc: float = 0.0,
    *,
    delta_req: float | None = None,
    service_prior: Sequence[float] | None = None,
    fixed: int | None = None,
    queue_depth: int = 0,
    **params: float,
) -> Policy:
    """The policy ``name`` over configs of ``accuracies``; one-line errors for bad names and parameters.

    ``paper`` needs ``delta_req``; ``rate``/``mix`` need ``service_prior`` (seconds per config) and take
    :data:`RATE_PARAMS` as keyword arguments; ``fixed`` needs ``fixed``."""
    from edgeskip.runtime.choices import POLICIES

    params = {k: v for k, v in params.items() if v is not None}
    if name not in POLICIES and name != "fixed":
        raise EdgeskipError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if name in ("paper", "fixed") and params:
        raise EdgeskipError(f"policy {name} takes no parameter {', '.join(sorted(params))} (only rate and mix do)")
    if name == "fixed":
        if fixed is None or not 0 <= fixed < len(accuracies):
            raise EdgeskipError(f"config {fixed} out of range 0..{len(accuracies) - 1}")
        return FixedController(fixed)
    if name == "paper":
        if delta_req is None:
            raise EdgeskipError("policy paper needs delta_req")
        return AdaptiveController(accuracies, min_acc, delta_req)
    for k, v in params.items():
        check_param(k, v)
    if queue_depth and "target_util" not in params:
        params["target_util"] = QUEUED_TARGET_UTIL
    if service_prior is None:
        raise EdgeskipError(f"policy {name} needs a service-time prior per config")
    model = ServiceModel(list(service_prior))
    if name == "rate":
        return RatePolicy(accuracies, model, min_acc, **params)
    return MixPolicy(accuracies, model, min_acc, strict=queue_depth == 0, **params)
