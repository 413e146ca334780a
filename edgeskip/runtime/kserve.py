"""The Open Inference Protocol (KServe v2, as served by Triton, KServe and Seldon) over the daemon's service.

Routes (``{model}`` is the bundle folder's name unless ``--model-name`` says otherwise; version ``1``)::

    GET  /v2[/]                              server metadata (extensions below)
    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/{model}[/versions/1]     inputs/outputs, datatypes, shapes
    GET  /v2/models/{model}[/versions/1]/ready
    POST /v2/models/{model}[/versions/1]/infer
    GET  /v2/models/{model}[/versions/1]/config   Triton's model configuration extension
    GET  /v2/models[/{model}[/versions/1]]/stats  Triton's statistics extension (counts, cumulative ns)
    POST /v2/repository/index                Triton's model repository extension (index; one model, READY)
    POST /v2/repository/models/{model}/load|unload   400: a daemon serves the one bundle it started with

Triton's tools (``perf_analyzer``, ``tritonclient``'s ``get_model_config``/``get_inference_statistics``/
``get_model_repository_index``) read these. Every error is ``{"error": "..."}`` as ``application/json``.

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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from edgeskip import __version__
from edgeskip.runtime.preprocess import KSERVE_HEADER as HEADER
from edgeskip.runtime.preprocess import MAX_BATCH, BadRequest, parse_json
from edgeskip.runtime.responses import Answer, json_answer, json_response
from edgeskip.runtime.workers import Job

VERSION = "1"
EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "statistics",
    "model_repository",
    "system_shared_memory",
]


class NotFound(BadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=404)


def _error(e: BadRequest) -> web.Response:
    return json_response({"error": str(e)}, status=e.status)


def _bytes_tensor(items: list[str]) -> bytes:
    """BYTES elements as the binary tensor extension lays them out: 4-byte little-endian length, then bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in items))


@dataclass(frozen=True)
class OutputTensor:
    """One requested output: raw little-endian bytes (binary data, gRPC) and the JSON ``data`` form."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes
    data: list
    binary: bool


def output_tensors(logits: np.ndarray, outputs: list[dict], classes: Sequence[str]) -> list[OutputTensor]:
    """The requested outputs of one answer, in request order: ``logits`` FP32, or with ``classification`` k the
    BYTES tensor ``[N, k]`` of ``"score:index:label"`` (softmax scores)."""
    got = []
    for want in outputs:
        k = want["classification"]
        if k:
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            top = np.argsort(-p, axis=1)[:, :k]
            items = [f"{p[i, j]:.6f}:{j}:{classes[j]}" for i in range(len(p)) for j in top[i]]
            got.append(OutputTensor(want["name"], "BYTES", [len(p), k], _bytes_tensor(items), items, want["binary"]))
        else:
            raw, data = logits.astype("<f4").tobytes(), logits.ravel().tolist()
            got.append(OutputTensor(want["name"], "FP32", list(logits.shape), raw, data, want["binary"]))
    return got


def check_model(model: str, version: str | None, served: str) -> None:
    """NotFound unless ``model`` (and ``version``, where given: None or "" means any) is the one served."""
    if model != served:
        raise NotFound(f"unknown model {model!r}; this server has {served!r}")
    if version and version != VERSION:
        raise NotFound(f"unknown version {version!r} of model {served!r}; it has version {VERSION}")


def drop_message(reason: str | None, config: int | None) -> str:
    """The one-line error of a dropped request (HTTP 503, gRPC UNAVAILABLE)."""
    why = {
        "busy": "the executor was busy",
        "queue_full": "the queue was full",
        "deadline": "it could not finish within the deadline",
    }[reason or "busy"]
    return f"dropped ({reason}): {why}; now at config {config}"


def model_config(name: str, service: Any) -> dict:
    """The model as Triton's model configuration extension describes it (batch dimension outside ``dims``)."""
    ex = service.executor
    return {
        "name": name,
        "platform": f"edgeskip_{ex.backend}",
        "backend": "edgeskip",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": MAX_BATCH,
        "input": [{"name": "image", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": list(ex.input_shape)}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [len(ex.manifest.class_names)]}],
        "instance_group": [{"name": name, "kind": "KIND_CPU", "count": 1}],
        "parameters": {
            "num_configs": {"string_value": str(len(ex.configs))},
            "num_gates": {"string_value": str(ex.num_gates)},
            "queue_depth": {"string_value": str(service.dispatcher.queue_depth)},
        },
    }


class KServeV2:
    """The v2 handlers of one service serving one model."""

    def __init__(self, service: Any, model_name: str) -> None:
        self.service, self.name = service, model_name
        m = service.executor.manifest
        self.chw = m.input.chw
        self.classes = m.class_names

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v2", self.server_metadata)
        router.add_get("/v2/", self.server_metadata)
        router.add_get("/v2/health/live", self.live)
        router.add_get("/v2/health/ready", self.ready)
        router.add_get("/v2/models/stats", self.all_stats)
        router.add_post("/v2/repository/index", self.repository_index)
        router.add_post("/v2/repository/models/{model}/{action:load|unload}", self.load_unload)
        shm = "/v2/systemsharedmemory"
        router.add_get(shm + "/status", self.shm_status)
        router.add_get(shm + "/region/{region}/status", self.shm_status)
        router.add_post(shm + "/region/{region}/register", self.shm_register)
        router.add_post(shm + "/unregister", self.shm_unregister)
        router.add_post(shm + "/region/{region}/unregister", self.shm_unregister)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            router.add_get(base, self.model_metadata)
            router.add_get(base + "/ready", self.model_ready)
            router.add_post(base + "/infer", self.infer)
            router.add_get(base + "/config", self.model_config)
            router.add_get(base + "/stats", self.model_stats)

    def _check_model(self, request: web.Request) -> None:
        check_model(request.match_info["model"], request.match_info.get("version"), self.name)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": "edgeskip", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        return json_response({"ready": True})

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self._check_model(request)
        except BadRequest as e:
            return _error(e)
        return json_response({"name": self.name, "ready": True})

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            self._check_model(request)
        except BadRequest as e:
            return _error(e)
        ex = self.service.executor
        return json_response(
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

    async def model_config(self, request: web.Request) -> web.Response:
        """The model as Triton's model configuration describes it (batch dimension outside ``dims``)."""
        try:
            self._check_model(request)
        except BadRequest as e:
            return _error(e)
        return json_response(model_config(self.name, self.service))

    async def model_stats(self, request: web.Request) -> web.Response:
        try:
            self._check_model(request)
        except BadRequest as e:
            return _error(e)
        return json_response({"model_stats": [self.service.stats.as_triton(self.name, VERSION)]})

    async def all_stats(self, request: web.Request) -> web.Response:
        return json_response({"model_stats": [self.service.stats.as_triton(self.name, VERSION)]})

    async def repository_index(self, request: web.Request) -> web.Response:
        return json_response([{"name": self.name, "version": VERSION, "state": "READY"}])

    async def load_unload(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        return _error(BadRequest(f"cannot {action} models: this daemon serves the one bundle it started with"))

    async def shm_status(self, request: web.Request) -> web.Response:
        try:
            return json_response(self.service.regions.status(request.match_info.get("region")))
        except BadRequest as e:
            return _error(e)

    async def shm_register(self, request: web.Request) -> web.Response:
        try:
            doc = parse_json(await self.service.read_body(request))
            if not isinstance(doc, dict):
                raise BadRequest("register takes an object {key, offset, byte_size}")
            self.service.regions.register(
                request.match_info["region"], doc.get("key"), doc.get("offset", 0), doc.get("byte_size")
            )
        except BadRequest as e:
            self.service.count_bad(e.status)
            return _error(e)
        return json_response({})

    async def shm_unregister(self, request: web.Request) -> web.Response:
        self.service.regions.unregister(request.match_info.get("region"))
        return json_response({})

    async def infer(self, request: web.Request) -> web.Response:
        try:
            self._check_model(request)
            body = await self.service.read_body(request)
            out = await self.service.submit(self.job(body, request.headers.get(HEADER)))
        except BadRequest as e:
            self.service.count_bad(e.status)
            return _error(e)
        except Exception as e:  # noqa: BLE001 - answered and counted, never a traceback page
            return self.service.internal_error(e)
        return self.answer(out).response()

    def job(self, body: bytes, header_length: str | None) -> Job:
        """An inference request as the service's worker decodes it (the binary extension's header length, if any)."""
        return Job("kserve", body, {"header_length": header_length, "regions": self.service.regions})

    def answer(self, out: Any) -> Answer:
        """The answer to an admitted request's outcome: 503 for a drop, the outputs (JSON, binary or written to
        shared memory) otherwise; an output region unregistered meanwhile is a 4xx."""
        if out.dropped:
            return json_answer({"error": drop_message(out.reason, out.config)}, status=503)
        t0 = time.perf_counter()
        outputs: list[dict] = out.extra["outputs"]
        logits = np.ascontiguousarray(out.logits, dtype=np.float32)
        params = {"config": out.config, "skipped_blocks": out.skipped, "latency_s": out.latency_s}
        head: dict[str, Any] = {
            "model_name": self.name,
            "model_version": VERSION,
            "outputs": [],
            # parameters are strings, numbers or booleans: a pinned skip array off the front has no config
            "parameters": {k: v for k, v in params.items() if v is not None},
        }
        if "id" in out.extra:
            head["id"] = out.extra["id"]
        blobs: list[bytes] = []
        for tensor, want in zip(output_tensors(logits, outputs, self.classes), outputs):
            entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
            if want["shm"]:
                region, offset, size = want["shm"]
                try:
                    self.service.regions.write(region, offset, size, tensor.raw, f"output {tensor.name!r}")
                except BadRequest as e:  # unregistered meanwhile, or a classification larger than its span
                    self.service.count_bad(e.status)
                    return json_answer({"error": str(e)}, status=e.status)
                entry["parameters"] = {"shared_memory_region": region, "shared_memory_byte_size": len(tensor.raw)}
            elif tensor.binary:
                entry["parameters"] = {"binary_data_size": len(tensor.raw)}
                blobs.append(tensor.raw)
            else:
                entry["data"] = tensor.data
            head["outputs"].append(entry)
        text = json.dumps(head).encode()
        if not blobs:
            answer = Answer(200, text, {"Content-Type": "application/json"})
        else:
            answer = Answer(
                200, b"".join([text, *blobs]), {"Content-Type": "application/octet-stream", HEADER: str(len(text))}
            )
        self.service.output_built(time.perf_counter() - t0)
        return answer
