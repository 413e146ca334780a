"""Pure logic: candidate skip arrays from a ranking (the Pareto filter itself is :mod:`edgeskip.front`)."""

from __future__ import annotations

from collections.abc import Sequence

from edgeskip.front import Point, dominates, front_with_anchor, non_dominated, stepping_order
from edgeskip.skip import skip_from_indices

__all__ = [
    "Point",
    "candidates_from_order",
    "dominates",
    "front_with_anchor",
    "non_dominated",
    "stepping_order",
]


def candidates_from_order(order: Sequence[int], num_gates: int) -> list[tuple[bool, ...]]:
    """Config N (N = 0..B_s) skips the first N gates of ``order`` (least important first)."""
    if sorted(order) != list(range(num_gates)):
        raise ValueError(f"order must be a permutation of 0..{num_gates - 1}, got {list(order)}")
    return [skip_from_indices(order[:n], num_gates) for n in range(num_gates + 1)]
