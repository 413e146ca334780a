"""Pure logic: searches over skip arrays beyond one-block sensitivity (issue #34).

The sensitivity ranking skips the N blocks that cost least *alone*; in a deep stochastic-depth network the blocks
interact, and the best array with N blocks skipped is often not the N least important ones (bench/README §1.1).
A search asks an ``evaluate`` callback for the validation accuracy of a batch of skip arrays (one call per step,
so the shared-prefix evaluator serves a whole step in one pass) and keeps every array it evaluated. The
candidates it hands on are the front of what it evaluated on validation accuracy against a cost known before
anything is measured (MACs); latency is then measured on those only. No I/O here.

- ``beam``: level N holds the ``width`` most accurate arrays with N blocks skipped; level N + 1 evaluates every
  array one more skip away from them. Width 1 re-ranks the blocks after each skip (backward elimination).
  With a ``screen`` (the same accuracy on a subset of the validation images), a level's children are first
  screened and only the ``3 x width`` best of them evaluated on the whole split (racing: a deep network's
  levels hold hundreds of children, most of them far from the best).
- ``exhaustive``: all 2^B_s arrays (the check: ResNet-20 has 64), refused above the budget.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgeskip.errors import EdgeskipError
from edgeskip.front import Point, non_dominated
from edgeskip.recipes import EXHAUSTIVE_LIMIT, SEARCHES

SkipArray = tuple[bool, ...]
Evaluate = Callable[[list[SkipArray]], list[float]]


@dataclass(frozen=True)
class SearchResult:
    """Every array a search evaluated (in evaluation order) with its validation accuracy."""

    method: str
    accuracy: dict[SkipArray, float]
    evaluate_calls: int
    evaluated: int  # arrays evaluated by the search itself (not those known before it started)
    truncated_levels: int = 0  # levels where the budget cut the beam's expansion short
    screened: int = 0  # arrays evaluated on the screening subset only
    seconds: float | None = None  # wall time, where the caller timed it

    def timed(self, seconds: float) -> SearchResult:
        return dataclasses.replace(self, seconds=seconds)

    def best_per_n(self, cost: Callable[[SkipArray], float]) -> list[SkipArray]:
        """For N = 0..B_s, the most accurate evaluated array with N blocks skipped (ties: lower cost, then the
        first evaluated)."""
        order = {s: i for i, s in enumerate(self.accuracy)}
        best: dict[int, SkipArray] = {}
        for s, acc in self.accuracy.items():
            n = s.count(False)
            b = best.get(n)
            if b is None or (-acc, cost(s), order[s]) < (-self.accuracy[b], cost(b), order[b]):
                best[n] = s
        return [best[n] for n in sorted(best)]

    def candidates(self, cost: Callable[[SkipArray], float]) -> list[SkipArray]:
        """The arrays on the front of validation accuracy vs ``cost`` among those evaluated, plus the full network
        (the anchor), sorted by skipped blocks then cost: the configs worth measuring."""
        arrays = list(self.accuracy)
        pts = [Point(self.accuracy[s], cost(s), s.count(False)) for s in arrays]
        keep = {arrays[i] for i in non_dominated(pts)}
        keep.add(next(s for s in arrays if all(s)))
        return sorted(keep, key=lambda s: (s.count(False), cost(s), arrays.index(s)))


def check_search(method: str, width: int | None, budget: int | None, num_gates: int) -> None:
    """One-line errors for a search that cannot run (unknown name, width or budget <= 0, too small a budget)."""
    if method not in SEARCHES:
        raise EdgeskipError(f"unknown search {method!r}; choose from {', '.join(SEARCHES)}")
    if width is not None and width <= 0:
        raise EdgeskipError(f"beam width must be >= 1, got {width}")
    if budget is not None and budget <= 0:
        raise EdgeskipError(f"search budget must be >= 1 evaluation, got {budget}")
    g = num_gates
    if method == "beam" and budget is not None and budget < g + 1:
        raise EdgeskipError(f"a budget of {budget} evaluations is below the {g + 1} a search needs for B_s = {g}")
    if method == "exhaustive" and 2**g > (budget or EXHAUSTIVE_LIMIT):
        raise EdgeskipError(
            f"exhaustive search over 2^{g} = {2**g:,} skip arrays exceeds the budget of "
            f"{budget or EXHAUSTIVE_LIMIT:,} evaluations; use --search beam"
        )


@dataclass(frozen=True)
class SearchSpec:
    """Where a design space's candidates come from: ``greedy`` (a ranking's first N blocks), ``beam`` (of
    ``beam_width``) or ``exhaustive``, with at most ``budget`` arrays evaluated (None: no cap).

    ``screen_images`` (beam): screen each level's children on this many validation images first; 0: never;
    None: :data:`SCREEN_IMAGES` where the validation split holds more than :data:`SCREEN_ABOVE` images.
    The default (beam, width 1, screening by size) is what bench/README §1.3 measured best for its cost."""

    method: str = "beam"
    beam_width: int = 1
    budget: int | None = None
    screen_images: int | None = None

    def check(self, num_gates: int) -> None:
        check_search(self.method, self.beam_width, self.budget, num_gates)
        if self.screen_images is not None and self.screen_images < 0:
            raise EdgeskipError(f"screening images must be >= 0 (0: no screening), got {self.screen_images}")
        if self.screen_images and self.method != "beam":
            raise EdgeskipError(f"screening applies to --search beam, not {self.method}")

    def screen_for(self, num_val: int) -> int:
        """Validation images the children are screened on (0: none) for a split of ``num_val`` images."""
        if self.method != "beam":
            return 0
        n = (SCREEN_IMAGES if num_val > SCREEN_ABOVE else 0) if self.screen_images is None else self.screen_images
        return n if n < num_val else 0

    def to_dict(self) -> dict[str, object]:
        beam = self.method == "beam"
        return {
            "method": self.method,
            "beam_width": self.beam_width if beam else None,
            "budget": self.budget,
            "screen_images": self.screen_images if beam else None,
        }


SCREEN_IMAGES, SCREEN_ABOVE = 1000, 2000
GREEDY = SearchSpec("greedy")  # the sensitivity ranking's first N blocks (the paper's method)
DEFAULT = SearchSpec()


class _Memo:
    """``evaluate`` that asks only for arrays not yet known, counting calls; ``known`` seeds it."""

    def __init__(self, evaluate: Evaluate, known: dict[SkipArray, float] | None) -> None:
        self.evaluate = evaluate
        self.acc: dict[SkipArray, float] = dict(known or {})
        self.calls = 0
        self.evaluated = 0  # arrays passed to ``evaluate``

    def __call__(self, arrays: Sequence[SkipArray]) -> list[float]:
        new = [s for s in dict.fromkeys(arrays) if s not in self.acc]
        if new:
            self.calls += 1
            self.evaluated += len(new)
            self.acc.update(zip(new, self.evaluate(new)))
        return [self.acc[s] for s in arrays]


def beam_search(
    num_gates: int,
    evaluate: Evaluate,
    width: int = 1,
    budget: int | None = None,
    cost: Callable[[SkipArray], float] | None = None,
    known: dict[SkipArray, float] | None = None,
    screen: Evaluate | None = None,
) -> SearchResult:
    """Beam search from the full network to all blocks skipped, one more skip per level.

    ``budget``: at most this many arrays evaluated (``known`` ones are free); each level keeps one evaluation
    for every level after it, so the walk always reaches N = B_s. Where the budget cuts a level short, the
    children of better parents come first, and among one parent's children those that skip a block that costs
    least alone (level 1's accuracies). ``cost`` breaks accuracy ties (the cheaper array ranks first). ``screen``:
    a cheaper estimate of ``evaluate`` (a subset of the images); a level whose new children outnumber
    ``3 x width`` evaluates only the best ``3 x width`` of them by the screen (ties: their order)."""
    check_search("beam", width, budget, num_gates)
    g = num_gates
    cost = cost or (lambda s: 0.0)
    memo = _Memo(evaluate, known)
    full: SkipArray = (True,) * g
    memo([full])
    singles = [full[:k] + (False,) + full[k + 1 :] for k in range(g)]
    beam, truncated, screened = [full], 0, 0
    for n in range(1, g + 1):
        alone = [memo.acc.get(s, float("-inf")) for s in singles]  # known from level 1 on
        children = list(
            dict.fromkeys(
                p[:k] + (False,) + p[k + 1 :]
                for p in beam
                for k in sorted((k for k in range(g) if p[k]), key=lambda k: (-alone[k], k))
            )
        )
        new = [c for c in children if c not in memo.acc]
        keep = 3 * width
        if screen is not None and len(new) > keep:
            rough = screen(new)
            screened += len(new)
            new = [new[i] for i in sorted(range(len(new)), key=lambda i: (-rough[i], i))[:keep]]  # best first
            kept = set(new)
            children = [c for c in children if c in memo.acc or c in kept]
        if budget is not None:
            allowed = max(1, budget - memo.evaluated - (g - n))
            if len(new) > allowed:
                truncated += 1
                dropped = set(new[allowed:])
                children = [c for c in children if c not in dropped]
        accs = memo(children)
        ranked = sorted(range(len(children)), key=lambda i: (-accs[i], cost(children[i]), i))
        beam = [children[i] for i in ranked[:width]]
    return SearchResult("beam", memo.acc, memo.calls, memo.evaluated, truncated, screened)


def exhaustive_search(
    num_gates: int, evaluate: Evaluate, budget: int | None = None, known: dict[SkipArray, float] | None = None
) -> SearchResult:
    """Every skip array, in one call of ``evaluate`` (refused above ``budget`` or :data:`EXHAUSTIVE_LIMIT`)."""
    check_search("exhaustive", None, budget, num_gates)
    memo = _Memo(evaluate, known)
    memo([tuple(not b for b in bits) for bits in itertools.product((False, True), repeat=num_gates)])
    return SearchResult("exhaustive", memo.acc, memo.calls, memo.evaluated)
