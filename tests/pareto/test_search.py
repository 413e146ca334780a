"""Searches over skip arrays (issue #34): pure logic on synthetic accuracies, then on the tiny model."""

import itertools
import random

import pytest

from edgeskip.errors import EdgeskipError
from edgeskip.front import Point, non_dominated
from edgeskip.pareto.design import design_space
from edgeskip.pareto.search import GREEDY, SearchSpec, beam_search, check_search, exhaustive_search


def interacting(g: int, seed: int = 0):
    """An accuracy function where blocks interact: pairs of blocks that hurt together far more than alone,
    so the one-block sensitivity order is misled (as in deep SD networks, bench/README §1.1)."""
    rng = random.Random(seed)
    alone = [rng.uniform(0.0, 0.05) for _ in range(g)]
    pair = {(i, j): rng.uniform(0.0, 0.2) for i in range(g) for j in range(i + 1, g)}
    calls: list[int] = []

    def acc(s):
        off = [k for k in range(g) if not s[k]]
        return 0.9 - sum(alone[k] for k in off) - sum(pair[p] for p in itertools.combinations(off, 2))

    def evaluate(arrays):
        calls.append(len(arrays))
        return [acc(s) for s in arrays]

    return acc, evaluate, calls


def all_arrays(g):
    return [tuple(not b for b in bits) for bits in itertools.product((False, True), repeat=g)]


def test_exhaustive_finds_the_true_front_and_beam_matches_it_with_fewer_evaluations():
    g = 6
    acc, evaluate, calls = interacting(g)
    ex = exhaustive_search(g, evaluate)
    assert len(ex.accuracy) == 64 and ex.evaluated == 64 and calls == [64]
    truth = {s: acc(s) for s in all_arrays(g)}
    assert ex.accuracy == truth

    def n(s):
        return float(s.count(False))  # one block = one unit of cost

    best = {k: max(v for s, v in truth.items() if s.count(False) == k) for k in range(g + 1)}
    assert [truth[s] for s in ex.best_per_n(n)] == [best[k] for k in range(g + 1)]
    true_front = {s for s in truth if s in ex.candidates(n)}
    pts = [Point(v, n(s), 0) for s, v in truth.items()]
    assert true_front >= {list(truth)[i] for i in non_dominated(pts)}

    calls.clear()
    beam = beam_search(g, evaluate, width=4, cost=n)
    assert [beam.accuracy[s] for s in beam.best_per_n(n)] == [best[k] for k in range(g + 1)]
    assert set(beam.candidates(n)) >= {list(truth)[i] for i in non_dominated(pts)}
    assert beam.evaluated < 64 and beam.evaluate_calls == len(calls) == g + 1


def test_beam_beats_the_sensitivity_order_where_blocks_interact():
    g = 12
    acc, evaluate, _ = interacting(g, seed=3)
    single = [acc(tuple(k != j for k in range(g))) for j in range(g)]
    order = sorted(range(g), key=lambda k: -single[k])
    greedy = [acc(tuple(k not in order[:n] for k in range(g))) for n in range(g + 1)]

    def n(s):
        return float(s.count(False))

    beam = beam_search(g, evaluate, width=4, cost=n)
    found = [beam.accuracy[s] for s in beam.best_per_n(n)]
    assert all(b >= a - 1e-12 for a, b in zip(greedy, found))
    assert sum(b - a for a, b in zip(greedy, found)) > 0.05  # strictly better somewhere, by a margin


def test_budget_caps_evaluations_and_still_reaches_every_n():
    g = 10
    _, evaluate, calls = interacting(g)
    full = beam_search(g, evaluate, width=3)
    for budget in (g + 1, 20, 40, full.evaluated - 1):
        calls.clear()
        r = beam_search(g, evaluate, width=3, budget=budget)
        assert r.evaluated <= budget and sum(calls) == r.evaluated
        assert sorted(s.count(False) for s in r.best_per_n(lambda s: 0.0)) == list(range(g + 1))
        assert r.truncated_levels > 0
    assert beam_search(g, evaluate, width=3, budget=full.evaluated).truncated_levels == 0


def test_screening_evaluates_only_the_best_children_on_the_whole_split():
    g = 12
    acc, evaluate, calls = interacting(g, seed=3)
    rng = random.Random(1)
    noisy = []

    def screen(arrays):  # the same accuracy, measured on fewer images: noisier
        noisy.append(len(arrays))
        return [acc(s) + rng.gauss(0, 0.002) for s in arrays]

    plain = beam_search(g, evaluate, width=2)
    calls.clear()
    fast = beam_search(g, evaluate, width=2, screen=screen)
    assert fast.screened == sum(noisy) > 0 and fast.evaluated == sum(calls) < plain.evaluated / 2
    assert max(calls) <= 3 * 2  # a screened level evaluates 3 x width children on the whole split

    def n(s):
        return float(s.count(False))

    a, b = ([r.accuracy[s] for s in r.best_per_n(n)] for r in (plain, fast))
    assert max(x - y for x, y in zip(a, b)) < 0.01  # small noise: screening keeps the beam's picks


def test_the_default_is_a_beam_of_one_screened_by_split_size():
    d = SearchSpec()
    assert (d.method, d.beam_width, d.budget) == ("beam", 1, None)
    assert d.screen_for(5000) == 1000 and d.screen_for(2000) == 0 and d.screen_for(160) == 0
    assert SearchSpec(screen_images=0).screen_for(5000) == 0
    assert SearchSpec(screen_images=300).screen_for(5000) == 300 and SearchSpec(screen_images=300).screen_for(200) == 0
    assert GREEDY.screen_for(5000) == 0 and GREEDY.to_dict()["screen_images"] is None


def test_known_accuracies_are_not_evaluated_again():
    g = 5
    acc, evaluate, calls = interacting(g)
    full = (True,) * g
    singles = [tuple(k != j for k in range(g)) for j in range(g)]
    known = {s: acc(s) for s in [full, *singles]}
    r = beam_search(g, evaluate, width=1, known=known)
    assert sum(calls) == r.evaluated == g * (g - 1) // 2  # level 1 is known; levels 2..g: g-1, ..., 1 children
    assert all(r.accuracy[s] == v for s, v in known.items())


@pytest.mark.parametrize(
    "method, width, budget, g, message",
    [
        ("annealing", 4, None, 6, "unknown search 'annealing'; choose from greedy, beam, exhaustive"),
        ("beam", 0, None, 6, "beam width must be >= 1, got 0"),
        ("beam", 4, 0, 6, "search budget must be >= 1 evaluation, got 0"),
        ("beam", 4, 5, 6, "a budget of 5 evaluations is below the 7 a search needs for B_s = 6"),
        ("exhaustive", None, None, 24, "exhaustive search over 2^24 = 16,777,216 skip arrays exceeds the budget"),
        ("exhaustive", None, 32, 6, "exhaustive search over 2^6 = 64 skip arrays exceeds the budget of 32"),
    ],
)
def test_bad_searches_are_one_line_errors(method, width, budget, g, message):
    with pytest.raises(EdgeskipError) as e:
        check_search(method, width, budget, g)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_design_space_with_a_search(tiny_model, digits_splits):
    g = tiny_model.cfg.num_gates
    _, greedy = design_space(tiny_model, digits_splits, "digits", latency=None, search=GREEDY)
    sens, ex = design_space(tiny_model, digits_splits, "digits", latency=None, search=SearchSpec("exhaustive"))
    _, beam = design_space(tiny_model, digits_splits, "digits", latency=None, search=SearchSpec("beam", 2))
    assert ex["search"]["method"] == "exhaustive" and ex["search"]["evaluated"] == 2**g - g - 1
    assert greedy["search"] == {"method": "greedy", "beam_width": None, "budget": None, "screen_images": None}
    # exhaustive's candidates are the front (val accuracy vs MACs) of all 2^g arrays: every candidate of another
    # search is matched or beaten by one of them
    front = [Point(c["val_accuracy"], c["macs"], c["n_skipped"]) for c in ex["candidates"]]
    for doc in (greedy, beam):
        for c in doc["candidates"]:
            assert any(p.accuracy >= c["val_accuracy"] and p.cost <= c["macs"] for p in front), c["skip"]
    for doc in (ex, beam):
        rows = doc["candidates"]
        assert rows[0]["skip"] == [1] * g and [r["n_skipped"] for r in rows] == sorted(r["n_skipped"] for r in rows)
        assert all(r["skipped_gates"] == [k for k, v in enumerate(r["skip"]) if not v] for r in rows)
    curve = sens["curves"]["exhaustive"]
    assert [r["n_skipped"] for r in curve] == list(range(g + 1))
    best = {}
    for c in ex["candidates"]:
        best[c["n_skipped"]] = max(best.get(c["n_skipped"], 0), c["val_accuracy"])
    assert all(r["val_accuracy"] >= best.get(r["n_skipped"], 0) for r in curve)
