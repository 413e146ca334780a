"""Attacks on the daemon and the command line, each reproduced on 127.0.0.1 and bounded: the answer is a
one-line 4xx (or exit 2), the daemon keeps serving, nothing is a traceback or a NaN."""

import io
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from daemon_process import Server, serve_once
from PIL import Image

from tests.conftest import edited_bundle, inflate_accuracies


@pytest.fixture(scope="module")
def daemon(bundle):
    s = Server(bundle)
    yield s
    s.kill()


def raw(digits_splits):
    x = (digits_splits.test.x[0] - digits_splits.norm.mean[0]) / digits_splits.norm.std[0]
    return x.astype(np.float32).tobytes()


def png_declaring(width, height):
    """A 1x1 PNG whose header declares another size (CRC fixed): what a decompression bomb shows first."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


def image(fmt, size=(8, 8)):
    buf = io.BytesIO()
    Image.new("L", size).save(buf, fmt)
    return buf.getvalue()


def raw_http(port, data, timeout=10):
    """Send bytes as they are (no client library fixing them up; the request says Connection: close, and
    the socket is not half-closed, which a server may take as the client leaving); the whole reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


CASES = [
    ("png declaring 20000x20000", png_declaring(20000, 20000), "image/png", 413, "exceeds the limit"),
    ("png declaring 100000x100000", png_declaring(100000, 100000), "image/png", 413, "exceeds the limit"),
    ("png declaring 5000x5000", png_declaring(5000, 5000), "image/png", 413, "exceeds the limit of 16777216"),
    (
        "json 10**400",
        b'{"data": [' + b", ".join([b"1" + b"0" * 400] + [b"0"] * 63) + b"]}",
        "application/json",
        400,
        "float32 cannot represent",
    ),
    (
        "json nested [",
        b'{"data": ' + b"[" * 100000 + b"]" * 100000 + b"}",
        "application/json",
        400,
        "nested too deeply",
    ),
    (
        "json nested {",
        b'{"data": ' + b'{"a":' * 100000 + b"1" + b"}" * 100000 + b"}",
        "application/json",
        400,
        "nested too deeply",
    ),
    ("bmp as png", image("BMP"), "image/png", 400, "not a PNG image"),
    ("tiff as jpeg", image("TIFF"), "image/jpeg", 400, "not a JPEG image"),
    ("gif as png", image("GIF"), "image/png", 400, "not a PNG image"),
    ("NaN raw", np.full(64, np.nan, np.float32).tobytes(), "application/octet-stream", 400, "NaN or infinity"),
    ("inf raw", np.full(64, np.inf, np.float32).tobytes(), "application/octet-stream", 400, "NaN or infinity"),
    ("json NaN", b'{"data": [NaN]}', "application/json", 400, "NaN is not a number"),
    ("json Infinity", b'{"data": [Infinity]}', "application/json", 400, "Infinity is not a number"),
    ("json null", json.dumps({"data": [None] * 64}).encode(), "application/json", 400, "numbers only"),
    ("json strings", json.dumps({"data": ["1"] * 64}).encode(), "application/json", 400, "numbers only"),
    ("json booleans", json.dumps({"data": [True] * 64}).encode(), "application/json", 400, "numbers only"),
]


@pytest.mark.parametrize("name, body, ctype, code, fragment", CASES, ids=[c[0] for c in CASES])
def test_malformed_bodies_get_one_line_4xx(daemon, digits_splits, name, body, ctype, code, fragment):
    t = time.perf_counter()
    status, raw_reply, _ = daemon.call("/v1/infer", body, ctype)
    err = json.loads(raw_reply)["error"]
    assert status == code and fragment in err and "\n" not in err, (status, err)
    assert not re.search(r"0x[0-9a-f]{6,}", err)  # no heap addresses
    assert time.perf_counter() - t < 5
    assert daemon.infer(raw(digits_splits))[0] == 200


def test_extreme_finite_input_never_yields_nan(daemon):
    status, raw_reply, _ = daemon.call("/v1/infer", np.full(64, 3e38, np.float32).tobytes(), "application/octet-stream")
    doc = json.loads(raw_reply)  # strict JSON: NaN would not parse back as a number here
    assert (
        status == 400
        and "not finite" in doc["error"]
        or status == 200
        and all(np.isfinite(t["score"]) for t in doc["top"])
    )
    assert "NaN" not in raw_reply.decode()


def test_headers_encoding_and_missing_content_type(daemon, digits_splits):
    port = int(daemon.url.rsplit(":", 1)[1])
    body = raw(digits_splits)
    reply = raw_http(
        port,
        b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body,
    )
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 415") and b"missing Content-Type" in payload
    assert b"\r\nServer: edgeskip\r\n" in head and b"aiohttp" not in head and b"Python" not in head
    reply = raw_http(
        port,
        b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 8\r\nConnection: close\r\n\r\nnot gzip",
    )
    assert reply.startswith(b"HTTP/1.1 415") and b"Content-Encoding" in reply
    doc = json.loads(daemon.call("/v1/status")[1])
    assert doc["counts"]["error"] == 0  # none of the above was an internal error


def test_aborted_upload_is_one_log_line(bundle, digits_splits):
    s = Server(bundle)
    try:
        port = int(s.url.rsplit(":", 1)[1])
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(
                    b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: 256\r\n\r\n" + b"\0" * 10
                )
                time.sleep(0.05)
        assert s.infer(raw(digits_splits))[0] == 200
        assert s.stop() == 0
        err = s.proc.stderr.read()
        assert "Traceback" not in err and err.count("aborted") == 5, err
    finally:
        s.kill()


def test_shutdown_is_bounded_with_a_stalled_upload(bundle):
    s = Server(bundle)
    port = int(s.url.rsplit(":", 1)[1])
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(
        b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 256\r\n\r\n" + b"\0" * 10
    )
    idle = socket.create_connection(("127.0.0.1", port))
    time.sleep(0.2)
    t = time.perf_counter()
    try:
        assert s.stop() == 0
        assert time.perf_counter() - t < 5
        assert "Traceback" not in s.proc.stderr.read()
    finally:
        stalled.close()
        idle.close()
        s.kill()


def test_signal_right_after_readiness_exits_cleanly(bundle):
    for _ in range(3):
        s = Server(bundle)
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=10) == 0
        assert "Traceback" not in s.proc.stderr.read()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["serve", "{bundle}", "--port", "99999"], "--port"),
        (["serve", "{bundle}", "--port", "-1"], "--port"),
        (["serve", "{bundle}", "--backend", "iree", "--target", "aarch64"], "compiled for another CPU"),
        (["serve", "{bundle}", "--backend", "iree", "--driver", "bogus"], "--driver"),
        (["serve", "{bundle}", "--max-body", "0"], "--max-body"),
        (["serve", "{bundle}", "--max-body", "-1"], "--max-body"),
        (["serve", "{bundle}", "--threads", "-1"], "--threads"),
        (["serve", "{bundle}", "--max-connections", "0"], "--max-connections"),
        (["serve", "{bundle}", "--idle-timeout", "0"], "--idle-timeout"),
        (["serve", "{bundle}", "--loop-nice", "20"], "--loop-nice"),
        (["bench", "{bundle}", "--load", "0"], "--load"),
        (["bench", "{bundle}", "--configs", "a,b"], "--configs"),
        (["bench", "{bundle}", "--pattern", "poisson", "--rate", "0"], "--rate"),
        (["bench", "{bundle}", "--url", "http://127.evil.example.com/"], "loopback"),
        (["bench", "{bundle}", "--url", "http://127.0.0.1:1", "--count", "5"], "no edgeskip daemon answers"),
        (["train", "--epochs", "1", "--out", "{file}/x.pt"], "is a file, not a folder"),
    ],
)
def test_bad_command_lines_are_one_line_exit_2(bundle, tmp_path, args, fragment):
    (tmp_path / "file").write_text("x")
    argv = [a.format(bundle=bundle, file=tmp_path / "file") for a in args]
    res = subprocess.run(
        [sys.executable, "-m", "edgeskip", *argv, "--port", "0"]
        if argv[0] == "serve" and "--port" not in argv
        else [sys.executable, "-m", "edgeskip", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (
        res.stderr
    )


def test_digest_pins_the_manifest_for_inspect_serve_and_bench(bundle, tmp_path):
    """A consistent but edited manifest (accuracies inflated, hashes updated) passes validation; --digest
    (printed at compile time) refuses it in inspect, serve and bench."""
    good = subprocess.run(
        [sys.executable, "-m", "edgeskip", "inspect", str(bundle)], capture_output=True, text=True, timeout=120
    )
    digest = re.search(r"bundle digest (sha256:[0-9a-f]{64})", good.stdout).group(1)
    assert (
        subprocess.run(
            [sys.executable, "-m", "edgeskip", "inspect", str(bundle), "--digest", digest],
            capture_output=True,
            text=True,
            timeout=120,
        ).returncode
        == 0
    )
    edited = edited_bundle(bundle, tmp_path / "edited", inflate_accuracies)
    for argv in (
        ["inspect", str(edited)],
        ["serve", str(edited), "--port", "0"],
        ["bench", str(edited), "--count", "5"],
    ):
        res = subprocess.run(
            [sys.executable, "-m", "edgeskip", *argv, "--digest", digest], capture_output=True, text=True, timeout=120
        )
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and f"is not the expected {digest}" in lines[0], res.stderr


def rss_mib(pid):
    line = next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def test_stalled_uploads_are_bounded_in_memory_and_time(bundle, digits_splits):
    """30 clients each declare a 2 MB body, send all but one byte and stall: only what fits the in-flight
    budget (4 MB) is received, the rest get 503 at once, the stalled ones 408 after the body timeout;
    good requests are answered meanwhile and memory comes back."""
    s = Server(bundle, "--max-body", "2000000", "--max-inflight-bytes", "4000000", "--body-timeout", "2")
    port = int(s.url.rsplit(":", 1)[1])
    try:
        for _ in range(20):
            assert s.infer(raw(digits_splits))[0] == 200
        base = rss_mib(s.proc.pid)
        head = (
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 2000000\r\n\r\n"
        )
        socks, peak = [], base
        for _ in range(30):
            c = socket.create_connection(("127.0.0.1", port), timeout=3)
            try:
                c.sendall(head + b"\0" * 1999999)
            except OSError:  # refused with 503 and closed while we were still sending
                pass
            socks.append(c)
            peak = max(peak, rss_mib(s.proc.pid))
        assert s.infer(raw(digits_splits))[0] == 200  # still serving
        peak = max(peak, rss_mib(s.proc.pid))
        time.sleep(2.5)  # past the body timeout: the admitted uploads are answered 408
        counts = json.loads(s.call("/v1/status")[1])["counts"]
        assert counts["refused"] == 30 and counts["error"] == 0, counts
        for c in socks:
            c.close()
        time.sleep(0.5)
        assert peak - base < 25, (base, peak)  # 4 MB of bodies at most, not 60 MB
        assert rss_mib(s.proc.pid) <= base * 1.1 + 2, (base, rss_mib(s.proc.pid))
        assert s.infer(raw(digits_splits))[0] == 200
        assert s.stop() == 0
        assert "Traceback" not in s.proc.stderr.read()
    finally:
        s.kill()


def test_manifest_that_does_not_match_the_module_is_refused_at_start(bundle, tmp_path):
    """An input shape the graphs do not take, or fewer class names than logits, with every hash consistent:
    serve refuses at start-up with one line for both back ends (the manifest alone cannot tell)."""
    for edit, fragment in (
        (lambda m: m["input"].update(shape=["N", 1, 9, 9]), "does not run on its manifest's input"),
        (
            lambda m: m.update(class_names=[str(i) for i in range(9)], model={**m["model"], "num_classes": 9}),
            "logits for 9 class names",
        ),
    ):
        copy = edited_bundle(bundle, tmp_path / f"b{len(list(tmp_path.iterdir()))}", edit)
        for backend in ("iree", "onnxruntime"):
            code, lines = serve_once(copy, "--backend", backend)
            assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
