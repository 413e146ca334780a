"""Connection-level defences of the daemon (edgeskip.runtime.connections), each reproduced on 127.0.0.1 and
bounded: a cap on open connections, an idle/slow-header timeout, malformed HTTP answered in one line that
echoes nothing, pipelined requests answered up to a malformed one."""

import json
import socket
import time

import numpy as np
import pytest
from daemon_process import Server


def port_of(server):
    return int(server.url.rsplit(":", 1)[1])


def body(server):
    shape = json.loads(server.call("/v2/models/bundle")[1])["inputs"][0]["shape"][1:]
    return np.zeros(shape, np.float32).tobytes()


def request(payload, path="/v1/infer", ctype="application/octet-stream"):
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def read_all(sock, limit=5.0):
    """Everything the daemon sends until it closes the connection (at most ``limit`` seconds)."""
    sock.settimeout(limit)
    out = b""
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline and (chunk := sock.recv(65536)):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def closed_within(sock, seconds):
    """Seconds until the daemon closed ``sock`` (None if it stayed open ``seconds``)."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def capped(bundle):
    s = Server(bundle, "--max-connections", "4", "--idle-timeout", "1")
    yield s
    s.kill()


def test_connections_over_the_cap_get_503_and_are_closed(capped):
    port = port_of(capped)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.3)  # accepted and counted
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(request(b"x"))
            reply = read_all(extra)
        head, _, text = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Connection: close" in head
        assert json.loads(text) == {"error": "too many open connections; retry later"}
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    status, out = capped.infer(body(capped))  # room again: served
    assert status == 200 and "top" in out
    counts = json.loads(capped.call("/v1/status")[1])["counts"]
    assert counts["refused"] >= 1


def test_idle_and_slow_header_connections_are_closed(capped):
    port = port_of(capped)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as quiet:
        took = closed_within(quiet, 4.0)
        assert took is not None and took < 3.0  # --idle-timeout 1 (aiohttp checks it on a coarse timer)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:  # slowloris: a header byte at a time
        slow.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n")
        t0, closed = time.monotonic(), False
        while time.monotonic() - t0 < 4.0:
            try:
                slow.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            slow.settimeout(0.01)
            try:
                if slow.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:  # closed with the trickled bytes unread: the kernel answers with a reset
                closed = True
                break
        assert closed and time.monotonic() - t0 < 3.5


def test_malformed_http_is_one_line_that_echoes_nothing(bundle):
    s = Server(bundle)
    try:
        secret = b"SECRET-" + b"A" * 20000
        for junk in (
            b"GET /" + secret + b" HTTP/1.1\x00\r\n\r\n",
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: abc" + secret + b"\r\n\r\n",
            b"\x16\x03\x01" + secret + b"\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", port_of(s)), timeout=5) as c:
                c.sendall(junk)
                reply = read_all(c)
            head, _, text = reply.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == b"400", reply[:200]  # HTTP/1.0 where the request line is unreadable
            assert json.loads(text) == {"error": "malformed HTTP request"} and b"SECRET" not in reply
            assert b"Server: edgeskip\r\n" in head
        status, out = s.infer(body(s))
        assert status == 200
        assert json.loads(s.call("/v1/status")[1])["counts"]["bad_request"] == 3
    finally:
        s.stop()
    err = s.proc.stderr.read()
    assert "Traceback" not in err and "SECRET" not in err
    assert sum("malformed HTTP request" in line for line in err.splitlines()) == 3, err


def test_pipelined_requests_are_answered_up_to_a_malformed_one(capped):
    good = request(body(capped))
    with socket.create_connection(("127.0.0.1", port_of(capped)), timeout=5) as c:
        c.sendall(good + b"GARBAGE\x00 / HTTP/1.1\r\n\r\n" + good)
        reply = read_all(c)
    first, _, rest = reply.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200"), reply[:300]
    assert b" 400 Bad Request\r\n" in rest and rest.count(b" 200 OK") == 0  # the third is never parsed: closed
    # two good ones pipelined in one packet: both answered, in order
    with socket.create_connection(("127.0.0.1", port_of(capped)), timeout=5) as c:
        c.sendall(good + good[:-1].replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1) + good[-1:])
        reply = read_all(c)
    assert reply.count(b"HTTP/1.1 200") == 2, reply[:300]


def test_large_bodies_arrive_whole_through_flow_control(capped):
    """A body big enough for aiohttp to pause reading (it resumes by re-feeding its parser with b"") is read
    whole: answered on its content, not with the body timeout. Headers and body sent apart, as clients do."""
    import http.client

    for n in (300_000, 3_000_000):
        c = http.client.HTTPConnection("127.0.0.1", port_of(capped), timeout=15)
        t0 = time.monotonic()
        c.request("POST", "/v1/infer", b'{"data": [' + b"1," * n + b"1]}", {"Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read()
        c.close()
        assert r.status == 400 and b"more than" in text, (r.status, text[:200])
        assert time.monotonic() - t0 < 5.0
