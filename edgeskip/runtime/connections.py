"""What the daemon does per connection, below the request handlers (aiohttp has no hook for these):

- a cap on open connections: beyond ``max_connections`` a new connection gets a canned 503 and is closed at
  once (nothing read, no request handler made);
- an idle timeout: a connection without a complete request header ``idle_timeout`` seconds after it opened
  or after its last response (idle, or trickling a header byte by byte) is closed: aiohttp's keep-alive
  timer between requests, and a timer of ours for the first request (older aiohttp releases set none);
- malformed HTTP answered with a one-line JSON error that echoes nothing, logged in one line, counted;
- pipelined requests: those before a malformed one are answered (aiohttp's parser drops every request of a
  received chunk once any part of it is malformed, so chunks are fed up to each header's end).

The aiohttp internals used here (``RequestHandler``, ``Server``'s handler arguments, ``BaseSite``) are
pinned by ``tests/runtime/test_connections.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from edgeskip.runtime.responses import json_response

log = logging.getLogger("edgeskip.serve")

MAX_CONNECTIONS = 256
IDLE_TIMEOUT = 15.0  # seconds


def canned(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, with a one-line JSON error body."""
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nServer: edgeskip\r\n\r\n"
    ).encode() + body


TOO_MANY = canned(503, "Service Unavailable", "too many open connections; retry later")


class Refuse(asyncio.Protocol):
    """A connection over the cap: the canned 503, then closed (whatever the client sent is not read)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(TOO_MANY)  # type: ignore[attr-defined]
        transport.close()


class Guard:
    """Counts open connections and makes each one's protocol: a :class:`GuardedHandler`, or :class:`Refuse`
    over the cap. ``count(status)`` is told of every refused connection (503) and malformed request (400)."""

    def __init__(
        self,
        max_connections: int = MAX_CONNECTIONS,
        count: Callable[[int], None] = lambda status: None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.max_connections, self.count, self.idle_timeout = max_connections, count, idle_timeout
        self.open = 0

    def protocol(self, server: web.Server) -> asyncio.Protocol:
        if self.open >= self.max_connections:
            self.count(503)
            return Refuse()
        return GuardedHandler(server, self, loop=server._loop, **server._kwargs)  # as Server.__call__ makes them


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler, counted against the cap, with one-line error pages and pipelining kept
    up to a malformed request."""

    def __init__(self, manager: web.Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._counted = False
        self._first_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.open += 1
        self._counted = True
        super().connection_made(transport)
        self._first_deadline = asyncio.get_running_loop().call_later(self._guard.idle_timeout, self._first_timeout)

    def _first_timeout(self) -> None:
        """No complete request header since the connection opened: close it."""
        self._first_deadline = None
        if self._request_count == 0 and not self._force_close:
            log.debug("connection closed: no request header within %g s", self._guard.idle_timeout)
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._first_deadline is not None:
            self._first_deadline.cancel()
            self._first_deadline = None
        if self._counted:
            self._counted = False
            self._guard.open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not data or self._payload_parser is not None or self._upgraded or self._force_close or self._close:
            super().data_received(data)  # b"": aiohttp asks its parser to go on with what it buffered while paused
            return
        start = 0
        while start < len(data):  # feed up to the end of each request header, so the parser emits what precedes
            end = data.find(b"\r\n\r\n", start)  # a malformed request before it fails on it
            end = len(data) if end < 0 else end + 4
            before = len(self._messages)
            super().data_received(data[start:end] if start or end < len(data) else data)
            if self._request_count and self._first_deadline is not None:
                self._first_deadline.cancel()
                self._first_deadline = None
            if self._force_close or self._close or self._malformed(before):
                return
            start = end

    def _malformed(self, before: int) -> bool:
        """Did the last feed end in a parse error (aiohttp queues an error message for it)?"""
        return len(self._messages) > before and type(self._messages[-1][0]).__name__ == "_ErrInfo"

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """One-line JSON that echoes nothing of the request, one log line, counted (400s as bad requests)."""
        if status >= 500:
            log.error("internal error in the HTTP layer: %s", type(exc).__name__)
        else:
            log.info("malformed HTTP request from %s: %s", request.remote, type(exc).__name__)
        self._guard.count(status)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error page")
        text = "malformed HTTP request" if status < 500 else "internal error (counted in /v1/status and /metrics)"
        resp = json_response({"error": text}, status=status)
        resp.headers["Server"] = "edgeskip"
        resp.force_close()
        return resp


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections go through ``guard`` (``runner.addresses`` reports its port)."""

    __slots__ = ("_host", "_port", "_guard")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: Guard, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self._guard.protocol(server), self._host, self._port, backlog=self._backlog, reuse_address=True
        )


def claim_socket_path(path: str) -> None:
    """Make ``path`` free for a new Unix-domain socket: a stale socket (nothing accepts on it: a dead
    daemon's) is removed; a live one, or anything that is not a socket, is an OSError with the reason."""
    import os
    import socket
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: its daemon is gone
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by a running server")


class GuardedUnixSite(web.BaseSite):
    """A Unix-domain-socket listener whose connections go through ``guard``; the socket file is claimed on
    start (:func:`claim_socket_path`) and removed on stop."""

    __slots__ = ("_path", "_guard", "_bound")

    def __init__(self, runner: web.BaseRunner, path: str, guard: Guard, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._path, self._guard, self._bound = path, guard, False

    @property
    def name(self) -> str:
        return f"http://unix:{self._path}:"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        claim_socket_path(self._path)
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: self._guard.protocol(server), self._path, backlog=self._backlog
        )
        self._bound = True

    async def stop(self) -> None:
        import os

        await super().stop()
        if self._bound:  # only the socket this site made: a refused path is left as it was
            self._bound = False
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
