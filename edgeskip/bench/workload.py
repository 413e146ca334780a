"""Arrival patterns (pure functions of their seed): the paper's, Poisson, on/off bursts, a slow ramp, or a
replayed trace. paper, poisson and onoff have a mean rate of one request per ``base_period``.

- paper: requests arrive with a base period; every 10th request the period changes to the base period
  times a random factor in [1 - 0.25, 1 + 0.25].
- poisson: exponential gaps of mean ``base_period``.
- onoff: alternating phases of ``phase`` requests, "on" at twice the mean rate (period / 2) and "off" at
  period x 1.5, so the time-average rate is the mean rate; each phase's length varies by up to +-50%.
- ramp: the rate rises linearly per request from 0.5x to 1.5x the nominal rate (Poisson gaps around it;
  the time-average rate is 1 / ln 3 = 0.91x nominal).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.choices import PATTERNS  # noqa: F401 - declared once, re-exported


def paper_arrivals(
    count: int, base_period: float, seed: int = 0, deviation: float = 0.25, every: int = 10
) -> list[float]:
    """Arrival times (s, first at 0) of the paper's workload."""
    _check(count, base_period)
    rng = np.random.default_rng(seed)
    t, period, out = 0.0, base_period, []
    for i in range(count):
        if i > 0 and i % every == 0:
            period = base_period * (1.0 + rng.uniform(-deviation, deviation))
        out.append(t)
        t += period
    return out


def poisson_arrivals(count: int, rate: float, seed: int = 0) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` requests per second."""
    _check(count, 1.0 / rate if rate > 0 else 0.0)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


def onoff_arrivals(count: int, base_period: float, seed: int = 0, phase: int = 50, high: float = 2.0) -> list[float]:
    """On/off bursts: phases of about ``phase`` requests at period ``base / high`` and ``base * (2 - 1/high)``."""
    _check(count, base_period)
    if not 1.0 < high <= 2.0:
        raise EdgeskipError(f"burst factor must be in (1, 2], got {high}")
    rng = np.random.default_rng(seed)
    t, on = 0.0, True
    out: list[float] = []
    while len(out) < count:
        n = max(1, int(round(phase * rng.uniform(0.5, 1.5))))
        period = base_period / high if on else base_period * (2.0 - 1.0 / high)
        for _ in range(min(n, count - len(out))):
            out.append(t)
            t += period
        on = not on
    return out


def ramp_arrivals(count: int, base_period: float, seed: int = 0, start: float = 0.5, end: float = 1.5) -> list[float]:
    """A slow ramp: Poisson gaps whose rate rises linearly (per request) from ``start`` to ``end`` x the mean."""
    _check(count, base_period)
    rng = np.random.default_rng(seed)
    factors = np.linspace(start, end, count)
    gaps = rng.exponential(1.0, count) * base_period / factors
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


def arrivals(pattern: str, count: int, base_period: float, seed: int = 0) -> list[float]:
    """Arrival times of a named synthetic pattern (see the module docstring) at mean period ``base_period``."""
    makers = {
        "paper": paper_arrivals,
        "poisson": lambda n, p, s: poisson_arrivals(n, 1.0 / p, s),
        "onoff": onoff_arrivals,
        "ramp": ramp_arrivals,
    }
    if pattern not in makers:
        raise EdgeskipError(f"unknown pattern {pattern!r}; choose from {', '.join(makers)} (or a trace file)")
    return makers[pattern](count, base_period, seed)


def load_trace(path: str | os.PathLike) -> list[float]:
    """A replayable trace: a JSON list of arrival times or one time per line (seconds, non-decreasing)."""
    p = Path(path)
    if not p.is_file():
        raise EdgeskipError(f"trace {p} does not exist")
    text = p.read_text()
    try:
        times = json.loads(text) if text.lstrip().startswith("[") else [float(l) for l in text.split() if l]
        times = [float(t) for t in times]
    except (ValueError, TypeError) as e:
        raise EdgeskipError(f"trace {p} is not a list of arrival times: {e}") from None
    if not times or any(b < a for a, b in zip(times, times[1:])) or times[0] < 0:
        raise EdgeskipError(f"trace {p} must hold non-negative, non-decreasing arrival times")
    return [t - times[0] for t in times]


def _check(count: int, period: float) -> None:
    if count < 1:
        raise EdgeskipError(f"request count must be >= 1, got {count}")
    if period <= 0:
        raise EdgeskipError(f"period/rate must be positive, got period {period}")
