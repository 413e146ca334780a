"""The Open Inference Protocol (KServe v2, as served by Triton, KServe and Seldon) over the daemon's service.

Routes (``{model}`` is the bundle folder's name unless ``--model-name`` says otherwise; version ``1``)::

    GET  /v2                                 server metadata (extensions: binary_tensor_data, classification)
    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/{model}[/versions/1]     inputs/outputs, datatypes, shapes
    GET  /v2/models/{model}[/versions/1]/ready
    POST /v2/models/{model}[/versions/1]/infer

Inference: one input ``image``, FP32 ``[N, C, H, W]`` (``[C, H, W]`` is taken as N = 1), in JSON ``data`` or as
binary tensor data (``Inference-Header-Content-Length``). Outputs: ``logits`` FP32 ``[N, classes]``; with the
classification extension (``"parameters": {"classification": k}`` on the requested output) a BYTES tensor
``[N, k]`` of ``"score:index:label"``, scores being softmax probabilities. Outputs come back as binary data when
the requested output (or the request, ``binary_data_output``) asks for it.

Admission is as on ``/v1/infer`` (policy and queue): a request dropped (busy, queue full, or past its deadline) is answered
with 503 and ``{"error": "dropped (REASON): ..."}``. Optional request parameters pin what runs: ``config`` (a Pareto
config index) or ``skip`` (a skip array, ``"1101..."`` or a list of 0/1; one outside the front runs through the
gated graph). Pinned requests still count as load for the policy. Response parameters report ``config``,
``skipped_blocks`` and ``latency_s``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from aiohttp import web

from edgeskip import __version__
from edgeskip.runtime.preprocess import KSERVE_HEADER as HEADER
from edgeskip.runtime.preprocess import BadRequest
from edgeskip.runtime.workers import Job

VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "classification"]


class NotFound(BadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=404)


def _error(e: BadRequest) -> web.Response:
    return web.json_response({"error": str(e)}, status=e.status)


def _bytes_tensor(items: list[str]) -> bytes:
    """BYTES elements as the binary tensor extension lays them out: 4-byte little-endian length, then bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in items))


class KServeV2:
    """The v2 handlers of one service serving one model."""

    def __init__(self, service: Any, model_name: str) -> None:
        self.service, self.name = service, model_name
        m = service.executor.manifest
        self.chw = m.input.chw
        self.classes = m.class_names

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v2", self.server_metadata)
        router.add_get("/v2/health/live", self.live)
        router.add_get("/v2/health/ready", self.ready)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            router.add_get(base, self.model_metadata)
            router.add_get(base + "/ready", self.model_ready)
            router.add_post(base + "/infer", self.infer)

    def _check_model(self, request: web.Request) -> None:
        model, version = request.match_info["model"], request.match_info.get("version")
        if model != self.name:
            raise NotFound(f"unknown model {model!r}; this server has {self.name!r}")
        if version is not None and version != VERSION:
            raise NotFound(f"unknown version {version!r} of model {self.name!r}; it has version {VERSION}")

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "edgeskip", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self._check_model(request)
        except BadRequest as e:
            return _error(e)
        return web.json_response({"name": self.name, "ready": True})

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            self._check_model(request)
        except BadRequest as e:
            return _error(e)
        ex = self.service.executor
        return web.json_response(
            {
                "name": self.name,
                "versions": [VERSION],
                "platform": f"edgeskip_{ex.backend}",
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, *self.chw]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(self.classes)]}],
                "parameters": {
                    "kind": ex.manifest.kind,
                    "num_configs": len(ex.configs),
                    "num_gates": ex.num_gates,
                    "class_names": list(self.classes),
                },
            }
        )

    async def infer(self, request: web.Request) -> web.Response:
        try:
            self._check_model(request)
            body = await self.service.read_body(request)
            out = await self.service.submit(Job("kserve", body, {"header_length": request.headers.get(HEADER)}))
        except BadRequest as e:
            self.service.count_bad(e.status)
            return _error(e)
        except Exception as e:  # noqa: BLE001 - answered and counted, never a traceback page
            return self.service.internal_error(e)
        if out.dropped:
            why = {
                "busy": "the executor was busy",
                "queue_full": "the queue was full",
                "deadline": "it could not finish within the deadline",
            }[out.reason or "busy"]
            return web.json_response(
                {"error": f"dropped ({out.reason}): {why}; now at config {out.config}"}, status=503
            )
        outputs: dict[str, dict] = out.extra["outputs"]  # type: ignore[index]
        logits = np.ascontiguousarray(out.logits, dtype=np.float32)
        head: dict[str, Any] = {
            "model_name": self.name,
            "model_version": VERSION,
            "outputs": [],
            "parameters": {"config": out.config, "skipped_blocks": out.skipped, "latency_s": out.latency_s},
        }
        if "id" in out.extra:  # type: ignore[operator]
            head["id"] = out.extra["id"]  # type: ignore[index]
        blobs: list[bytes] = []
        for name, want in outputs.items():
            if want["classification"]:
                k = want["classification"]
                p = np.exp(logits - logits.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                top = np.argsort(-p, axis=1)[:, :k]
                items = [f"{p[i, j]:.6f}:{j}:{self.classes[j]}" for i in range(len(p)) for j in top[i]]
                entry: dict[str, Any] = {"name": name, "datatype": "BYTES", "shape": [len(p), k]}
                raw, data = _bytes_tensor(items), items
            else:
                entry = {"name": name, "datatype": "FP32", "shape": list(logits.shape)}
                raw, data = logits.astype("<f4").tobytes(), logits.ravel().tolist()
            if want["binary"]:
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = data
            head["outputs"].append(entry)
        text = json.dumps(head).encode()
        if not blobs:
            return web.Response(body=text, content_type="application/json")
        return web.Response(
            body=b"".join([text, *blobs]), content_type="application/octet-stream", headers={HEADER: str(len(text))}
        )
