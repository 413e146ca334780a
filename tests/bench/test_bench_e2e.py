"""`edgeskip bench` end to end on a digits bundle: in-process, and over HTTP against a real daemon."""

import json
import signal
import subprocess
import sys

from tests.conftest import cli, edited_bundle


def run(*args):
    return cli(*args, timeout=600)


def test_bench_in_process(bundle, tmp_path):
    res = run("bench", bundle, "--count", "300", "--configs", "0,1", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    modes = {r["mode"] for r in doc["table"]}
    assert modes == {"adaptive", "original", "config 1"}
    for name, s in doc["summaries"].items():
        assert s["sent"] == 300 and s["processed"] + s["dropped"] + s["errors"] == 300 and s["errors"] == 0
        cols = doc["records"][name]
        assert len(cols["sent"]) == len(cols["outcome"]) == len(cols["config"]) == 300
        assert cols["outcome"].count("dropped") == s["dropped"]
    assert doc["summaries"]["original"]["per_config"] == {"0": doc["summaries"]["original"]["processed"]}
    assert "Δacc pp" in res.stdout and doc["command"].startswith("edgeskip bench")


def test_bench_against_daemon(bundle, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeskip.cli", "serve", str(bundle), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().split()[2]
        res = run("bench", bundle, "--url", url, "--count", "200", "--configs", "0", "--load", "0.5", "--out", tmp_path)
        assert res.returncode == 0, res.stderr
        doc = json.loads((tmp_path / "bench.json").read_text())
        s = doc["summaries"]["adaptive"]
        assert doc["target"] == url and s["sent"] == 200 and s["errors"] == 0 and s["processed"] > 0
        assert s["processed"] + s["dropped"] == 200
        assert doc["summaries"]["original"]["per_config"] == {"0": doc["summaries"]["original"]["processed"]}
        # a load sweep over HTTP: the daemon as started, and the original pinned to config 0 (?config=0)
        res = run(
            "bench",
            bundle,
            "--url",
            url,
            "--count",
            "60",
            "--loads",
            "0.5,2",
            "--seeds",
            "1",
            "--out",
            tmp_path / "sweep",
        )
        assert res.returncode == 0, res.stderr
        doc = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
        assert doc["target"] == url and {r["run"] for r in doc["table"]} == {"original", "adaptive"}
        assert doc["rows"]["0.5"]["original"][0]["per_config"] == {"0": doc["rows"]["0.5"]["original"][0]["processed"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_bench_bad_input(bundle, tmp_path):
    res = run("bench", bundle, "--url", "http://10.1.2.3:80", "--count", "5", "--out", tmp_path)
    assert res.returncode == 2 and "loopback" in res.stderr and "Traceback" not in res.stderr
    res = run("bench", bundle, "--pattern", "trace", "--out", tmp_path)
    assert res.returncode == 2 and "--trace" in res.stderr


def test_loadgen_server_scenario_against_daemon(bundle, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeskip.cli", "serve", str(bundle), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().split()[2]
        res = run("bench", bundle, "--loadgen", "--url", url, "--rate", "500", "--count", "200", "--out", tmp_path)
        assert res.returncode == 0, res.stderr
        doc = json.loads((tmp_path / "loadgen.json").read_text())
        assert doc["processed"] + doc["dropped"] == 200 and doc["errors"] == 0 and doc["processed"] > 0
        assert (tmp_path / "mlperf_log_summary.txt").exists() and doc["loadgen_completed_per_s"]
        status = json.loads(__import__("urllib.request").request.urlopen(url + "/v1/status").read())
        assert status["counts"]["processed"] == doc["processed"] and status["counts"]["dropped"] == doc["dropped"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    res = run("bench", bundle, "--loadgen", "--count", "5", "--out", tmp_path)
    assert res.returncode == 2 and "--url" in res.stderr


def test_bench_on_a_runtime_only_install(bundle, tmp_path):
    """The bundle's own evaluation sample (or --images) where no design package exists (all blocked here);
    --save-images writes the images used."""
    saved = tmp_path / "images.npz"
    res = run("bench", bundle, "--count", "100", "--configs", "0", "--save-images", saved, "--out", tmp_path / "a")
    assert res.returncode == 0, res.stderr
    blocked = "; ".join(
        f"sys.modules[{m!r}] = None"
        for m in ("torch", "sklearn", "matplotlib", "onnx", "onnxscript", "onnxruntime", "iree.compiler", "tqdm")
    )

    def runtime_only(bundle_dir, out, *extra):
        code = (
            f"import sys; {blocked}\nfrom edgeskip.cli import main\n"
            f"sys.argv = ['edgeskip', 'bench', {str(bundle_dir)!r}, '--count', '100', '--configs', '0', "
            f"'--backend', 'iree', '--out', {str(out)!r}, *{list(map(str, extra))!r}]\nmain()"
        )
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)

    for name, extra in (("b", ()), ("c", ("--images", saved))):
        res = runtime_only(bundle, tmp_path / name, *extra)
        assert res.returncode == 0, res.stderr
        assert "no timeline: matplotlib is not installed" in res.stdout
        doc = json.loads((tmp_path / name / "bench.json").read_text())
        assert doc["timeline_png"] is None and doc["summaries"]["adaptive"]["sent"] == 100
        assert doc["summaries"]["adaptive"]["errors"] == 0
    a = json.loads((tmp_path / "a" / "bench.json").read_text())
    assert a["timeline_png"] == "timeline.png"

    # a bundle without a sample (older ones) asks for --images in one line; model.pt's data spec is never read
    def without_sample(doc):
        del doc["sample"], doc["artifacts"]["eval/sample.npz"]

    old = edited_bundle(bundle, tmp_path / "old", without_sample)
    res = runtime_only(old, tmp_path / "d")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--images FILE.npz" in res.stderr, res.stderr
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    res = run("bench", bundle, "--count", "10", "--images", junk, "--out", tmp_path / "e")
    assert res.returncode == 2 and "is not an images file" in res.stderr and "Traceback" not in res.stderr


def test_bench_policy_and_load_sweep(bundle, tmp_path):
    res = run(
        "bench",
        bundle,
        "--count",
        "200",
        "--configs",
        "0",
        "--policy",
        "rate",
        "--queue-depth",
        "2",
        "--deadline-ms",
        "50",
        "--out",
        tmp_path / "one",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "one" / "bench.json").read_text())
    assert doc["policy"] == "rate" and doc["runs"]["adaptive"]["queue_depth"] == 2
    assert doc["runs"]["adaptive"]["deadline_ms"] == 50 and doc["runs"]["original"]["queue_depth"] == 0
    s = doc["summaries"]["adaptive"]
    assert s["processed"] + s["dropped"] == 200 and set(s["drop_reasons"]) <= {"queue_full", "deadline"}
    assert doc["summaries"]["original"]["drop_reasons"].keys() <= {"busy"}
    res = run(
        "bench",
        bundle,
        "--count",
        "150",
        "--loads",
        "0.5,2",
        "--seeds",
        "2",
        "--runs",
        "original,paper,rate,mix+q2",
        "--out",
        tmp_path / "sweep",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert {(r["load"], r["run"]) for r in doc["table"]} == {
        (l, r) for l in (0.5, 2.0) for r in ("original", "paper", "rate", "mix+q2")
    }
    for r in doc["table"]:
        assert r["seeds"] == 2 and r["ratio_min"] <= r["ratio_mean"] <= r["ratio_max"]
        if r["run"] == "original":
            assert r["ratio_mean"] == 1.0 and r["dacc_pp_mean"] == 0.0
    assert "processed ratio / expected (configs' test accuracy) accuracy change" in res.stdout


def test_bench_bad_policy_input(bundle, tmp_path):
    for args, fragment in (
        (("--runs", "original,fast"), "unknown policy 'fast'"),
        (("--runs", "rate+x"), "bad run 'rate+x'"),
        (("--loads", "0.5,abc"), "--loads must be comma-separated numbers"),
        (("--loads", "0,1"), "--loads must be positive"),
        (("--loads", "1", "--pattern", "trace"), "synthetic --pattern"),
        (("--policy", "mix", "--target-util", "0"), "target_util must be in (0, 1]"),
        (("--queue-depth", "-3"), "--queue-depth must be an integer >= 0"),
        (("--pattern", "paper", "--rate", "100"), "--rate applies to --pattern poisson only"),
    ):
        res = run("bench", bundle, "--count", "10", *args, "--out", tmp_path)
        assert res.returncode == 2 and fragment in res.stderr and res.stderr.count("\n") == 1, (args, res.stderr)


def test_load_sweep_with_skipnet(bundle, skipnet_bundle, tmp_path):
    res = run(
        "bench",
        bundle,
        "--count",
        "100",
        "--loads",
        "1.25",
        "--seeds",
        "1",
        "--runs",
        "original,rate",
        "--compare",
        skipnet_bundle,
        "--out",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert {r["run"] for r in doc["table"]} == {"original", "rate", "skipnet"}
    sk = doc["rows"]["1.25"]["skipnet"][0]
    assert sk["processed"] + sk["dropped"] == 100 and sk["expected_accuracy"] is not None
