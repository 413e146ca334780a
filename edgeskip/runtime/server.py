"""``edgeskip serve``: an HTTP daemon (aiohttp) adapting a bundle executor's depth to the load.

One executor, one request at a time, admitted by :class:`edgeskip.runtime.dispatch.Dispatcher` under an
adaptation policy (:mod:`edgeskip.runtime.policies`; Algorithm 1 by default). Without a queue, a request
that arrives while another is being processed is answered at once with 503 and counted as dropped (MLPerf
server semantics, as in the paper); with ``--queue-depth`` it waits for its turn up to ``--deadline-ms``.
Inference runs in a worker thread, so the event loop keeps accepting (and dropping) requests meanwhile.

Two APIs over the same service (:meth:`InferenceService.submit`): edgeskip's own ``/v1/*`` and the Open
Inference Protocol (KServe v2) in :mod:`edgeskip.runtime.kserve`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import ClientError, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edgeskip.runtime.dispatch import DROP_REASONS, Dispatcher, Drop, Queued, Start
from edgeskip.runtime.executor import BundleExecutor
from edgeskip.runtime.power import EnergyMeter
from edgeskip.runtime.preprocess import MAX_PIXELS, BadRequest, check_content_type, check_encoding, pin
from edgeskip.runtime.responses import Answer, json_answer, json_errors, json_response
from edgeskip.runtime.shm import Regions
from edgeskip.runtime.workers import Job, Prepared, Worker, execute, runs_inline

MAX_BODY = 8 * 1024 * 1024
MAX_INFLIGHT_BYTES = 32 * 1024 * 1024  # request bodies being received at once (reserved by declared length)
BODY_TIMEOUT = 10.0  # seconds to receive a whole body
SMALL_BODY = 64 * 1024  # bodies up to this size do not count against MAX_INFLIGHT_BYTES
log = logging.getLogger("edgeskip.serve")


def top_scores(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` highest softmax probabilities as (class index, probability), best first.

    In plain Python for small heads (a 10-class head: ~3 us, a third of the numpy calls' fixed cost)."""
    if logits.size > 64:
        p = np.exp(logits - logits.max())
        p /= p.sum()
        idx = np.argsort(-p)[:k]
        return [(int(i), float(p[i])) for i in idx]
    values = logits.tolist()
    m = max(values)
    e = [math.exp(v - m) for v in values]
    total = sum(e)
    order = sorted(range(len(e)), key=e.__getitem__, reverse=True)[:k]
    return [(i, e[i] / total) for i in order]


class Metrics:
    """Prometheus metrics of one service (own registry, so several services can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edgeskip_requests", "Inference requests by outcome", ["outcome"], registry=self.registry
        )
        self.per_config = Counter(
            "edgeskip_config_requests", "Processed requests per config", ["config"], registry=self.registry
        )
        self.latency = Histogram(
            "edgeskip_inference_latency_seconds",
            "Inference latency",
            buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.current = Gauge("edgeskip_current_config", "Config index currently selected", registry=self.registry)
        # bound children: the request path touches no label lookup
        self.processed, self.dropped = self.requests.labels("processed"), self.requests.labels("dropped")
        self.bad = self.requests.labels("bad_request")
        self.error = self.requests.labels("error")
        self.refused = self.requests.labels("refused")
        self.drops = Counter(
            "edgeskip_dropped_requests", "Dropped requests by reason", ["reason"], registry=self.registry
        )
        self.drop_reason = {r: self.drops.labels(r) for r in DROP_REASONS}
        self.queued = Gauge("edgeskip_queued_requests", "Requests waiting for the executor", registry=self.registry)
        self._per_config: dict[object, Any] = {}

    def watch_energy(self, meter: EnergyMeter) -> None:
        """Export ``meter``'s joules (``serve --power``) as a counter, and whether it is still being read."""
        self.registry.register(EnergyCollector(meter))

    def config_counter(self, config: int | None) -> Any:
        """The processed-requests counter of ``config`` (None: a pinned skip array)."""
        c = self._per_config.get(config)
        if c is None:
            c = self._per_config[config] = self.per_config.labels("pinned skip" if config is None else str(config))
        return c


class EnergyCollector:
    """/metrics: the machine's energy since the daemon started (a counter that stops where its source failed)."""

    def __init__(self, meter: EnergyMeter) -> None:
        self.meter = meter

    def collect(self) -> Any:
        joules = CounterMetricFamily(
            "edgeskip_energy_joules",
            "Energy this machine used since the daemon started, from the --power source",
            labels=["source"],
        )
        joules.add_metric([self.meter.source.description], self.meter.energy().joules)
        yield joules
        up = GaugeMetricFamily("edgeskip_energy_up", "1 while the --power source is read; 0 once it failed")
        up.add_metric([], 0.0 if self.meter.error else 1.0)
        yield up


class InferStats:
    """Triton's statistics extension for the one model: per kind, a count and cumulative nanoseconds.

    success/fail: whole requests (arrival to answer; drops and bad requests fail); queue: waiting for the
    executor; compute_input: decoding; compute_infer: the executor; compute_output: building the answer."""

    KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.count = dict.fromkeys(self.KINDS, 0)
        self.ns = dict.fromkeys(self.KINDS, 0)
        self.inference_count = 0  # images
        self.execution_count = 0  # executor runs
        self.last_inference_ms = 0

    def add(self, kind: str, seconds: float) -> None:
        self.count[kind] += 1
        self.ns[kind] += int(seconds * 1e9)

    def executed(self, images: int) -> None:
        self.inference_count += images
        self.execution_count += 1
        self.last_inference_ms = int(self.wall() * 1000)

    def as_triton(self, name: str, version: str) -> dict:
        """One ``model_stats`` entry, as Triton's ``/v2/models/{name}/stats`` reports it."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: {"count": self.count[k], "ns": self.ns[k]} for k in self.KINDS},
            "batch_stats": [],
        }


class _ThreadWaiter:
    """A queued in-process caller: what ``_hand_over`` resolves (as it resolves an asyncio future) wakes its
    thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._action: Any = None

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, action: Any) -> None:
        self._action = action
        self._event.set()

    def wait(self) -> Any:
        self._event.wait()
        return self._action


@dataclass(frozen=True)
class Outcome:
    """What became of one submitted request: dropped, or processed with ``config`` (None: a pinned skip
    array outside the Pareto front) into ``logits``."""

    dropped: bool
    config: int | None
    logits: np.ndarray | None = None
    latency_s: float | None = None
    skipped: float | None = None
    reason: str | None = None  # why it was dropped (edgeskip.runtime.dispatch.DROP_REASONS)
    extra: dict[str, Any] | None = None  # what the job's API needs back to answer (edgeskip.runtime.workers.Job)


class InferenceService:
    """State of the daemon: executor, dispatcher (policy + queue), counters. ``clock`` is injectable."""

    def __init__(
        self,
        executor: BundleExecutor,
        dispatcher: Dispatcher,
        min_acc: float | None,
        clock: Callable[[], float] = time.monotonic,
        topk: int = 5,
        service_time_s: float | None = None,
        inline_max_s: float = 0.0,
    ) -> None:
        self.executor, self.dispatcher, self.clock = executor, dispatcher, clock
        self.min_acc, self.topk, self.service_time_s = min_acc, topk, service_time_s
        # a small model's requests run on the event loop when the executor is idle (workers.runs_inline)
        self.inline_max_s = inline_max_s
        self.inline_max_bytes = 4 * int(np.prod(executor.input_shape)) + 4096  # one float32 image and its header
        self.counts = {"processed": 0, "dropped": 0, "bad_request": 0, "refused": 0, "error": 0, "inline": 0}
        self.metrics = Metrics()
        self.stats = InferStats()
        self.regions = Regions()  # Triton's system shared-memory extension
        self._current = self.policy.config
        self.metrics.current.set(self._current)
        self._waiting: dict[object, asyncio.Future] = {}
        self._lock = threading.Lock()  # the dispatcher is driven by the loop and freed by the worker thread
        self._book = threading.Lock()  # counts and statistics, kept from the loop and from in-process callers
        self.loop: Any = None  # the event loop that runs submit_here's hand-overs (set by its owner)
        self.pool = Worker(executor)
        self.max_body = MAX_BODY  # set by make_app
        self.max_pixels = MAX_PIXELS
        self.max_inflight_bytes = MAX_INFLIGHT_BYTES
        self.body_timeout = BODY_TIMEOUT
        self.inflight_bytes = 0

    def close(self) -> None:
        """Release the executor's runtime objects (before interpreter exit, so bindings tear down cleanly)."""
        import gc

        self.pool.shutdown()
        self.regions.close()
        self.executor = None  # type: ignore[assignment]
        gc.collect()

    async def read_body(self, request: web.Request) -> bytes:
        """The request body, bounded three ways: over ``max_body`` bytes is 413 (enforced while reading); the
        large bodies being received at once may hold at most ``max_inflight_bytes`` (each body over
        ``SMALL_BODY`` reserves its declared length, or ``max_body`` when chunked; beyond that 503 at once,
        nothing read: small ones, what normal requests send, always get through); a body not complete
        within ``body_timeout`` seconds is 408. A client that disconnects mid-upload costs one log line."""
        check_encoding(request.headers.get("Content-Encoding"))
        declared = request.content_length if request.content_length is not None else self.max_body
        if declared > self.max_body:
            raise BadRequest(f"body larger than {self.max_body} bytes", status=413)
        need = self.reserve_body(declared)
        try:
            return await asyncio.wait_for(request.read(), self.body_timeout)
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(f"body larger than {self.max_body} bytes", status=413) from None
        except asyncio.TimeoutError:
            log.info("upload from %s timed out after %g s", request.remote, self.body_timeout)
            raise BadRequest(f"request body not received within {self.body_timeout:g} s", status=408) from None
        except (ConnectionError, asyncio.IncompleteReadError, ClientError) as e:
            log.info("upload from %s aborted: %s", request.remote, type(e).__name__)
            raise BadRequest("request body incomplete: the client disconnected") from None
        finally:
            self.release_body(need)

    def reserve_body(self, declared: int) -> int:
        """Room for a body of ``declared`` bytes among those being received by any listener: one over
        ``SMALL_BODY`` reserves its length (small ones, what normal requests send, always pass), beyond
        ``max_inflight_bytes`` it is BadRequest 503. Returns the bytes reserved, for :meth:`release_body`."""
        need = declared if declared > SMALL_BODY else 0
        with self._book:
            if need and self.inflight_bytes + need > self.max_inflight_bytes:
                raise BadRequest("too many request bodies in flight; retry later", status=503)
            self.inflight_bytes += need
        return need

    def release_body(self, need: int) -> None:
        with self._book:
            self.inflight_bytes -= need

    def internal_error(self, e: BaseException) -> web.Response:
        """A failure that is not the client's: one log line, counted, a 500 whose body echoes nothing."""
        return self.internal_error_answer(e).response()

    def internal_error_answer(self, e: BaseException) -> Answer:
        """:meth:`internal_error` as data (the lean listener's)."""
        self.count_status(500)
        log.error("internal error: %s", type(e).__name__)
        return json_answer({"error": "internal error (counted in /v1/status and /metrics)"}, status=500)

    @property
    def policy(self):  # noqa: ANN201 - a edgeskip.runtime.policies.Policy
        return self.dispatcher.policy

    @property
    def busy(self) -> bool:
        return self.dispatcher.busy

    @property
    def drops(self) -> dict[str, int]:
        """Dropped requests by reason (the dispatcher's counts)."""
        return {r: self.dispatcher.counts[r] for r in DROP_REASONS}

    def _dropped(self, d: Drop, arrived: float) -> Outcome:
        with self._book:
            self.stats.add("fail", time.perf_counter() - arrived)
            self.counts["dropped"] += 1
        self.metrics.dropped.inc()
        self.metrics.drop_reason[d.reason].inc()
        return Outcome(True, d.config, reason=d.reason)

    def _note_config(self) -> None:
        if self.policy.config != self._current:
            self._current = self.policy.config
            self.metrics.current.set(self._current)

    def _hand_over(self, actions: Sequence[Start | Drop]) -> None:
        """On the loop: wake the queued requests the dispatcher started or dropped."""
        for a in actions:
            fut = self._waiting.pop(a.rid, None)
            if fut is not None and not fut.done():
                fut.set_result(a)
            elif isinstance(a, Start):  # its client went away meanwhile: release the executor again
                self._hand_over(self._finish(0.0, None, observed=False))
        self.metrics.queued.set(self.dispatcher.queued)
        self._note_config()

    def _finish(self, service_s: float, config: int | None, observed: bool) -> list[Start | Drop]:
        with self._lock:
            return self.dispatcher.finish(self.clock(), service_s, config, observed=observed)

    def _release(self, start: float, chosen: int) -> Callable[[Any], Callable[[], None] | None]:
        """The worker's ``after``: frees the executor the moment the job ends (on the worker thread), and
        hands the result of that over on the loop."""

        def after(result: Any) -> Callable[[], None] | None:
            actions = self._finish(
                self.clock() - start, chosen if result is None else result.config, observed=result is not None
            )
            if not actions:  # no queued request to wake: nothing for the loop to do (a wake-up costs ~50 us)
                self.metrics.queued.set(self.dispatcher.queued)
                self._note_config()
                return None
            return lambda: self._hand_over(actions)

        return after

    async def submit(self, job: Prepared) -> Outcome:
        """Admit one request (policy + queue): drop it at once (nothing decoded), let it wait for its turn, or
        decode and run it on the worker (:mod:`edgeskip.runtime.workers`; decoding raises BadRequest).
        Unpinned requests run with the policy's config, pinned ones still count as load for it. The
        executor is freed when the job ends, even if the client went away meanwhile."""
        arrived, rid, action, fut = self._arrive(asyncio.get_running_loop().create_future)
        waited = fut is not None
        if fut is not None:
            try:
                action = await fut
            except asyncio.CancelledError:
                self._waiting.pop(rid, None)
                if fut.done() and not fut.cancelled() and isinstance(fut.result(), Start):  # its turn had come
                    self._hand_over(self._finish(0.0, None, observed=False))
                else:
                    with self._lock:
                        self.dispatcher.cancel(rid)
                raise
        if isinstance(action, Drop):
            return self._dropped(action, arrived)
        started = time.perf_counter()
        if (
            not waited
            and self.inline_max_s  # checked first: off (the default) costs nothing per request
            and runs_inline(
                self.service_time_s, self.inline_max_s, getattr(job, "inline_bytes", None), self.inline_max_bytes
            )
        ):
            with self._book:
                self.counts["inline"] += 1
            return self._run_here(job, action, arrived, started, lambda hand_over: hand_over())
        try:
            r = await self.pool.run(job, action.config, self.max_pixels, self._release(self.clock(), action.config))
        except BaseException:
            self._failed(arrived)
            raise
        return self._processed(r, arrived, started)

    def submit_here(self, job: Prepared) -> Outcome:
        """:meth:`submit` for a caller on another thread than the event loop's (the in-process API): the same
        Dispatcher admits it, but the job runs on the caller's thread (the Dispatcher lets one job run at a
        time) and a queued caller waits on its thread, so no hand-off through the loop is paid. Queued
        requests of either kind are handed over on the loop (``self.loop``)."""
        arrived, rid, action, waiter = self._arrive(_ThreadWaiter)
        if waiter is not None:
            action = waiter.wait()
        if isinstance(action, Drop):
            return self._dropped(action, arrived)
        return self._run_here(job, action, arrived, time.perf_counter(), self.loop.call_soon_threadsafe)

    def _run_here(
        self, job: Prepared, action: Start, arrived: float, started: float, settle: Callable[[Any], Any]
    ) -> Outcome:
        """Run an admitted job on this thread (the loop's, or an in-process caller's): the executor is freed the
        moment it ends, and ``settle`` runs the hand-over of queued requests on the loop."""
        after = self._release(self.clock(), action.config)
        try:
            r = execute(self.executor, job, action.config, self.max_pixels)
        except BaseException:
            if (follow := after(None)) is not None:
                settle(follow)
            self._failed(arrived)
            raise
        if (follow := after(r)) is not None:
            settle(follow)
        return self._processed(r, arrived, started)

    def _arrive(self, make_waiter: Callable[[], Any]) -> tuple[float, object, Start | Drop | Queued, Any]:
        """A new request before the Dispatcher: (arrival time, its id, what to do with it, and its waiter if it was
        queued, else None). ``make_waiter`` makes what the hand-over resolves: an asyncio future on the loop, a
        :class:`_ThreadWaiter` for a caller on another thread. It is made and parked under the same lock as the
        admission, or a job ending in between (on another thread) would hand the request its turn before it could
        be found, and it would wait for ever; requests that are not queued make none."""
        arrived, rid, waiter = time.perf_counter(), object(), None
        with self._lock:
            action = self.dispatcher.arrive(self.clock(), rid)
            if isinstance(action, Queued):
                waiter = self._waiting[rid] = make_waiter()
        if waiter is not None:
            self.metrics.queued.set(self.dispatcher.queued)
        self._note_config()
        return arrived, rid, action, waiter

    def output_built(self, seconds: float) -> None:
        """Count the time a protocol spent building an answer (Triton's statistics: compute_output)."""
        with self._book:
            self.stats.add("compute_output", seconds)

    def _failed(self, arrived: float) -> None:
        with self._book:
            self.stats.add("fail", time.perf_counter() - arrived)

    def _processed(self, r: Any, arrived: float, started: float) -> Outcome:
        """Count a processed request (from the loop or a caller's thread) and make its outcome."""
        m = self.metrics
        with self._book:
            s = self.stats
            s.add("queue", started - arrived)
            s.add("compute_input", r.input_s)
            s.add("compute_infer", r.latency_s)
            s.add("success", time.perf_counter() - arrived)
            s.executed(len(r.logits))
            self.counts["processed"] += 1
        m.processed.inc()
        m.config_counter(r.config).inc()
        m.latency.observe(r.latency_s)
        return Outcome(False, r.config, r.logits, r.latency_s, r.skipped, extra=r.extra)

    async def infer(self, request: web.Request) -> web.Response:
        try:
            ctype = check_content_type(request.headers.get("Content-Type"))
            body = await self.read_body(request)
            out = await self.submit(self.v1_job(body, ctype, request.query.get("config")))
        except BadRequest as e:
            return self._bad(str(e), e.status)
        except Exception as e:  # noqa: BLE001 - answered and counted, never a traceback page
            return self.internal_error(e)
        return self.v1_answer(out).response()

    def v1_job(self, body: bytes, ctype: str, config: str | None) -> Job:
        """A ``/v1/infer`` request (``config``: the query's pinned config, as given) as the worker decodes it."""
        return Job("v1", body, {"ctype": ctype, "config": pin(self.executor.manifest, query_int(config, "config"))[0]})

    def v1_answer(self, out: Outcome) -> Answer:
        """``/v1/infer``'s answer: the top classes, the config and the latency, or 503 for a drop."""
        if out.dropped:
            return json_answer({"dropped": True, "reason": out.reason, "config": out.config}, status=503)
        names = self.executor.manifest.class_names
        top = top_scores(out.logits[0], self.topk)  # type: ignore[index]
        return json_answer(
            {
                "top": [{"class": names[i], "index": i, "score": p} for i, p in top],
                "config": out.config,
                "skipped_blocks": out.skipped,
                "latency_s": out.latency_s,
            }
        )

    def count_bad(self, status: int = 400) -> None:
        """Count a request refused as malformed (4xx) or for lack of resources (408/503 before admission)."""
        kind = "refused" if status in (408, 503) else "bad_request"
        with self._book:
            self.counts[kind] += 1
        (self.metrics.refused if kind == "refused" else self.metrics.bad).inc()

    def count_status(self, status: int) -> None:
        """Count an answer given below the handlers (a refused connection, malformed HTTP): 5xx but 503 as
        errors, the rest as :meth:`count_bad`."""
        if status >= 500 and status != 503:
            with self._book:
                self.counts["error"] += 1
            self.metrics.error.inc()
        else:
            self.count_bad(status)

    def _bad(self, message: str, status: int) -> web.Response:
        self.count_bad(status)
        return json_response({"error": message}, status=status)

    async def status(self, request: web.Request) -> web.Response:
        return json_response(self.snapshot())

    def snapshot(self) -> dict:
        """The policy's state, the queue and the counters: ``/v1/status`` and the in-process ``Runtime.status``."""
        c, d = self.policy, self.dispatcher
        with self._book:
            counts = dict(self.counts)
        return {
            "config": c.config,
            "skipped_blocks": self.executor.configs[c.config].n_skipped,
            "allowed_configs": list(c.allowed),
            "mode": "fixed" if c.name == "fixed" else "adaptive",
            "policy": c.state(),
            "queue_depth": d.queue_depth,
            "queued": d.queued,
            "deadline_s": d.deadline,
            "service_time_s": self.service_time_s,
            "inline_max_s": self.inline_max_s,
            "delta_req_s": getattr(c, "delta_req", None),
            "counts": counts,
            "drops": self.drops,
            "min_acc": self.min_acc,
            "busy": self.busy,
            "backend": self.executor.backend,
            "num_configs": len(self.executor.configs),
            # whose measurements drew the front this service steps through: this machine's profile, or None
            # (the compile host's)
            "front_profile": self.executor.manifest.extra.get("profile"),
        }

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"ok": True})

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def query_int(raw: str | None, name: str) -> int | None:
    """An optional integer query parameter (``/v1/infer?config=2`` pins a Pareto config), or BadRequest."""
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer, got {raw[:20]!r}") from None


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "edgeskip"  # not aiohttp's, which names the Python and aiohttp versions


def make_app(service: InferenceService, max_body: int = MAX_BODY, model_name: str = "model") -> web.Application:
    """The aiohttp application (``/v1/*`` and KServe v2 as ``model_name``); bodies over ``max_body`` bytes get 413."""
    from edgeskip.runtime.kserve import KServeV2

    service.max_body = max_body
    # bodies are never decompressed (a Content-Encoding other than identity is refused with 415)
    app = web.Application(client_max_size=max_body, handler_args={"auto_decompress": False}, middlewares=[json_errors])
    app.on_response_prepare.append(_server_header)
    app.router.add_post("/v1/infer", service.infer)
    app.router.add_get("/v1/status", service.status)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/metrics", service.metrics_text)
    KServeV2(service, model_name).add_routes(app.router)

    async def close_pool(app: web.Application) -> None:
        service.pool.shutdown()

    app.on_cleanup.append(close_pool)
    return app
