"""Pure logic of the fractional design space (#15): latency model, greedy walk, front comparison."""

import itertools

import numpy as np
import pytest

from edgeskip.pareto.fractional import (
    compare_fronts,
    features,
    fit_latency_model,
    greedy_walk,
    int8_runs,
    int8_twins,
    next_states,
    probe_configs,
)
from edgeskip.skip import REST8


def test_int8_runs():
    assert int8_runs((1, 8, 8, 1, 8)) == 2
    assert int8_runs((8, 0, 8)) == 1  # a skipped block does not break a run
    assert int8_runs((8, 8), gated_pos=(1, 3)) == 2  # block 2 (ungated) ran in float between them
    assert int8_runs((1, 1, 0)) == 0


def test_latency_model_recovers_an_exact_linear_cost():
    g, pos = 4, (1, 2, 4, 5)
    rng = np.random.default_rng(0)
    true = rng.uniform(0.1, 1.0, 2 * g + 3)
    probes = probe_configs(g, seed=1, rest=True)
    assert len(probes) == len(set(probes)) and (1,) * g in probes and (8,) * g in probes
    assert (1,) * g + (REST8,) in probes and (8,) * g + (REST8,) in probes
    fit = fit_latency_model([(o, float(features(o, pos) @ true)) for o in probes], pos)
    assert fit.r2 == pytest.approx(1.0)
    for o in itertools.product((0, 1, 8), repeat=g):
        for a in (o, o + (REST8,)):
            assert fit.predict(a) == pytest.approx(float(features(a, pos) @ true))
    noisy = fit_latency_model([(o, float(features(o, pos) @ true) + rng.normal(0, 0.3)) for o in probes], pos)
    assert noisy.r2 < 0.999  # the fit reports when the model does not explain the measurements


def test_next_states():
    assert sorted(next_states((1, 8, 0))) == sorted([(8, 8, 0), (0, 8, 0), (1, 0, 0)])
    assert next_states((0, 0)) == []
    # the rest of the network is one more move, float -> int8 only, kept by the gates' moves
    assert sorted(next_states((1, 0), rest=True)) == sorted([(8, 0), (0, 0), (1, 0, REST8)])
    assert sorted(next_states((8, 0, REST8), rest=True)) == [(0, 0, REST8)]


def test_int8_runs_count_the_rest_of_the_network():
    pos = (1, 2, 4, 5)  # blocks 0 and 3 are ungated (a stage's entry)
    assert int8_runs((8, 8, 8, 8), pos) == 2  # block 3 runs in float between the gates
    assert int8_runs((8, 8, 8, 8, REST8), pos) == 1  # stem to head in int8
    assert int8_runs((1, 1, 1, 1, REST8), pos) == 3  # the stem with block 0, block 3, the head
    assert int8_runs((8, 0, 0, 8, REST8), pos) == 1  # skipped blocks do not break a run


def test_int8_twins_with_the_rest():
    assert int8_twins([(1, 1), (1, 0), (0, 0)]) == [(8, 8), (8, 0)]
    assert set(int8_twins([(1, 1), (1, 0), (0, 0)], rest=True)) == {
        (8, 8),
        (8, 8, REST8),
        (8, 0),
        (8, 0, REST8),
        (1, 1, REST8),
        (1, 0, REST8),
        (0, 0, REST8),
    }


def test_greedy_takes_the_cheapest_accuracy_per_second_and_ends_all_skipped():
    # accuracy drop per block/option, latency per option: int8 of gate 0 is free, gate 1 hurts when skipped
    drop = {(0, 8): 0.0, (0, 0): 0.05, (1, 8): 0.01, (1, 0): 0.3, (2, 8): 0.02, (2, 0): 0.02}
    cost = {1: 1.0, 8: 0.6, 0: 0.0}
    calls = []

    def evaluate(opts):
        calls.append(len(opts))
        return [0.9 - sum(drop[(k, o)] for k, o in enumerate(s) if o != 1) for s in opts]

    path = greedy_walk(3, evaluate, lambda s: sum(cost[o] for o in s))
    assert path[0].options == (1, 1, 1) and path[1].options == (8, 1, 1)  # free saving first
    assert path[-1].options == (0, 0, 0)
    lat = [sum(cost[o] for o in s.options) for s in path]
    assert all(a > b for a, b in zip(lat, lat[1:]))
    assert path.index(next(s for s in path if s.options[1] == 0)) == len(path) - 1  # the costly skip comes last
    assert calls[0] == 1 and all(c >= 1 for c in calls)


def test_a_screened_walk_evaluates_a_few_moves_per_step_and_keeps_the_path():
    """Screening on a noisy estimate (fewer images) that keeps the ranking's top moves: the walk takes the same
    path as unscreened, evaluating at most ``keep`` moves per step on the whole split."""
    g = 5
    rng = np.random.default_rng(3)
    drop = {(k, o): float(rng.uniform(0.0, 0.04 if o == 8 else 0.2)) for k in range(g) for o in (8, 0)}
    cost = {1: 1.0, 8: 0.6, 0: 0.0}
    predict = lambda s: sum(cost[o] for o in s)  # noqa: E731

    def accuracy(s, noise=0.0):
        return 0.9 - sum(drop[(k, o)] for k, o in enumerate(s) if o != 1) + noise

    full, screened = [], []

    def evaluate(opts):
        full.append(len(opts))
        return [accuracy(s) for s in opts]

    def screen(opts):
        screened.append(len(opts))
        return [accuracy(s, float(rng.normal(0, 1e-4))) for s in opts]

    plain = greedy_walk(g, evaluate, predict)
    full.clear()
    fast = greedy_walk(g, evaluate, predict, screen=screen, keep=3)
    assert [s.options for s in fast] == [s.options for s in plain]
    assert [s.val_accuracy for s in fast] == [s.val_accuracy for s in plain]  # recorded on the whole split
    assert max(full[1:]) <= 3 and len(screened) >= 1 and max(screened) > 4  # screened all, evaluated the best
    # a screen that ranks badly still yields a valid walk: every step a legal move, ending all skipped
    worst = greedy_walk(g, evaluate, predict, screen=lambda opts: [-accuracy(s) for s in opts], keep=1)
    assert worst[-1].options == (0,) * g
    assert all(b.options in next_states(a.options) for a, b in zip(worst, worst[1:]))


def test_int8_twins_keep_each_skip_arrays_blocks_in_int8():
    arrays = [(1, 1, 1), (1, 0, 1), (0, 0, 0), (1, 0, 1)]
    assert int8_twins(arrays) == [(8, 8, 8), (8, 0, 8)]  # once each; the all-skipped array has no twin


def test_compare_fronts():
    base = [(0.90, 10.0), (0.85, 7.0)]
    other = [(0.90, 10.0), (0.89, 7.0), (0.86, 6.0)]
    out = compare_fronts(base, other)
    assert out["points"][1]["accuracy_gain_at_latency"] == pytest.approx(0.04)
    assert out["points"][1]["latency_ratio_at_accuracy"] == pytest.approx(6 / 7)
    assert out["max_accuracy_gain"] == pytest.approx(0.04) and out["min_latency_ratio"] == pytest.approx(6 / 7)
    assert compare_fronts([(0.9, 1.0)], [(0.5, 2.0)])["max_accuracy_gain"] is None
