"""Algorithm 1 on scripted traces (arrival times + service times -> drops and configs)."""

import pytest

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.adaptation import AdaptiveController, FixedController, simulate

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
