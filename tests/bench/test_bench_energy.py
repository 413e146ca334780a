"""`edgeskip bench --power`: each run's energy, joules per inference, and Inf/W against the original (the paper's
Table I third column), from a meter command and from a sysfs RAPL counter the test advances; and the one line
where there is no source."""

import json
import subprocess
import sys

import pytest

from tests.conftest import inproc


def bench(bundle, out, *args):
    return inproc("bench", bundle, "--count", "200", "--configs", "0,2", "--out", out, *args)


def test_energy_per_inference_and_inf_per_w_from_a_meter_command(bundle, tmp_path):
    res = bench(bundle, tmp_path, "--power", "cmd:echo 5 W", "--idle-baseline", "0.2")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["power"]["source"] == "command (echo 5 W)" and doc["power"]["idle_w"] == pytest.approx(5.0)
    assert "energy: command (echo 5 W), sampled every 50 ms, idle baseline 5.000 W" in res.stdout
    rows = {r["mode"]: r for r in doc["table"]}
    ref = doc["summaries"]["original"]
    for name, s in doc["summaries"].items():
        e = s["energy"]
        assert e["samples"] >= 2 and e["joules"] == pytest.approx(5.0 * e["seconds"])  # a constant 5 W
        assert s["joules_per_inference"] == pytest.approx(e["joules"] / s["processed"])
        assert s["inferences_per_joule"] == pytest.approx(s["processed"] / e["joules"])
        assert e["joules_above_idle"] == pytest.approx(0.0, abs=1e-9)  # all of it is the idle power here
        assert rows[name]["inf_per_w_ratio"] == pytest.approx(s["inferences_per_joule"] / ref["inferences_per_joule"])
    assert rows["original"]["inf_per_w_ratio"] == 1.0
    assert "Inf/W ×" in res.stdout and "mJ/inf" in res.stdout


def test_a_rapl_counter_read_through_sysfs(bundle, tmp_path, monkeypatch):
    zone = tmp_path / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("1000000000\n")
    (zone / "energy_uj").write_text("0\n")
    # another process advances the counter at 2 W of wall time, as the kernel would (atomic replace per write)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "t0 = time.monotonic(); f = sys.argv[1]\n"
            "while True:\n"
            "    open(f + '.t', 'w').write(str(int((time.monotonic() - t0) * 2e6)) + '\\n'); os.replace(f + '.t', f)\n"
            "    time.sleep(0.002)",
            str(zone / "energy_uj"),
        ]
    )
    try:
        monkeypatch.setenv("EDGESKIP_SYSFS", str(tmp_path / "sys"))
        res = bench(bundle, tmp_path / "out", "--power", "auto", "--period", "0.002")
    finally:
        writer.kill()
        writer.wait()
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "out/bench.json").read_text())
    assert doc["power"]["source"] == "powercap (package-0)"
    for s in doc["summaries"].values():
        e = s["energy"]
        assert e["seconds"] > 0.3 and 1.4 < e["mean_w"] < 2.6, e  # 200 requests 2 ms apart at 2 W


def test_auto_without_a_source_says_so_in_one_line(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESKIP_SYSFS", str(tmp_path))
    res = bench(bundle, tmp_path / "out", "--power", "auto", "--configs", "0")
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stdout.splitlines() if "no power source" in line]
    assert len(notes) == 1 and "energy is not measured" in notes[0]
    doc = json.loads((tmp_path / "out/bench.json").read_text())
    assert doc["power"]["source"] is None and all("energy" not in s for s in doc["summaries"].values())
    assert "Inf/W" not in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--power", "rapl"], "unknown power source 'rapl'"),
        (["--power", "cmd:echo hello"], "printed 'hello', not a number with W or J"),
        (["--power", "cmd:exit 1"], r"printed nothing \(exit 1\)"),
        (["--idle-baseline", "1"], "--idle-baseline needs --power"),
        (["--power", "cmd:echo 1 W", "--idle-baseline", "-1"], "--idle-baseline must be seconds >= 0"),
    ],
)
def test_bad_power_input_is_one_line_exit_2(bundle, tmp_path, args, message):
    res = bench(bundle, tmp_path, *args)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert __import__("re").search(message, res.stderr), res.stderr


def test_a_load_sweep_reports_inf_per_w_against_the_original(bundle, tmp_path):
    res = inproc(
        "bench", bundle, "--loads", "1,2", "--seeds", "1", "--runs", "original,paper", "--count", "150",
        "--power", "cmd:echo 4 W", "--out", tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert doc["power"]["source"] == "command (echo 4 W)"
    for load, by_run in doc["rows"].items():
        ref = by_run["original"][0]
        for run in by_run.values():
            e = run[0]["energy"]
            assert e["joules"] == pytest.approx(4.0 * e["seconds"])
        row = next(r for r in doc["table"] if r["load"] == float(load) and r["run"] == "paper")
        paper = by_run["paper"][0]
        assert row["inf_per_w_ratio_mean"] == pytest.approx(paper["inferences_per_joule"] / ref["inferences_per_joule"])
    assert "inferences per joule (Inf/W) relative to original" in res.stdout
