"""The lean listener (``serve --lean-uds`` / ``--lean-port``): inference answered on each connection's thread, on a
real daemon, with real clients (tritonclient.http, curl, http.client) and malformed HTTP."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from daemon_process import Server, SharedRegion, UnixHTTPConnection, serve_once
from daemon_process import digit_images as images

from edgeskip.runtime.executor import open_executor


@pytest.fixture(scope="module")
def lean(bundle):
    """One daemon with the lean listener on a Unix socket and a TCP port (and a small connection limit)."""
    d = tempfile.mkdtemp(prefix="es", dir="/tmp")  # socket paths must stay under ~100 bytes
    path = os.path.join(d, "l.sock")
    s = Server(
        bundle, "--model-name", "digits", "--lean-uds", path, "--lean-port", "0", "--max-connections", "3",
        "--idle-timeout", "1", "--queue-depth", "2",
    )  # fmt: skip
    try:
        port = int(s.banner.split("  lean http://", 1)[1].split()[0].rsplit(":", 1)[1])
        yield s, path, port
    finally:
        assert s.stop() == 0
        assert not os.path.exists(path)  # removed on shutdown
        os.rmdir(d)


def raw(path, data, read_all=True):
    """Send ``data`` on a new Unix-socket connection; what comes back until the daemon closes it (or the first
    answer's bytes, with ``read_all`` false)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(path)
        try:
            c.sendall(data)
        except BrokenPipeError:
            pass  # the daemon answered and stopped reading before the whole request was sent
        got = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                return got
            got += chunk
            if not read_all and b"\r\n\r\n" in got:
                return got


def status_and_doc(answer):
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), json.loads(body)


def test_the_same_answers_as_the_main_listener_with_real_clients(lean, bundle, digits_splits):
    s, path, port = lean
    x = images(digits_splits, 2)
    ex = open_executor(bundle, backend="iree")
    # tritonclient.http over TCP: binary tensors in and out, a pinned config, the model's errors
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready()
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("logits", binary_data=True)
    res = client.infer("digits", [inp], outputs=[out], parameters={"config": 1}, request_id="r-1")
    assert res.get_response()["parameters"]["config"] == 1 and res.get_response()["id"] == "r-1"
    np.testing.assert_allclose(res.as_numpy("logits"), ex.infer(x, config=1), atol=1e-4)
    with pytest.raises(Exception, match="unknown model 'nope'"):
        client.infer("nope", [inp])
    with pytest.raises(Exception, match="on the lean listener"):
        client.get_model_metadata("digits")  # metadata is the main listener's
    client.close()
    # JSON over the Unix socket, several requests on one kept-alive connection
    doc = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": x.ravel().tolist()}]}
    c = UnixHTTPConnection(path)
    for _ in range(3):
        c.request("POST", "/v2/models/digits/versions/1/infer", body=json.dumps(doc).encode())
        r = c.getresponse()
        answer = json.loads(r.read())
        assert r.status == 200 and r.getheader("Content-Type") == "application/json"
        cfg = answer["parameters"]["config"]
        got = np.array(answer["outputs"][0]["data"]).reshape(2, 10)
        np.testing.assert_allclose(got, ex.infer(x, config=cfg), atol=1e-4)
    c.request("POST", "/v1/infer?config=0", body=x[:1].tobytes(), headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse()
    top = json.loads(r.read())
    assert r.status == 200 and top["config"] == 0 and top["top"][0]["index"] == int(ex.infer(x[:1], 0).argmax())
    c.close()
    # tensors in a shared-memory region registered on the main listener, named on the lean one
    out_off = x[:1].nbytes
    with SharedRegion("lean", x[:1], out_off + 40) as region:
        s.call(
            "/v2/systemsharedmemory/region/io/register",
            json.dumps({"key": region.key, "offset": 0, "byte_size": out_off + 40}).encode(),
            "application/json",
        )
        shm_doc = {
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8],
                        "parameters": {"shared_memory_region": "io", "shared_memory_byte_size": out_off}}],
            "outputs": [{"name": "logits", "parameters": {"shared_memory_region": "io", "shared_memory_byte_size": 40,
                                                          "shared_memory_offset": out_off}}],
            "parameters": {"config": 0},
        }  # fmt: skip
        status, _, answer = status_and_doc(
            raw(
                path,
                b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % len(json.dumps(shm_doc))
                + json.dumps(shm_doc).encode(),
            )  # fmt: skip
        )
        assert status == 200 and answer["outputs"][0]["parameters"]["shared_memory_region"] == "io"
        np.testing.assert_allclose(region.read(np.float32, [1, 10], out_off), ex.infer(x[:1], config=0), atol=1e-4)
    if shutil.which("curl"):  # a client no one here wrote, over the Unix socket
        body = os.path.join(os.path.dirname(path), "x.bin")
        x[:1].tofile(body)
        out = subprocess.run(
            ["curl", "-s", "--unix-socket", path, "-H", "Content-Type: application/octet-stream",
             "--data-binary", f"@{body}", "http://localhost/v1/infer"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        os.unlink(body)
        assert json.loads(out.stdout)["top"][0]["index"] == top["top"][0]["index"]


@pytest.mark.parametrize(
    "request_bytes, status, fragment",
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 400, "malformed request line"),
        (b"POST /v1/infer HTTP/1.1\r\nX" + b"x" * 20000 + b": y\r\n\r\n", 431, "request head over"),
        (b"POST /v1/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "Content-Length"),
        (b"POST /v1/infer HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413, "over the limit"),
        (b"POST /v1/infer HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd", 400, "conflicting"),
        (b"POST /v1/infer HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad Content-Length"),
        (b"POST /v1/infer HTTP/1.1\r\nBad Header\r\n\r\n", 400, "malformed header"),
    ],
)
def test_malformed_http_is_refused_in_one_line_and_closed(lean, request_bytes, status, fragment):
    _, path, _ = lean
    got, head, doc = status_and_doc(raw(path, request_bytes))
    assert got == status and fragment in doc["error"] and "Connection: close" in head


def test_bad_requests_get_4xx_and_the_daemon_keeps_serving(lean, digits_splits):
    s, path, _ = lean
    before = json.loads(s.call("/v1/status")[1])["counts"]
    x = images(digits_splits, 1)
    cases = [
        ("POST", "/v2/models/digits/infer", b"{not json", {}, 400, "JSON"),
        (
            "POST",
            "/v2/models/digits/infer",
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [1e39] * 64}]}
            ).encode(),
            {},
            400,
            "",
        ),  # fmt: skip
        ("POST", "/v1/infer", x.tobytes(), {"Content-Type": "text/plain"}, 415, "unsupported content type"),
        (
            "POST",
            "/v1/infer",
            x.tobytes(),
            {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
            415,
            "Content-Encoding",
        ),  # fmt: skip
        ("POST", "/v1/infer?config=x", x.tobytes(), {"Content-Type": "application/octet-stream"}, 400, "integer"),
        ("GET", "/v1/infer", None, {}, 405, "allowed: POST"),
        ("POST", "/healthz", b"", {}, 405, "allowed: GET"),
        ("GET", "/v2/models/digits/config", None, {}, 404, "main one"),
    ]
    c = UnixHTTPConnection(path)
    for method, route, body, headers, status, fragment in cases:
        c.request(method, route, body=body, headers=headers)
        r = c.getresponse()
        doc = json.loads(r.read())
        assert r.status == status and fragment in doc["error"], (route, r.status, doc)
        assert r.getheader("Content-Type") == "application/json"
    c.request("POST", "/v1/infer", body=x.tobytes(), headers={"Content-Type": "application/octet-stream"})
    assert c.getresponse().status == 200  # the same connection still serves
    c.close()
    after = json.loads(s.call("/v1/status")[1])["counts"]
    assert after["error"] == before["error"]  # no 5xx
    assert after["bad_request"] >= before["bad_request"] + 5


def test_connection_limit_idle_timeout_and_connection_close(lean, digits_splits):
    _, path, _ = lean
    held = []
    for _ in range(3):  # the limit: three open connections
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        held.append(c)
    time.sleep(0.2)
    got, _, doc = status_and_doc(raw(path, b"GET /healthz HTTP/1.1\r\n\r\n"))
    assert got == 503 and "too many connections" in doc["error"]
    held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x")  # half a request head, then nothing
    held[0].settimeout(5)
    t0 = time.perf_counter()
    assert held[0].recv(100) == b""  # closed after --idle-timeout (1 s)
    assert 0.5 < time.perf_counter() - t0 < 4
    for c in held:
        c.close()
    time.sleep(0.2)
    x = images(digits_splits, 1)
    ans = raw(
        path,
        b"POST /v1/infer HTTP/1.0\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % x.nbytes
        + x.tobytes(),
    )  # fmt: skip  (HTTP/1.0 without keep-alive: answered, then closed)
    assert status_and_doc(ans)[0] == 200


def test_head_expect_continue_and_a_trickling_client(lean, digits_splits):
    _, path, _ = lean
    x = images(digits_splits, 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(path)
        c.sendall(b"HEAD /healthz HTTP/1.1\r\n\r\n")  # the head only: the next answer on the connection is intact
        head = c.recv(4096)
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n") and b"Content-Length: 12" in head
        c.sendall(b"POST /v1/infer HTTP/1.1\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % x.nbytes)  # fmt: skip
        assert c.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"  # asked for the body before it is sent
        c.sendall(x.tobytes())
        got = b""
        while b"}" not in got:
            got += c.recv(65536)
        assert status_and_doc(got)[0] == 200
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:  # one byte every 0.4 s: each recv is in time,
        c.connect(path)  # the request head never is (--idle-timeout 1)
        t0, closed = time.perf_counter(), False
        for ch in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"y" * 40:
            try:
                c.sendall(bytes([ch]))
            except OSError:
                closed = True
                break
            time.sleep(0.4)
            c.setblocking(False)
            try:
                closed = c.recv(100) == b""
            except BlockingIOError:
                pass
            c.setblocking(True)
            if closed:
                break
        assert closed and time.perf_counter() - t0 < 4


def test_lean_uds_on_a_file_is_refused_and_a_stale_socket_replaced(bundle):
    d = tempfile.mkdtemp(prefix="es", dir="/tmp")
    try:
        path = os.path.join(d, "file")
        with open(path, "w") as f:
            f.write("keep me")
        code, err = serve_once(bundle, "--lean-uds", path)
        assert code == 2 and len(err) == 1 and "--lean-uds" in err[0] and "is not a socket" in err[0], err
        assert open(path).read() == "keep me"
        stale = os.path.join(d, "s.sock")
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(stale)  # a dead daemon's socket: nothing accepts on it
        dead.close()
        s = Server(bundle, "--lean-uds", stale)
        try:
            assert status_and_doc(raw(stale, b"GET /v2/health/ready HTTP/1.1\r\nConnection: close\r\n\r\n"))[0] == 200
        finally:
            assert s.stop() == 0
    finally:
        shutil.rmtree(d)
