"""Admission: run at once, queue (bounded, with a deadline) or drop; the same state machine everywhere."""

import pytest

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.dispatch import Dispatcher, Drop, Queued, Start, check_queue
from edgeskip.runtime.policies import AdaptiveController, FixedController, ServiceModel

SERVICE = [1.0, 0.5]


def disp(depth=0, deadline=None, policy=None):
    return Dispatcher(policy or FixedController(0), ServiceModel(SERVICE), depth, deadline)


def test_without_a_queue_busy_means_dropped():
    d = disp()
    assert d.arrive(0.0, "a") == Start("a", 0)
    assert d.arrive(0.1, "b") == Drop("b", "busy", 0)
    assert d.finish(1.0, 1.0) == [] and not d.busy
    assert d.arrive(1.0, "c") == Start("c", 0)
    assert d.counts == {"started": 2, "busy": 1, "queue_full": 0, "deadline": 0}


def test_queue_waits_in_order_and_bounds_its_length():
    d = disp(depth=2)
    d.arrive(0.0, "a")
    assert d.arrive(0.1, "b") == Queued("b", 0) and d.arrive(0.2, "c") == Queued("c", 1)
    assert d.arrive(0.3, "d") == Drop("d", "queue_full", 0)
    assert d.finish(1.0, 1.0) == [Start("b", 0)] and d.queued == 1
    assert d.finish(2.0, 1.0) == [Start("c", 0)] and d.finish(3.0, 1.0) == [] and not d.busy


def test_deadline_drops_at_admission_and_when_dequeued():
    d = disp(depth=4, deadline=2.5)
    d.arrive(0.0, "a")  # runs 0..1 (estimate 1.0)
    assert d.arrive(0.1, "b") == Queued("b", 0)  # est. finish 2.0 <= 0.1 + 2.5
    assert d.arrive(0.2, "c") == Drop("c", "deadline", 0)  # est. finish 3.0 > 2.7: dropped at once
    d2 = disp(depth=4, deadline=1.5)
    d2.arrive(0.0, "a")
    assert d2.arrive(0.0, "b") == Drop("b", "deadline", 0)  # 0 + 1 + 1 > 1.5
    d3 = disp(depth=4, deadline=2.2)
    d3.arrive(0.0, "a")
    assert d3.arrive(0.1, "b") == Queued("b", 0)
    # "a" ran long (2 s): "b" can no longer finish by 2.3; it is dropped when its turn comes
    assert d3.finish(2.0, 2.0) == [Drop("b", "deadline", 0)] and not d3.busy


def test_cancel_forgets_a_waiting_request():
    d = disp(depth=2)
    d.arrive(0.0, "a")
    d.arrive(0.1, "b")
    assert d.cancel("b") and not d.cancel("b")
    assert d.finish(1.0, 1.0) == []


def test_the_policy_sees_the_executor_and_the_queue():
    p = AdaptiveController([0.9, 0.8], 0.0, delta_req=1.0)
    d = Dispatcher(p, ServiceModel(SERVICE), 2)
    d.arrive(0.0, "a")
    d.arrive(0.1, "b")  # busy: Algorithm 1 moves toward more skipping even though it is queued
    assert p.config == 1 and d.finish(1.0, 1.0) == [Start("b", 1)]


def test_bad_queue_settings_are_one_line_errors():
    for depth, deadline, msg in (
        (-1, None, "queue-depth"),
        (1.5, None, "queue-depth"),
        (2, 0.0, "deadline"),
        (0, 0.01, "needs --queue-depth"),
    ):
        with pytest.raises(EdgeskipError, match=msg):
            check_queue(depth, deadline)
    with pytest.raises(EdgeskipError, match="without a running"):
        disp().finish(0.0, 0.0)
