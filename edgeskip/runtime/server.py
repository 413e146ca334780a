"""``edgeskip serve``: an HTTP daemon (aiohttp) running Algorithm 1 over a bundle executor.

One executor, one request at a time: a request that arrives while another is being processed is
answered at once with 503 and counted as dropped (MLPerf server semantics, as in the paper), and the
controller moves toward more skipping. Inference runs in a worker thread, so the event loop keeps
accepting (and dropping) requests meanwhile.

Two APIs over the same service (:meth:`InferenceService.submit`): edgeskip's own ``/v1/*`` and the Open
Inference Protocol (KServe v2) in :mod:`edgeskip.runtime.kserve`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.adaptation import AdaptiveController, FixedController
from edgeskip.runtime.executor import BundleExecutor
from edgeskip.runtime.preprocess import BadRequest, decode

MAX_BODY = 8 * 1024 * 1024


class Metrics:
    """Prometheus metrics of one service (own registry, so several services can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("edgeskip_requests", "Inference requests by outcome", ["outcome"], registry=self.registry)
        self.per_config = Counter("edgeskip_config_requests", "Processed requests per config", ["config"],
                                  registry=self.registry)
        self.latency = Histogram("edgeskip_inference_latency_seconds", "Inference latency",
                                 buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0),
                                 registry=self.registry)
        self.current = Gauge("edgeskip_current_config", "Config index currently selected", registry=self.registry)


@dataclass(frozen=True)
class Outcome:
    """What became of one submitted request: dropped, or processed with ``config`` (None: a pinned skip
    array outside the Pareto front) into ``logits``."""

    dropped: bool
    config: int | None
    logits: np.ndarray | None = None
    latency_s: float | None = None
    skipped: float | None = None


class InferenceService:
    """State of the daemon: executor, controller, counters. ``clock`` is injectable."""

    def __init__(self, executor: BundleExecutor, controller: AdaptiveController | FixedController, delta_req: float,
                 min_acc: float | None, clock: Callable[[], float] = time.monotonic, topk: int = 5) -> None:
        self.executor, self.controller, self.clock = executor, controller, clock
        self.delta_req, self.min_acc, self.topk = delta_req, min_acc, topk
        self.busy = False
        self.counts = {"processed": 0, "dropped": 0, "bad_request": 0}
        self.metrics = Metrics()
        self.metrics.current.set(controller.config)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeskip-infer")

    def close(self) -> None:
        """Release the executor's runtime objects (before interpreter exit, so bindings tear down cleanly)."""
        import gc

        self.pool.shutdown(wait=True)
        self.executor = None  # type: ignore[assignment]
        gc.collect()

    def _run(self, x: np.ndarray, config: int | None, skip: Any) -> tuple[np.ndarray, float, float | None]:
        t0 = time.perf_counter()
        logits = self.executor.infer(x, config=config, skip=skip)
        return logits, time.perf_counter() - t0, self.executor.last_skipped

    def pinned(self, config: object = None, skip: object = None) -> tuple[int | None, tuple[bool, ...] | None]:
        """Validate a request's pinned config index or skip array (raises BadRequest)."""
        if config is not None and skip is not None:
            raise BadRequest("pin either a config or a skip array, not both")
        if config is not None:
            if isinstance(config, bool) or not isinstance(config, int) or not 0 <= config < len(self.executor.configs):
                raise BadRequest(f"config must be an integer in 0..{len(self.executor.configs) - 1}, got {config!r}")
            return config, None
        if skip is not None:
            if self.executor.manifest.kind == "skipnet":
                raise BadRequest("a SkipNet bundle picks its blocks per input; it takes no skip array")
            from edgeskip.skip import normalize_skip

            try:
                s = normalize_skip(skip, self.executor.num_gates)
            except EdgeskipError as e:
                raise BadRequest(str(e)) from None
            return self.executor.manifest.by_skip.get(s), s
        return None, None

    async def submit(self, x: np.ndarray, config: int | None = None, skip: Sequence[bool] | None = None) -> Outcome:
        """Algorithm 1 for one decoded request: drop it if busy, else run it with the controller's config (or
        the pinned ``config`` / ``skip`` array; a pinned request still counts as load for the controller)."""
        decision = self.controller.on_request(self.clock(), busy=self.busy)
        self.metrics.current.set(self.controller.config)
        if decision.dropped:
            self.counts["dropped"] += 1
            self.metrics.requests.labels("dropped").inc()
            return Outcome(True, decision.config)
        if skip is None and config is None:
            config = decision.config
        self.busy = True
        try:
            logits, latency, skipped = await asyncio.get_running_loop().run_in_executor(
                self.pool, self._run, x, None if skip is not None else config, skip)
        finally:
            self.busy = False
        self.counts["processed"] += 1
        self.metrics.requests.labels("processed").inc()
        self.metrics.per_config.labels("pinned skip" if config is None else str(config)).inc()
        self.metrics.latency.observe(latency)
        return Outcome(False, config, logits, latency, skipped)

    async def infer(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
            x = decode(body, request.content_type, self.executor.manifest)
        except BadRequest as e:
            return self._bad(str(e), e.status)
        out = await self.submit(x)
        if out.dropped:
            return web.json_response({"dropped": True, "reason": "busy", "config": out.config}, status=503)
        logits = out.logits[0]  # type: ignore[index]
        scores = np.exp(logits - logits.max())
        scores /= scores.sum()
        top = np.argsort(-scores)[: self.topk]
        names = self.executor.manifest.class_names
        return web.json_response({
            "top": [{"class": names[i], "index": int(i), "score": float(scores[i])} for i in top],
            "config": out.config, "skipped_blocks": out.skipped, "latency_s": out.latency_s,
        })

    def count_bad(self) -> None:
        """Count a request refused as malformed."""
        self.counts["bad_request"] += 1
        self.metrics.requests.labels("bad_request").inc()

    def _bad(self, message: str, status: int) -> web.Response:
        self.count_bad()
        return web.json_response({"error": message}, status=status)

    async def status(self, request: web.Request) -> web.Response:
        c = self.controller
        return web.json_response({
            "config": c.config, "skipped_blocks": self.executor.configs[c.config].n_skipped,
            "allowed_configs": getattr(c, "allowed", [c.config]), "mode": "adaptive" if isinstance(c, AdaptiveController) else "fixed",
            "counts": self.counts, "delta_req_s": self.delta_req, "min_acc": self.min_acc, "busy": self.busy,
            "backend": self.executor.backend, "num_configs": len(self.executor.configs),
        })

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(service: InferenceService, max_body: int = MAX_BODY, model_name: str = "model") -> web.Application:
    """The aiohttp application (``/v1/*`` and KServe v2 as ``model_name``); bodies over ``max_body`` bytes get 413."""
    from edgeskip.runtime.kserve import KServeV2

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return service._bad(f"body larger than {max_body} bytes", 413)

    app = web.Application(client_max_size=max_body, middlewares=[errors])
    app.router.add_post("/v1/infer", service.infer)
    app.router.add_get("/v1/status", service.status)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/metrics", service.metrics_text)
    KServeV2(service, model_name).add_routes(app.router)

    async def close_pool(app: web.Application) -> None:
        service.pool.shutdown(wait=True)

    app.on_cleanup.append(close_pool)
    return app
