"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) on the daemon's event loop.

grpcio's asyncio server beside the HTTP one, over the same :class:`~edgeskip.runtime.server.InferenceService`:
the same admission, policy, queue, drops, metrics, statistics and pinning parameters as HTTP
(:mod:`edgeskip.runtime.kserve`). Imported only with ``serve --grpc-port`` (``pip install 'edgeskip[grpc]'``), so
the HTTP daemon's footprint does not change.

The messages are the ones ``tritonclient[grpc]`` ships, generated from Triton's ``grpc_service.proto``: KServe's
``grpc_predict_v2`` plus Triton's extensions (model configuration, statistics, repository index), which
``perf_analyzer -i grpc`` reads. Errors are the protocol's status codes with one line: INVALID_ARGUMENT (a bad
tensor or parameter), NOT_FOUND (an unknown model or version), UNAVAILABLE (a drop, its reason in the
message), INTERNAL (counted, nothing echoed).

Tensors: input ``image`` FP32 ``[N, C, H, W]`` (or ``[C, H, W]``) in ``raw_input_contents`` or
``contents.fp32_contents``; outputs in ``raw_output_contents`` (``logits`` FP32, or with the ``classification``
parameter a BYTES tensor of ``"score:index:label"``). Request parameters ``config`` (int64) and ``skip`` (string)
pin what runs; response parameters ``config`` (absent for a pinned skip array off the front),
``skipped_blocks`` and ``latency_s``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from edgeskip import __version__
from edgeskip.manifest import Manifest
from edgeskip.runtime.kserve import EXTENSIONS, VERSION, check_model, drop_message, model_config, output_tensors
from edgeskip.runtime.preprocess import BadRequest, check_image_input, finite, pin, requested_output, shm_input

log = logging.getLogger("edgeskip.serve")
STATUS = {
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.UNAVAILABLE,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def parameters(params: Any) -> dict[str, object]:
    """A protobuf ``map<string, InferParameter>`` as plain values (bool, int, float or str)."""
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(value, which)
    return out


class GrpcJob:
    """A ``ModelInferRequest`` as the worker runs it (:class:`edgeskip.runtime.workers.Prepared`): decoded on
    the inference thread, like an HTTP body."""

    def __init__(self, request: Any, regions: Any = None) -> None:
        self.request, self.regions = request, regions

    @property
    def inline_bytes(self) -> int | None:
        """The raw tensor bytes where the request carries them (see Job.inline_bytes), else None."""
        req = self.request
        if not req.raw_input_contents or any("shared_memory_region" in i.parameters for i in req.inputs):
            return None
        return sum(len(r) for r in req.raw_input_contents)

    def prepare(self, manifest: Manifest, max_pixels: int) -> tuple[np.ndarray, int | None, Any, dict]:
        req = self.request
        if len(req.inputs) != 1:
            raise BadRequest("this model takes exactly one input, 'image'")
        inp = req.inputs[0]
        batch = check_image_input(inp.name, inp.datatype, list(inp.shape), manifest)
        c, h, w = manifest.input.chw
        want = batch * c * h * w
        regions = self.regions
        from_shm = shm_input(parameters(inp.parameters), regions, want)
        if from_shm is not None:
            x = from_shm
        elif req.raw_input_contents:
            if len(req.raw_input_contents) != 1 or len(req.raw_input_contents[0]) != want * 4:
                got = sum(len(r) for r in req.raw_input_contents)
                raise BadRequest(f"raw data for 'image' must be {want * 4} bytes (FP32 {list(inp.shape)}), got {got}")
            x = np.frombuffer(req.raw_input_contents[0], dtype="<f4").astype(np.float32)
        else:
            data = inp.contents.fp32_contents
            if len(data) != want:
                raise BadRequest(f"input 'image' has {len(data)} fp32 values, shape {list(inp.shape)} needs {want}")
            x = np.asarray(data, dtype=np.float32)
        x = finite(x.reshape(batch, c, h, w), "input 'image'")
        params = parameters(req.parameters)
        config, skip = pin(manifest, params.get("config"), params.get("skip"))
        outputs = [
            requested_output(o.name, p.get("classification", 0), True, manifest, p, regions)
            for o, p in ((o, parameters(o.parameters)) for o in req.outputs)
        ] or [requested_output("logits", 0, True, manifest)]
        return x, config, skip, {"outputs": outputs}


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs of one service serving one model; the rest answer UNIMPLEMENTED."""

    def __init__(self, service: Any, model_name: str) -> None:
        self.service, self.name = service, model_name

    def _known(self, name: str, version: str) -> BadRequest | None:
        try:
            check_model(name, version, self.name)
        except BadRequest as e:
            return e
        return None

    async def _abort(self, context: Any, e: BadRequest) -> None:
        await context.abort(STATUS.get(e.status, grpc.StatusCode.INVALID_ARGUMENT), str(e))

    async def ServerLive(self, request, context):  # noqa: N802 - the protocol's method names
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=self._known(request.name, request.version) is None)

    async def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(name="edgeskip", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):  # noqa: N802
        bad = self._known(request.name, request.version)
        if bad:
            await self._abort(context, bad)
        ex = self.service.executor
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.name,
            versions=[VERSION],
            platform=f"edgeskip_{ex.backend}",
            inputs=[tensor(name="image", datatype="FP32", shape=[-1, *ex.input_shape])],
            outputs=[tensor(name="logits", datatype="FP32", shape=[-1, len(ex.manifest.class_names)])],
        )

    async def ModelConfig(self, request, context):  # noqa: N802
        bad = self._known(request.name, request.version)
        if bad:
            await self._abort(context, bad)
        config = json_format.ParseDict(model_config(self.name, self.service), mc.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):  # noqa: N802
        if request.name:
            bad = self._known(request.name, request.version)
            if bad:
                await self._abort(context, bad)
        stats = {"model_stats": [self.service.stats.as_triton(self.name, VERSION)]}
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):  # noqa: N802
        index = pb.RepositoryIndexResponse.ModelIndex(name=self.name, version=VERSION, state="READY")
        return pb.RepositoryIndexResponse(models=[index])

    async def RepositoryModelLoad(self, request, context):  # noqa: N802
        await self._abort(context, BadRequest("cannot load models: this daemon serves the one bundle it started with"))

    async def RepositoryModelUnload(self, request, context):  # noqa: N802
        await self._abort(
            context, BadRequest("cannot unload models: this daemon serves the one bundle it started with")
        )

    async def SystemSharedMemoryStatus(self, request, context):  # noqa: N802
        try:
            found = self.service.regions.status(request.name or None)
        except BadRequest as e:
            await self._abort(context, e)
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(regions={r["name"]: status(**r) for r in found})

    async def SystemSharedMemoryRegister(self, request, context):  # noqa: N802
        try:
            self.service.regions.register(request.name, request.key, request.offset, request.byte_size)
        except BadRequest as e:
            self.service.count_bad(e.status)
            await self._abort(context, e)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):  # noqa: N802
        self.service.regions.unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def ModelInfer(self, request, context):  # noqa: N802
        service = self.service
        bad = self._known(request.model_name, request.model_version)
        if bad is None:
            try:
                out = await service.submit(GrpcJob(request, service.regions))
            except BadRequest as e:
                bad = e
            except Exception as e:  # noqa: BLE001 - answered and counted, never a traceback
                service.count_status(500)
                log.error("internal error: %s", type(e).__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error (counted in /v1/status and /metrics)")
        if bad is not None:
            service.count_bad(bad.status)
            await self._abort(context, bad)
        if out.dropped:
            await context.abort(grpc.StatusCode.UNAVAILABLE, drop_message(out.reason, out.config))
        t0 = time.perf_counter()
        resp = pb.ModelInferResponse(model_name=self.name, model_version=VERSION, id=request.id)
        if out.config is not None:
            resp.parameters["config"].int64_param = out.config
        if out.skipped is not None:
            resp.parameters["skipped_blocks"].double_param = float(out.skipped)
        resp.parameters["latency_s"].double_param = out.latency_s
        logits = np.ascontiguousarray(out.logits, dtype=np.float32)
        outputs = out.extra["outputs"]
        for tensor, want in zip(output_tensors(logits, outputs, service.executor.manifest.class_names), outputs):
            o = resp.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            if want["shm"]:
                region, offset, size = want["shm"]
                try:
                    service.regions.write(region, offset, size, tensor.raw, f"output {tensor.name!r}")
                except BadRequest as e:
                    service.count_bad(e.status)
                    await self._abort(context, e)
                o.parameters["shared_memory_region"].string_param = region
                o.parameters["shared_memory_byte_size"].int64_param = len(tensor.raw)
                resp.raw_output_contents.append(b"")  # keeps raw_output_contents aligned with outputs
            else:
                resp.raw_output_contents.append(tensor.raw)
        service.output_built(time.perf_counter() - t0)
        return resp


async def start_grpc(service: Any, model_name: str, addresses: list[str], max_message: int) -> tuple[Any, list[int]]:
    """A started ``grpc.aio`` server for ``service`` on each of ``addresses`` (``host:port``, port 0: a free one;
    ``unix:PATH``): (server, the bound port per address; 1 for a Unix socket)."""
    options = [("grpc.max_receive_message_length", max_message), ("grpc.max_send_message_length", max_message)]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(service, model_name), server)
    bound = []
    for address in addresses:
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        bound.append(port)
    await server.start()
    return server, bound
