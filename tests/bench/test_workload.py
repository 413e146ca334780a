import numpy as np
import pytest

from edgeskip.bench.drivers import Record, check_loopback
from edgeskip.bench.report import summarize, table_rows
from edgeskip.bench.workload import load_trace, paper_arrivals, poisson_arrivals
from edgeskip.errors import EdgeskipError


def test_paper_pattern_changes_period_every_10th_request_within_25_percent():
    t = paper_arrivals(100, 0.01, seed=3)
    gaps = np.diff(t)
    assert t[0] == 0 and len(t) == 100
    # requests 0..9 use the base period; the period may change only at multiples of 10
    assert np.allclose(gaps[:10], 0.01)
    for block in range(1, 9):
        g = gaps[10 * block : 10 * block + 10]
        assert np.allclose(g, g[0]) and 0.0075 <= g[0] <= 0.0125
    assert len({round(g, 12) for g in gaps}) > 3  # it does change
    assert paper_arrivals(100, 0.01, seed=3) == t and paper_arrivals(100, 0.01, seed=4) != t


def test_poisson_rate_and_seed():
    t = poisson_arrivals(20000, 500.0, seed=1)
    assert t[0] == 0 and abs(len(t) / t[-1] - 500) < 15
    assert poisson_arrivals(10, 5.0, seed=1) == poisson_arrivals(10, 5.0, seed=1)


def test_trace_files(tmp_path):
    (tmp_path / "a.txt").write_text("1.0\n1.5\n3\n")
    assert load_trace(tmp_path / "a.txt") == [0.0, 0.5, 2.0]
    (tmp_path / "b.json").write_text("[0, 0.1, 0.1, 0.4]")
    assert load_trace(tmp_path / "b.json") == [0, 0.1, 0.1, 0.4]
    (tmp_path / "c.txt").write_text("0\n2\n1\n")
    with pytest.raises(EdgeskipError, match="non-decreasing"):
        load_trace(tmp_path / "c.txt")
    (tmp_path / "d.txt").write_text("zero one")
    with pytest.raises(EdgeskipError, match="not a list of arrival times"):
        load_trace(tmp_path / "d.txt")
    with pytest.raises(EdgeskipError, match="does not exist"):
        load_trace(tmp_path / "none.txt")
    with pytest.raises(EdgeskipError):
        paper_arrivals(0, 0.01)


def test_loopback_only():
    check_loopback("http://127.0.0.1:8080")
    check_loopback("http://localhost:1")
    check_loopback("http://127.1.2.3:80")
    check_loopback("http://[::1]:80")
    for bad in (
        "http://10.0.0.1:80",
        "http://192.168.1.2",
        "http://example.com",
        "http://127.evil.example.com/",
        "http://127.0.0.1.nip.io:80",
        "https://127.0.0.1:443",
        "http://127.0.0.1:99999",
    ):
        with pytest.raises(EdgeskipError, match="loopback|bad --url"):
            check_loopback(bad)


def test_summary_and_table():
    recs = [
        Record(0.0, "processed", 0, 0.010, True),
        Record(0.1, "dropped", 1, None, None),
        Record(0.2, "processed", 1, 0.005, False),
        Record(0.3, "processed", 1, 0.006, True),
    ]
    s = summarize(recs)
    assert (s["sent"], s["processed"], s["dropped"], s["errors"]) == (4, 3, 1, 0)
    assert s["accuracy"] == pytest.approx(2 / 3) and s["per_config"] == {0: 1, 1: 2}
    ref = summarize([Record(0.0, "processed", 0, 0.01, True), Record(0.1, "dropped", 0, None, None)])
    rows = {r["mode"]: r for r in table_rows({"original": ref, "adaptive": s})}
    assert rows["adaptive"]["processed_ratio"] == 3.0
    assert rows["adaptive"]["accuracy_change_pp"] == pytest.approx(100 * (2 / 3 - 1))


def test_onoff_and_ramp_patterns_and_the_pattern_registry():
    from edgeskip.bench.workload import arrivals, onoff_arrivals, ramp_arrivals

    t = onoff_arrivals(2000, 0.01, seed=2)
    gaps = np.round(np.diff(t), 9)
    assert set(np.unique(gaps)) == {0.005, 0.015}  # on: period / 2, off: period x 1.5
    assert abs(t[-1] / len(t) - 0.01) < 0.0015  # mean rate about 1 / period
    r = ramp_arrivals(20000, 0.01, seed=1)
    first, last = np.diff(r[:2000]).mean(), np.diff(r[-2000:]).mean()
    assert 2.3 < first / last < 3.7  # the rate rises from ~0.55x to ~1.45x
    assert arrivals("onoff", 50, 0.01, 2) == onoff_arrivals(50, 0.01, 2)
    assert len(arrivals("poisson", 10, 0.01)) == 10 and arrivals("paper", 5, 0.01)[1] == pytest.approx(0.01)
    with pytest.raises(EdgeskipError, match="unknown pattern"):
        arrivals("bursty", 10, 0.01)
    with pytest.raises(EdgeskipError, match="burst factor"):
        onoff_arrivals(10, 0.01, high=3.0)
