"""JSON answers of the daemon: exactly ``application/json`` (no charset parameter; KServe's REST client reads an
error body only under that exact media type), and JSON bodies for the router's own 404/405 answers."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as plain data, so that aiohttp's handlers and the lean listener
    (:mod:`edgeskip.runtime.lean`) send the same bytes; ``headers`` include ``Content-Type``."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers)


def json_answer(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    """``obj`` as a JSON body with ``Content-Type: application/json``."""
    return Answer(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``obj`` as a JSON body with ``Content-Type: application/json``."""
    return json_answer(obj, status, headers).response()


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The router's 404 (no such route) and 405 (wrong method) as one-line JSON errors, ``Allow`` kept."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return json_response({"error": f"no route {request.path[:80]!r}"}, status=404)
    except web.HTTPMethodNotAllowed as e:
        return not_allowed(request.method, request.path, ", ".join(sorted(e.allowed_methods))).response()


def not_allowed(method: str, path: str, allowed: str) -> Answer:
    """The JSON 405 of every listener: what was asked, where, and the ``Allow``ed methods."""
    return json_answer(
        {"error": f"method {method[:20]} not allowed on {path[:80]!r}; allowed: {allowed}"},
        status=405,
        headers={"Allow": allowed},
    )
