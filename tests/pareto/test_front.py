import pytest

from edgeskip.pareto.front import Point, candidates_from_order, dominates, front_with_anchor, non_dominated


def test_candidates_skip_least_important_first():
    c = candidates_from_order([2, 0, 1], 3)
    assert c == [(True, True, True), (True, True, False), (False, True, False), (False, False, False)]
    with pytest.raises(ValueError):
        candidates_from_order([0, 0, 1], 3)


def test_dominates():
    assert dominates(Point(0.9, 1.0, 0), Point(0.8, 2.0, 1))
    assert dominates(Point(0.9, 1.0, 0), Point(0.9, 2.0, 1))
    assert not dominates(Point(0.9, 1.0, 0), Point(0.9, 1.0, 1))  # equal: neither dominates
    assert not dominates(Point(0.9, 2.0, 0), Point(0.8, 1.0, 1))


def test_non_dominated_filter_and_order():
    pts = [Point(0.90, 10, 0), Point(0.91, 9, 1), Point(0.85, 8, 2), Point(0.80, 8.5, 3), Point(0.70, 5, 4)]
    # 0 is dominated by 1 (more accurate and cheaper); 3 by 2 (more accurate and cheaper)
    assert non_dominated(pts) == [1, 2, 4]
    assert front_with_anchor(pts) == [0, 1, 2, 4]
    shuffled = [pts[4], pts[2], pts[0], pts[1]]
    assert [shuffled[i].n_skipped for i in non_dominated(shuffled)] == [1, 2, 4]


def test_front_of_monotone_points_keeps_everything():
    pts = [Point(1 - 0.1 * n, 10 - n, n) for n in range(5)]
    assert non_dominated(pts) == list(range(5))
