"""Algorithm 1 on scripted traces (arrival times + service times -> drops and configs)."""

import pytest

from edgeskip.bench.simulate import simulate
from edgeskip.errors import EdgeskipError
from edgeskip.runtime.policies import AdaptiveController, FixedController

ACC = [0.92, 0.91, 0.89, 0.85, 0.70]  # Pareto configs 0..4, 0 = no skipping
SERVICE = [1.0, 0.8, 0.6, 0.4, 0.2]  # seconds per config


def trace(ctrl, arrivals):
    return [("drop" if o.dropped else "ok", o.config) for o in simulate(arrivals, lambda c: SERVICE[c], ctrl)]


def test_starts_without_skipping_and_stays_under_light_load():
    ctrl = AdaptiveController(ACC, min_acc=0.0, delta_req=1.0)
    assert ctrl.config == 0
    # arrivals every 1.0 s: each finds the executor idle, and the gap never exceeds delta_req
    assert trace(ctrl, [0.0, 1.0, 2.0, 3.0]) == [("ok", 0)] * 4


def test_burst_climbs_toward_more_skipping_and_stops_at_the_last():
    ctrl = AdaptiveController(ACC, min_acc=0.0, delta_req=1.0)
    # t=0 ok (busy until 1.0); 0.1, 0.2, 0.3 dropped -> configs 1, 2, 3; at 1.05 processed with 3
    # (gap 1.05 > 1.0 moves one back: 2) -> busy until 1.65; 1.1..1.5 dropped -> 3, 4, 4 (stays at last)
    got = trace(ctrl, [0.0, 0.1, 0.2, 0.3, 1.05, 1.1, 1.2, 1.3])
    assert got == [("ok", 0), ("drop", 1), ("drop", 2), ("drop", 3), ("ok", 2), ("drop", 3), ("drop", 4), ("drop", 4)]


def test_idle_gaps_fall_back_one_config_each_and_stop_at_the_first():
    ctrl = AdaptiveController(ACC, min_acc=0.0, delta_req=1.0)
    ctrl.on_request(0.0, busy=False)
    for _ in range(10):
        ctrl.on_request(0.01, busy=True)
    assert ctrl.config == 4
    seen = [ctrl.on_request(t, busy=False).config for t in (2.0, 4.0, 6.0, 8.0, 10.0, 12.0)]
    assert seen == [3, 2, 1, 0, 0, 0]


def test_gap_must_exceed_delta_req_strictly():
    ctrl = AdaptiveController(ACC, min_acc=0.0, delta_req=1.0)
    assert ctrl.on_request(0.0, busy=False).config == 0
    assert ctrl.on_request(0.5, busy=True).config == 1
    # gap since the last processed request (0.0) is exactly delta_req: no move
    assert ctrl.on_request(1.0, busy=False).config == 1
    # gap 1.0001 > delta_req since t_last = 1.0: one step toward less skipping
    assert ctrl.on_request(2.0001, busy=False).config == 0


def test_min_acc_filter_removes_configs_once():
    ctrl = AdaptiveController(ACC, min_acc=0.88, delta_req=1.0)
    assert ctrl.allowed == [0, 1, 2]
    for _ in range(5):
        d = ctrl.on_request(0.0, busy=True)
    assert d.dropped and d.config == 2  # never beyond the last config that meets min-acc
    with pytest.raises(EdgeskipError, match="no config reaches --min-acc"):
        AdaptiveController(ACC, min_acc=0.95, delta_req=1.0)
    with pytest.raises(EdgeskipError, match="delta_req"):
        AdaptiveController(ACC, min_acc=0.0, delta_req=0.0)


def test_fixed_config_baseline_drops_but_never_moves():
    got = trace(FixedController(0), [0.0, 0.5, 1.0, 1.2, 2.5])
    assert got == [("ok", 0), ("drop", 0), ("ok", 0), ("drop", 0), ("ok", 0)]


def test_adaptive_processes_more_than_the_original_under_overload():
    arrivals = [i * 0.5 for i in range(200)]  # twice as fast as the original can serve
    orig = simulate(arrivals, lambda c: SERVICE[c], FixedController(0))
    adapt = simulate(arrivals, lambda c: SERVICE[c], AdaptiveController(ACC, 0.0, delta_req=SERVICE[0]))
    n_orig = sum(not o.dropped for o in orig)
    n_adapt = sum(not o.dropped for o in adapt)
    assert n_orig == 100 and n_adapt > 1.5 * n_orig
    assert len(orig) == len(adapt) == 200  # every request accounted for


# ---- policies beyond Algorithm 1 (rate, mix) -------------------------------------------------------------------

from edgeskip.runtime.policies import MixPolicy, RatePolicy, ServiceModel, check_param, make_policy  # noqa: E402


def rate(**kw):
    return RatePolicy(ACC, ServiceModel(SERVICE), 0.0, **kw)


def feed(policy, gaps, busy=False):
    t = 0.0
    for g in gaps:
        t += g
        d = policy.on_request(t, busy)
    return d


def test_rate_runs_the_most_accurate_config_under_light_load():
    p = rate()
    assert p.config == 0 and p.budget() == float("inf")
    assert feed(p, [2.0] * 20).config == 0  # gap 2 s: every config fits, the most accurate wins


def test_rate_picks_the_most_accurate_config_that_fits_the_budget():
    p = rate(target_util=0.9, hysteresis=0.0)
    feed(p, [0.5] * 40)  # gap 0.5 s, budget 0.45 s: configs 3 (0.4) and 4 (0.2) fit, 3 is the more accurate
    assert p.budget() == pytest.approx(0.45) and p.config == 3
    feed(p, [0.7] * 60)  # budget 0.63: config 2 (0.6) fits
    assert p.config == 2


def test_rate_hysteresis_needs_margin_before_moving_back():
    p = rate(target_util=0.9, hysteresis=0.2)
    feed(p, [0.5] * 40)
    assert p.config == 3
    feed(p, [0.7] * 60)  # config 2 (0.6) fits 0.63 but not 0.63 x 0.8 = 0.504: stay at 3
    assert p.config == 3
    feed(p, [0.9] * 60)  # budget 0.81 x 0.8 = 0.648: config 2 now fits with margin; config 1 (0.8) does not
    assert p.config == 2


def test_rate_learns_service_times_and_never_runs_below_min_acc():
    p = RatePolicy(ACC, ServiceModel(SERVICE), min_acc=0.88, target_util=0.9, hysteresis=0.0)
    assert p.allowed == [0, 1, 2]
    feed(p, [0.1] * 30)  # nothing fits: the fastest allowed config
    assert p.config == 2
    p2 = rate(target_util=0.9, hysteresis=0.0)
    feed(p2, [0.5] * 40)
    assert p2.config == 3
    for _ in range(30):  # config 3 turns out to take 0.6 s on this board, and (by ratio) 4 takes 0.3 s
        p2.on_finish(0.0, 3, 0.6)
    assert p2.service.estimate(3) == pytest.approx(0.6, rel=1e-3)
    assert p2.on_start(0.0) == 4


def test_rate_budget_shrinks_with_a_backlog():
    p = rate(target_util=1.0, hysteresis=0.0, drain=4)
    feed(p, [0.65] * 40)
    assert p.on_start(0.0, queued=0) == 1 or p.config in (1, 2)
    assert p.budget(queued=4) == pytest.approx(p.budget(0) / 2)
    assert p.on_start(0.0, queued=4) == 4  # half the budget (0.325): only config 4 fits


def test_mix_time_shares_neighbours_to_meet_the_budget():
    p = MixPolicy(ACC, ServiceModel(SERVICE), 0.0, target_util=1.0, strict=False)
    feed(p, [0.5] * 40)  # budget 0.5 between config 3 (0.4) and config 2 (0.6): half and half
    picks = [p.on_start(0.0) for _ in range(200)]
    assert set(picks) == {2, 3} and picks.count(2) == pytest.approx(100, abs=2)
    strict = MixPolicy(ACC, ServiceModel(SERVICE), 0.0, target_util=1.0, strict=True)
    feed(strict, [0.5] * 40)  # without a queue config 2 (0.6 > the 0.5 gap) would make the next arrival a drop
    assert {strict.on_start(0.0) for _ in range(50)} == {3}


def test_a_mixed_front_is_stepped_by_accuracy_and_measured_service_not_by_skipped_blocks():
    """Issue #34 part 3: with int8 configs, latency is not ordered by skipped blocks, and the compile host's order may
    not be the board's. rate/mix take the most accurate allowed config whose *measured* service time fits, and mix
    time-shares it with the next more accurate one; paper steps through the front's order (Algorithm 1)."""
    acc = [0.90, 0.899, 0.88, 0.85]  # full float, all int8 (nothing skipped), one block skipped, two skipped
    prior = [1.0, 0.8, 0.6, 0.4]  # the compile host's order
    board = [1.0, 0.35, 0.6, 0.4]  # this board: int8 pays far more (VNNI), so config 1 is the fastest but one
    p = RatePolicy(acc, ServiceModel(prior), target_util=0.9, hysteresis=0.0)
    feed(p, [0.5] * 40)  # budget 0.45: by the priors only config 3 fits
    assert p.config == 3
    for c in range(4):
        p.on_finish(0.0, c, board[c])
    assert p.on_start(0.0) == 1  # measured: int8 everywhere fits, more accurate than any skipping config
    m = MixPolicy(acc, ServiceModel(prior), 0.0, target_util=1.0, strict=False)
    for c in range(4):
        m.on_finish(0.0, c, board[c])
    feed(m, [0.675] * 60)  # budget 0.675: between config 1 (0.35) and config 0 (1.0), half of it spent on each side
    picks = [m.on_start(0.0) for _ in range(400)]
    assert set(picks) == {0, 1} and picks.count(0) == pytest.approx(200, abs=6)
    paper = AdaptiveController(acc, 0.0, delta_req=1.0)
    assert [paper.on_request(0.0, busy=True).config for _ in range(3)] == [1, 2, 3]  # the front's order, unchanged


def test_policy_parameters_and_names_are_checked():
    for name, bad in (
        ("target_util", 0.0),
        ("target_util", 1.5),
        ("hysteresis", -0.1),
        ("attack", 0.5),
        ("drain", float("nan")),
    ):
        with pytest.raises(EdgeskipError, match=name):
            check_param(name, bad)
    with pytest.raises(EdgeskipError, match="unknown policy parameter"):
        check_param("speed", 1.0)
    with pytest.raises(EdgeskipError, match="unknown policy 'fast'"):
        make_policy("fast", ACC, 0.0)
    with pytest.raises(EdgeskipError, match="takes no parameter"):
        make_policy("paper", ACC, 0.0, delta_req=1.0, target_util=0.9)
    with pytest.raises(EdgeskipError, match="min-acc"):
        make_policy("rate", ACC, 1.5, service_prior=SERVICE)
    with pytest.raises(EdgeskipError, match="positive"):
        ServiceModel([0.1, -1.0])
    assert make_policy("mix", ACC, 0.0, service_prior=SERVICE, queue_depth=2).strict is False
    assert make_policy("rate", ACC, 0.0, service_prior=SERVICE, target_util=0.8).target_util == 0.8
