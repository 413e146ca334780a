"""Sensitivity ranking, candidate configs and the Pareto front (accuracy vs cost)."""

from edgeskip.pareto.evaluate import SharedPrefixEvaluator, evaluate_skip_arrays
from edgeskip.pareto.front import Point, candidates_from_order, front_with_anchor, non_dominated
from edgeskip.pareto.ranking import RANKINGS, rank_blocks

__all__ = [
    "SharedPrefixEvaluator",
    "evaluate_skip_arrays",
    "Point",
    "candidates_from_order",
    "non_dominated",
    "front_with_anchor",
    "RANKINGS",
    "rank_blocks",
]
