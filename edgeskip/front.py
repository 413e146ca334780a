"""The non-dominated (Pareto) filter and a back end's stepping order: pure logic shared by design time
(``pareto``, ``compile``) and the board (``edgeskip profile``), so it sits beside the manifest, below both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """A candidate: accuracy (higher is better) and cost (lower is better), with its skip count."""

    accuracy: float
    cost: float
    n_skipped: int


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` in both objectives and strictly better in one."""
    return a.accuracy >= b.accuracy and a.cost <= b.cost and (a.accuracy > b.accuracy or a.cost < b.cost)


def non_dominated(points: Sequence[Point]) -> list[int]:
    """Indices of the points no other point dominates, sorted by number of skipped blocks."""
    keep = [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]
    return sorted(keep, key=lambda i: (points[i].n_skipped, i))


def front_with_anchor(points: Sequence[Point], anchor_index: int | None = None) -> list[int]:
    """The non-dominated points plus the no-skip point (the original network), sorted by skips.

    Algorithm 1 starts at "no skipping", so the front always begins with the full network even
    when a skipping config scores at least as well on the (finite, noisy) validation set. The anchor is
    ``anchor_index`` where given (a design space with int8 options has many points without skips), else
    every point without skips.
    """
    anchor = [anchor_index] if anchor_index is not None else [i for i, p in enumerate(points) if p.n_skipped == 0]
    keep = set(non_dominated(points)) | set(anchor)
    return sorted(keep, key=lambda i: (points[i].n_skipped, i))


def stepping_order(points: Sequence[Point], anchor_index: int = 0) -> list[int]:
    """Positions of one back end's front among ``points`` (accuracy vs that back end's latency): the anchor (the
    full network) first, then slowest to fastest, the order its runtime steps through them."""
    keep = front_with_anchor(points, anchor_index)
    return [anchor_index] + sorted((i for i in keep if i != anchor_index), key=lambda i: (-points[i].cost, i))
