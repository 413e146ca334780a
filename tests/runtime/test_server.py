"""The daemon as deployed: a real `edgeskip serve` process on 127.0.0.1, real HTTP, real executor."""

import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from daemon_process import Server
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(scope="module")
def server(bundle):
    s = Server(bundle, "--max-body", "100000")
    yield s
    s.kill()


def raw_image(digits_splits, i=0):
    x = (digits_splits.test.x[i] - digits_splits.norm.mean[0]) / digits_splits.norm.std[0]
    return x.astype(np.float32).tobytes()


def png_image(digits_splits, i=0):
    buf = io.BytesIO()
    Image.fromarray((digits_splits.test.x[i, 0] * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def simultaneous(server, body, n):
    """``n`` raw-body requests released at once (a barrier); their (status, doc) pairs."""
    results, barrier = [], threading.Barrier(n)

    def one():
        barrier.wait()
        results.append(server.infer(body))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_infer_with_each_body_kind(server, digits_splits):
    label = str(digits_splits.test.y[0])
    for body, ctype in (
        (raw_image(digits_splits), "application/octet-stream"),
        (png_image(digits_splits), "image/png"),
        (
            json.dumps(
                {"data": np.frombuffer(raw_image(digits_splits), np.float32).reshape(1, 8, 8).tolist()}
            ).encode(),
            "application/json",
        ),
    ):
        status, doc = server.infer(body, ctype)
        assert status == 200, doc
        assert len(doc["top"]) == 5 and doc["top"][0]["score"] >= doc["top"][1]["score"]
        assert doc["config"] in range(10) and doc["skipped_blocks"] >= 0 and doc["latency_s"] > 0
    # the raw tensor and the PNG of the same digit agree with the label on this easy example
    assert server.infer(raw_image(digits_splits))[1]["top"][0]["class"] == label
    status, raw, ctype = server.call("/healthz")
    assert status == 200 and json.loads(raw)["ok"]
    doc = json.loads(server.call("/v1/status")[1])
    assert doc["inline_max_s"] == 0 and doc["counts"]["inline"] == 0  # off unless asked (serve --inline-max-ms)


@pytest.mark.parametrize(
    "body,ctype,code,fragment",
    [
        (b"\x00" * 12, "application/octet-stream", 400, "raw body must be 256 bytes"),
        (b"not a png", "image/png", 400, "not a PNG image"),
        (b"{bad json", "application/json", 400, "bad JSON"),
        (b'{"data": [1, 2]}', "application/json", 400, "shape [1, 8, 8]"),
        (b"hello", "text/plain", 415, "unsupported content type"),
        (b"", "application/octet-stream", 400, "empty request body"),
        (b"\x00" * 200_000, "application/octet-stream", 413, "larger than 100000 bytes"),
    ],
)
def test_bad_input_gets_4xx_and_service_keeps_serving(server, digits_splits, body, ctype, code, fragment):
    status, doc = server.infer(body, ctype)
    assert status == code and fragment in doc["error"] and "\n" not in doc["error"]
    assert server.infer(raw_image(digits_splits))[0] == 200


def test_busy_requests_are_dropped_with_503_and_all_accounted_for(server, digits_splits):
    before = json.loads(server.call("/v1/status")[1])["counts"]
    body = raw_image(digits_splits)
    results, sent = [], 0
    for _ in range(20):  # bounded: rounds of simultaneous requests until some arrive while busy
        results += simultaneous(server, body, 24)
        sent += 24
        if any(s == 503 for s, _ in results):
            break
    codes = [s for s, _ in results]
    assert set(codes) <= {200, 503} and 503 in codes
    assert all(d["dropped"] and d["reason"] == "busy" for s, d in results if s == 503)
    after = json.loads(server.call("/v1/status")[1])["counts"]
    assert after["processed"] - before["processed"] == codes.count(200)
    assert after["dropped"] - before["dropped"] == codes.count(503)
    assert codes.count(200) + codes.count(503) == sent
    # Prometheus text parses and agrees with the status counters
    status, raw, ctype = server.call("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(raw.decode())}
    by_outcome = {s.labels["outcome"]: s.value for s in fams["edgeskip_requests"].samples if s.name.endswith("_total")}
    assert by_outcome["processed"] == after["processed"] and by_outcome["dropped"] == after["dropped"]
    assert "edgeskip_inference_latency_seconds" in fams and "edgeskip_current_config" in fams
    per_config = sum(s.value for s in fams["edgeskip_config_requests"].samples if s.name.endswith("_total"))
    assert per_config == after["processed"]


def test_status_and_graceful_shutdown(bundle, digits_splits):
    s = Server(bundle, "--min-acc", "0.5", "--delta-req", "0.25", "--inline-max-ms", "50")
    doc = json.loads(s.call("/v1/status")[1])
    assert doc["mode"] == "adaptive" and doc["delta_req_s"] == 0.25 and doc["min_acc"] == 0.5 and doc["config"] == 0
    for i in range(3):  # one client, one request at a time, to a model that serves in ~0.1 ms: on the loop itself
        assert s.infer(raw_image(digits_splits, i))[0] == 200
    doc = json.loads(s.call("/v1/status")[1])
    assert doc["inline_max_s"] == 0.05 and doc["counts"]["inline"] >= 1 and doc["counts"]["processed"] == 3, doc
    assert s.stop() == 0
    assert "Traceback" not in s.proc.stderr.read()


def test_fixed_mode_and_bad_options(bundle, tmp_path):
    s = Server(bundle, "--config", "1")
    assert json.loads(s.call("/v1/status")[1])["mode"] == "fixed"
    assert s.stop() == 0
    res = subprocess.run(
        [sys.executable, "-m", "edgeskip.cli", "serve", str(bundle), "--min-acc", "1.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and res.stderr.startswith("error: no config reaches --min-acc")
    res = subprocess.run(
        [sys.executable, "-m", "edgeskip.cli", "serve", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "no manifest.json" in res.stderr


def test_rate_policy_with_a_queue_serves_bursts_and_reports_itself(bundle, digits_splits):
    s = Server(bundle, "--policy", "rate", "--queue-depth", "4", "--deadline-ms", "2000", "--target-util", "0.9")
    try:
        assert "policy rate" in s.banner and "queue 4 deadline 2000 ms" in s.banner
        doc = json.loads(s.call("/v1/status")[1])
        assert doc["policy"]["policy"] == "rate" and doc["policy"]["target_util"] == 0.9
        assert doc["queue_depth"] == 4 and doc["deadline_s"] == 2.0 and doc["service_time_s"] > 0
        body = raw_image(digits_splits)
        results = simultaneous(s, body, 5)
        # 5 at once: one runs, four wait their turn (the deadline is generous): every one is answered 200
        assert [c for c, _ in results] == [200] * 5
        after = json.loads(s.call("/v1/status")[1])
        assert after["counts"]["processed"] == 5 and after["queued"] == 0 and not after["busy"]
        assert after["policy"]["service_estimate_s"][0] > 0
        # ?config=K pins a config through /v1 too; a bad one is a 400
        status, raw, _ = s.call("/v1/infer?config=1", body, "application/octet-stream")
        assert status == 200 and json.loads(raw)["config"] == 1
        for q in ("config=x", "config=99"):
            status, raw, _ = s.call(f"/v1/infer?{q}", body, "application/octet-stream")
            assert status == 400 and "config" in json.loads(raw)["error"]
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize(
    "args,fragment",
    [
        (("--policy", "fast"), "Invalid value for '--policy'"),
        (("--queue-depth", "-1"), "--queue-depth must be an integer >= 0"),
        (("--deadline-ms", "5"), "--deadline-ms needs --queue-depth"),
        (("--queue-depth", "2", "--deadline-ms", "0"), "--deadline-ms must be > 0"),
        (("--policy", "rate", "--target-util", "1.5"), "target_util must be in (0, 1]"),
        (("--policy", "rate", "--policy-param", "speed=2"), "unknown policy parameter 'speed'"),
        (("--policy", "rate", "--policy-param", "drain"), "drain must be in"),
        (("--policy", "rate", "--delta-req", "0.01"), "--delta-req applies to policy paper only"),
        (("--policy", "paper", "--hysteresis", "0.1"), "policy paper takes no parameter hysteresis"),
    ],
)
def test_bad_policy_options_are_one_line(bundle, args, fragment):
    res = subprocess.run(
        [sys.executable, "-m", "edgeskip.cli", "serve", str(bundle), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and fragment in res.stderr and "Traceback" not in res.stderr, res.stderr
    if not fragment.startswith("Invalid value"):
        assert res.stderr.count("\n") == 1
