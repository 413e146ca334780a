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
from edgeskip.runtime.preprocess import BadRequest, finite, numbers, parse_json

HEADER = "Inference-Header-Content-Length"
VERSION = "1"
MAX_BATCH = 64
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
        return web.json_response({
            "name": self.name, "versions": [VERSION], "platform": f"edgeskip_{ex.backend}",
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, *self.chw]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(self.classes)]}],
            "parameters": {"kind": ex.manifest.kind, "num_configs": len(ex.configs), "num_gates": ex.num_gates,
                           "class_names": list(self.classes)},
        })

    def _parse(self, body: bytes, header_length: str | None) -> tuple[dict, np.ndarray, dict[str, dict]]:
        """(request JSON, images [N, C, H, W], requested outputs by name); raises BadRequest."""
        if header_length is not None:
            try:
                n = int(header_length)
            except ValueError:
                raise BadRequest(f"{HEADER} must be an integer, got {header_length!r}") from None
            if not 0 < n <= len(body):
                raise BadRequest(f"{HEADER} {n} does not fit a body of {len(body)} bytes")
            head, binary = body[:n], memoryview(body)[n:]
        else:
            head, binary = body, memoryview(b"")
        doc = parse_json(head)
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
            raise BadRequest("inference request must be an object with an 'inputs' list")
        if len(doc["inputs"]) != 1 or not isinstance(doc["inputs"][0], dict):
            raise BadRequest("this model takes exactly one input, 'image'")
        inp = doc["inputs"][0]
        if inp.get("name") != "image":
            raise BadRequest(f"unknown input {inp.get('name')!r}; this model's input is 'image'")
        if inp.get("datatype") != "FP32":
            raise BadRequest(f"input 'image' must be FP32, got {inp.get('datatype')!r}")
        shape = inp.get("shape")
        c, h, w = self.chw
        if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape) \
                or tuple(shape[-3:]) != (c, h, w) or len(shape) not in (3, 4):
            raise BadRequest(f"input 'image' must have shape [N, {c}, {h}, {w}], got {shape}")
        batch = 1 if len(shape) == 3 else shape[0]
        if not 1 <= batch <= MAX_BATCH:
            raise BadRequest(f"batch size must be in 1..{MAX_BATCH}, got {batch}")
        want = batch * c * h * w
        params = inp.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest("input parameters must be an object")
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if size != want * 4 or len(binary) != size:
                raise BadRequest(f"binary data for 'image' must be {want * 4} bytes (FP32 {shape}), "
                                 f"declared {size}, received {len(binary)}")
            x = finite(np.frombuffer(binary, dtype="<f4").astype(np.float32).reshape(batch, c, h, w), "input 'image'")
        else:
            if len(binary):
                raise BadRequest("binary data follows the header but no input declares binary_data_size")
            x = numbers(inp.get("data"), (batch, c, h, w), "input 'image' data")
        outputs: dict[str, dict] = {}
        binary_default = bool((doc.get("parameters") or {}).get("binary_data_output", False))
        for o in doc.get("outputs") or [{"name": "logits"}]:
            if not isinstance(o, dict) or o.get("name") != "logits":
                raise BadRequest(f"unknown output {o.get('name') if isinstance(o, dict) else o!r}; "
                                 "this model's output is 'logits'")
            p = o.get("parameters") or {}
            k = p.get("classification", 0)
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(self.classes):
                raise BadRequest(f"classification must be an integer in 0..{len(self.classes)}, got {k!r}")
            outputs["logits"] = {"binary": bool(p.get("binary_data", binary_default)), "classification": k}
        return doc, x, outputs

    async def infer(self, request: web.Request) -> web.Response:
        parsed: dict[str, Any] = {}

        def prepare() -> tuple[np.ndarray, int | None, Any]:  # on the worker thread, after admission
            doc, x, outputs = self._parse(body, request.headers.get(HEADER))
            params = doc.get("parameters") or {}
            if not isinstance(params, dict):
                raise BadRequest("request parameters must be an object")
            config, skip = self.service.pinned(params.get("config"), params.get("skip"))
            parsed.update(doc=doc, outputs=outputs)
            return x, config, skip

        try:
            self._check_model(request)
            body = await self.service.read_body(request)
            out = await self.service.submit(prepare)
        except BadRequest as e:
            self.service.count_bad(e.status)
            return _error(e)
        except Exception as e:  # noqa: BLE001 - answered and counted, never a traceback page
            return self.service.internal_error(e)
        if out.dropped:
            why = {"busy": "the executor was busy", "queue_full": "the queue was full",
                   "deadline": "it could not finish within the deadline"}[out.reason or "busy"]
            return web.json_response({"error": f"dropped ({out.reason}): {why}; now at config {out.config}"},
                                     status=503)
        doc, outputs = parsed["doc"], parsed["outputs"]
        logits = np.ascontiguousarray(out.logits, dtype=np.float32)
        head: dict[str, Any] = {"model_name": self.name, "model_version": VERSION, "outputs": [], "parameters": {
            "config": out.config, "skipped_blocks": out.skipped, "latency_s": out.latency_s}}
        if "id" in doc:
            head["id"] = doc["id"]
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
        return web.Response(body=b"".join([text, *blobs]), content_type="application/octet-stream",
                            headers={HEADER: str(len(text))})
