"""Run labels of `edgeskip bench --runs` and the sweep table."""

import pytest

from edgeskip.bench.report import sweep_table
from edgeskip.bench.sweep import parse_run, parse_runs
from edgeskip.errors import EdgeskipError


def test_labels():
    assert parse_run("original").describe() == {"policy": "fixed", "fixed": 0, "queue_depth": 0, "deadline_ms": None}
    s = parse_run("mix+q4+d2.5", {"target_util": 0.9})
    assert (s.policy, s.queue_depth, s.deadline, s.params) == ("mix", 4, 0.0025, {"target_util": 0.9})
    assert parse_run("c3").fixed == 3 and parse_run("config 2").fixed == 2 and parse_run("paper").params == {}
    assert [r.label for r in parse_runs("rate,paper")] == ["original", "rate", "paper"]
    policy, depth, deadline = parse_run("rate+q2").build([0.9, 0.8], 0.0, [1.0, 0.5], delta_req=1.0)
    assert policy.name == "rate" and depth == 2 and deadline is None


@pytest.mark.parametrize(
    "label,fragment",
    [("fast", "unknown policy 'fast'"), ("rate+x", "bad run"), ("rate+d5", "needs --queue-depth"), ("", "bad run")],
)
def test_bad_labels(label, fragment):
    with pytest.raises(EdgeskipError, match=fragment):
        parse_run(label)
    with pytest.raises(EdgeskipError, match="twice"):
        parse_runs("rate,rate")
    with pytest.raises(EdgeskipError, match="out of range"):
        parse_run("c9").build([0.9, 0.8], 0.0, [1.0, 0.5], delta_req=1.0)


def test_sweep_table_ratios_against_the_original_on_the_same_seed():
    rows = {
        "1.25": {
            "original": [
                {"processed": 100, "accuracy": 0.9, "expected_accuracy": 0.9},
                {"processed": 200, "accuracy": 0.9, "expected_accuracy": 0.9},
            ],
            "rate": [
                {"processed": 150, "accuracy": 0.88, "expected_accuracy": 0.89},
                {"processed": 400, "accuracy": 0.86, "expected_accuracy": 0.87},
            ],
        }
    }
    t = {r["run"]: r for r in sweep_table(rows)}
    assert t["original"]["ratio_mean"] == 1.0 and t["original"]["dexp_pp_mean"] == 0.0
    assert t["rate"]["ratio_min"] == 1.5 and t["rate"]["ratio_max"] == 2.0 and t["rate"]["ratio_mean"] == 1.75
    assert t["rate"]["dacc_pp_mean"] == pytest.approx(-3.0) and t["rate"]["dexp_pp_mean"] == pytest.approx(-2.0)


def test_default_runs_include_the_policy_asked_for():
    from edgeskip.bench.sweep import default_runs

    assert default_runs() == "original,paper,rate,mix"
    assert default_runs("rate") == "original,paper,rate,mix"
    assert default_runs("mix", 4) == "original,paper,rate,mix,mix+q4"
    assert default_runs("paper", 2, 2.5) == "original,paper,rate,mix,paper+q2+d2.5"
    assert [r.label for r in parse_runs(default_runs("rate", 8))][-1] == "rate+q8"
