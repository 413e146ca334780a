"""The lean listener: inference over HTTP/1.1, answered on the connection's own thread (issue #31).

    edgeskip serve BUNDLE --lean-uds /run/edgeskip.sock      (and/or --lean-port 8001)

The main listener (aiohttp) hands every request from its event loop to the inference thread and back. That is two
thread wake-ups plus aiohttp's own machinery: 0.5-0.7 ms per request on a 2-core board-class CPU, more than a small
model's inference (bench/README section 15). Here every connection has its own thread, blocked in ``recv`` until
its next request arrives:
- the request is admitted by the service's one Dispatcher (policy, queue, drops, pinning);
- once admitted it runs on that thread, as the in-process API's requests do (``InferenceService.submit_here``);
- the answer is written from the same thread.
A request is seen the moment it arrives, since its connection's thread is waiting for it, so it is dropped or
queued exactly as on the main listener. The main listener's inline mode (``--inline-max-ms``) cannot promise that.

It serves inference only, with the main listener's request and answer formats (one implementation of each:
``KServeV2.job``/``answer``, ``InferenceService.v1_job``/``v1_answer``):
- ``POST /v2/models/{model}[/versions/{version}]/infer``: KServe v2 with JSON or binary tensors, or system
  shared-memory regions registered on the main listener;
- ``POST /v1/infer[?config=K]``;
- ``GET /v2/health/live``, ``/v2/health/ready`` and ``/healthz``.
Anything else is a JSON 404 that points to the main listener, and a wrong method a JSON 405 (not counted, as on
the main listener); a malformed request is counted as the main listener counts one. The rules:
- HTTP/1.1 connections stay alive (``Connection: close`` is honoured);
- bodies need ``Content-Length`` (a chunked body is 411) and at most ``max_body`` bytes (413);
- a request head may have at most :data:`HEAD_LIMIT` bytes (431);
- a request head must be in within ``idle_timeout`` seconds of the connection or of the previous answer, and its
  body within the service's ``body_timeout`` (a watchdog closes a connection that trickles);
- request bodies being received count against the service's ``max_inflight_bytes``, with the main listener's
  (``InferenceService.reserve_body``: 503 beyond);
- ``Expect: 100-continue`` is answered; HEAD gets the head only;
- at most ``max_connections`` connections at once: one more is answered 503 and closed.
"""

from __future__ import annotations

import http
import logging
import os
import re
import socket
import threading
import time
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote

from edgeskip.runtime.kserve import HEADER, KServeV2, check_model
from edgeskip.runtime.preprocess import BadRequest, check_content_type, check_encoding
from edgeskip.runtime.responses import Answer, json_answer, not_allowed

HEAD_LIMIT = 16 * 1024  # request line and headers together
LINGERING = 8  # connections refused for the limit that are drained at once before they are closed
INFER = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
HEALTH = {"/v2/health/live": {"live": True}, "/v2/health/ready": {"ready": True}, "/healthz": {"ok": True}}
log = logging.getLogger("edgeskip.lean")


class _Request(NamedTuple):
    method: str
    target: str
    headers: dict[str, str]  # by lower-case name
    body: bytes
    keep: bool  # keep the connection alive after the answer
    http10: bool
    reserved: int  # body bytes reserved among those in flight (InferenceService.reserve_body)


class _Refused(Exception):
    """A request the connection cannot go on after (malformed head, body refused unread): answer, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LeanListener:
    """The lean listener of one service: sockets added with :meth:`listen_tcp` / :meth:`listen_unix`, stopped
    with :meth:`close` (no new connection; open ones are shut, a request in flight finishes its inference)."""

    def __init__(
        self, service: Any, kserve: KServeV2, max_body: int, max_connections: int, idle_timeout: float
    ) -> None:
        self.service, self.kserve = service, kserve
        self.max_body, self.max_connections, self.idle_timeout = max_body, max_connections, idle_timeout
        self._sockets: list[socket.socket] = []
        self._paths: list[str] = []
        self._conns: dict[socket.socket, threading.Thread] = {}  # open connections and their threads
        self._threads: list[threading.Thread] = []  # the accept threads
        self._lock = threading.Lock()
        self._lingering = threading.BoundedSemaphore(LINGERING)
        self._deadline: dict[socket.socket, float] = {}  # connections reading a request, and by when it must be in
        self._closed = False
        self._watchdog = threading.Thread(target=self._watch, name="edgeskip-lean-watch", daemon=True)
        self._watchdog.start()

    def listen_tcp(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port. OSError if it cannot."""
        ls = socket.create_server((host, port), backlog=128)
        self._start(ls)
        return int(ls.getsockname()[1])

    def listen_unix(self, path: str) -> None:
        """Listen on the Unix-domain socket ``path`` (a stale socket of a dead daemon is replaced; anything else
        there, or a live server, is an OSError)."""
        from edgeskip.runtime.connections import claim_socket_path

        claim_socket_path(path)
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ls.bind(path)
            ls.listen(128)
        except OSError:
            ls.close()
            raise
        self._paths.append(path)
        self._start(ls)

    def _start(self, ls: socket.socket) -> None:
        self._sockets.append(ls)
        t = threading.Thread(target=self._accept, args=(ls,), name="edgeskip-lean-accept", daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        self._closed = True
        for ls in self._sockets:
            try:
                ls.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            ls.close()
        for path in self._paths:
            if os.path.exists(path):
                os.unlink(path)
        with self._lock:
            conns = dict(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)  # wakes a thread waiting for a request; one mid-inference finishes it
            except OSError:
                pass
        for t in [*self._threads, *conns.values(), self._watchdog]:
            t.join(timeout=5)

    def _accept(self, ls: socket.socket) -> None:
        while not self._closed:
            try:
                conn, _ = ls.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)  # a connection reset before it was accepted, or out of files: not a busy loop
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="edgeskip-lean", daemon=True)
            with self._lock:
                full = len(self._conns) >= self.max_connections
                if not full:
                    self._conns[conn] = t
            if full:
                self.service.count_status(503)
                _send(conn, json_answer({"error": "too many connections; try again later"}, status=503), False)
                self._close_softly(conn)
                continue
            t.start()

    def _close_softly(self, conn: socket.socket) -> None:
        """Close a refused connection after :func:`_linger`, on a thread of its own (at most :data:`LINGERING` at
        once; beyond that, at once), so that the accept loop goes on."""

        def run() -> None:
            try:
                _linger(conn)
            finally:
                conn.close()
                self._lingering.release()

        if not self._lingering.acquire(blocking=False):
            conn.close()
            return
        threading.Thread(target=run, name="edgeskip-lean-linger", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = None
        try:
            conn.settimeout(self.idle_timeout)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = conn.makefile("rb")
            while not self._closed:
                self._deadline[conn] = time.monotonic() + self.idle_timeout  # a whole request head within it
                try:
                    req = self._read(conn, reader)
                except _Refused as e:
                    self.service.count_status(e.status)
                    _send(conn, json_answer({"error": str(e)}, status=e.status), False)
                    _linger(conn)
                    return
                finally:
                    self._deadline.pop(conn, None)
                if req is None:
                    return  # the client closed, or was too slow (idle, or trickling a request)
                try:
                    answer = self.handle(req.method, req.target, req.headers, req.body)
                finally:
                    self.service.release_body(req.reserved)
                _send(conn, answer, req.keep, head_only=req.method == "HEAD", http10=req.http10)
                if not req.keep:
                    return
        except OSError:
            return  # reset, or too slow sending a request (the timeout)
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            if reader is not None:
                reader.close()
            conn.close()

    def _watch(self) -> None:
        """Shut connections whose request (head, or body) is not complete by its deadline: a per-``recv`` timeout
        alone lets a client trickle one byte per period for ever."""
        while not self._closed:
            time.sleep(0.25)
            now = time.monotonic()
            for conn, deadline in list(self._deadline.items()):
                if now > deadline:
                    self._deadline.pop(conn, None)
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def _read(self, conn: socket.socket, reader: Any) -> _Request | None:
        """One request from the connection, or None where the client closed or was too slow. Raises _Refused for
        a request to refuse and close. Its body is reserved among the bodies in flight of every listener
        (``InferenceService.reserve_body``) until the answer is built (the caller releases it)."""
        line = reader.readline(HEAD_LIMIT + 1)
        if line in (b"\r\n", b"\n"):  # one empty line before a request is allowed (RFC 9112, 2.2)
            line = reader.readline(HEAD_LIMIT + 1)
        if not line:
            return None
        size = len(line)
        if not line.endswith(b"\n"):
            if size > HEAD_LIMIT:
                raise _Refused(431, f"request line over {HEAD_LIMIT} bytes")
            return None  # the client closed mid-line
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            raise _Refused(400, "malformed request line; expected 'METHOD /path HTTP/1.1'")
        method, target, version = parts
        headers: dict[str, str] = {}
        while True:
            h = reader.readline(HEAD_LIMIT + 1)
            size += len(h)
            if size > HEAD_LIMIT:
                raise _Refused(431, f"request head over {HEAD_LIMIT} bytes")
            if not h.endswith(b"\n"):
                return None  # the client closed mid-head
            if h in (b"\r\n", b"\n"):
                break
            name, sep, value = h.decode("latin-1").partition(":")
            key = name.lower()
            if not sep or not name or name != name.strip() or not name.isascii():
                raise _Refused(400, "malformed header line")
            value = value.strip()
            if key == "content-length" and headers.get(key, value) != value:
                raise _Refused(400, "conflicting Content-Length headers")
            headers[key] = value
        if "transfer-encoding" in headers:
            raise _Refused(411, "send the body with Content-Length; chunked bodies are not accepted here")
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()) or len(length) > 15:
            raise _Refused(400, f"bad Content-Length {length[:20]!r}")
        n = int(length)
        if n > self.max_body:
            raise _Refused(413, f"body of {n} bytes is over the limit of {self.max_body}")
        try:
            reserved = self.service.reserve_body(n)
        except BadRequest as e:
            raise _Refused(e.status, str(e)) from None
        try:
            body_timeout = self.service.body_timeout or self.idle_timeout
            self._deadline[conn] = time.monotonic() + body_timeout  # the whole body within it
            if n and headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = reader.read(n)
            if len(body) < n:
                raise OSError("the client closed mid-body")
        except BaseException:
            self.service.release_body(reserved)
            raise
        options = headers.get("connection", "").lower()
        keep = "close" not in options if version == "HTTP/1.1" else "keep-alive" in options
        return _Request(method.upper(), target, headers, body, keep, version == "HTTP/1.0", reserved)

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        """The answer to one request (headers by lower-case name)."""
        path, _, query = target.partition("?")
        match = INFER.fullmatch(path)
        if match is None and path != "/v1/infer":
            if path in HEALTH and method in ("GET", "HEAD"):
                return json_answer(HEALTH[path])
            if path in HEALTH:
                return not_allowed(method, path, "GET, HEAD")
            return json_answer(
                {"error": f"no route {path[:80]!r} on the lean listener (inference only; the rest is on the main one)"},
                status=404,
            )
        if method != "POST":
            return not_allowed(method, path, "POST")
        try:
            check_encoding(headers.get("content-encoding"))
            if match is not None:
                version = match["version"]
                check_model(unquote(match["model"]), unquote(version) if version else None, self.kserve.name)
                out = self.service.submit_here(self.kserve.job(body, headers.get(HEADER.lower())))
                return self.kserve.answer(out)
            ctype = check_content_type(headers.get("content-type"))
            config = parse_qs(query).get("config", [None])[0]  # the first, as aiohttp's query.get
            return self.service.v1_answer(self.service.submit_here(self.service.v1_job(body, ctype, config)))
        except BadRequest as e:
            self.service.count_bad(e.status)
            return json_answer({"error": str(e)}, status=e.status)
        except Exception as e:  # noqa: BLE001 - answered and counted, never a traceback
            return self.service.internal_error_answer(e)


def _linger(conn: socket.socket, limit: int = 1 << 20, seconds: float = 1.0) -> None:
    """Close a connection whose request was refused unread without resetting it: stop writing, then read and drop
    what the client is still sending (at most ``limit`` bytes, ``seconds``), or the kernel would answer that data
    with a reset that can destroy the refusal before the client reads it."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(seconds)
        end, got = time.monotonic() + seconds, 0
        while got < limit and time.monotonic() < end:
            chunk = conn.recv(65536)
            if not chunk:
                return
            got += len(chunk)
    except OSError:
        pass


def _send(conn: socket.socket, answer: Answer, keep: bool, head_only: bool = False, http10: bool = False) -> None:
    """Write ``answer`` (``head_only``: the head of a HEAD request's answer, with its Content-Length); a kept-alive
    HTTP/1.0 connection is confirmed (``Connection: keep-alive``), a closing one announced."""
    try:
        reason = http.HTTPStatus(answer.status).phrase
    except ValueError:
        reason = ""
    head = [f"HTTP/1.1 {answer.status} {reason}", f"Content-Length: {len(answer.body)}", "Server: edgeskip"]
    head += [f"{k}: {v}" for k, v in answer.headers.items()]
    if not keep:
        head.append("Connection: close")
    elif http10:
        head.append("Connection: keep-alive")
    try:
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else answer.body))
    except OSError:
        pass  # the client went away; its connection is closed by the caller
