"""Arrival patterns (pure functions of their seed): the paper's, Poisson, or a replayed trace.

The paper's pattern: requests arrive with a base period; every 10th request the period changes to
the base period times a random factor in [1 - 0.25, 1 + 0.25].
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgeskip.errors import EdgeskipError

PATTERNS = ("paper", "poisson", "trace")


def paper_arrivals(count: int, base_period: float, seed: int = 0, deviation: float = 0.25, every: int = 10) -> list[float]:
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
