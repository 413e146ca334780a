"""The in-process API: a bundle's adaptive runtime inside an application, without HTTP.

    import edgeskip.runtime as es

    rt = es.open("bundles/digits", min_acc=0.8, policy="mix", queue_depth=4)
    r = rt.infer(image)          # image: float32 [N, C, H, W] (or [C, H, W]), normalised per the manifest
    r.scores, r.config, r.latency_s, r.dropped
    rt.close()

The same service as the daemon's (:class:`edgeskip.runtime.server.InferenceService`: one executor, the
Dispatcher with its policy and queue on the wall clock, the same metrics and statistics): requests are
admitted, queued, dropped and adapted to exactly as ``serve`` does (``InferenceService.submit_here``). The
admitted request runs on the caller's thread, with no hand-off to another thread; ``infer`` may be called
from any number of threads at once and blocks until its request is answered. A private event-loop thread
only hands queued requests over.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeskip.errors import EdgeskipError
from edgeskip.manifest import Manifest
from edgeskip.runtime.preprocess import BadRequest, finite, pin


@dataclass(frozen=True)
class Inference:
    """One answered request: ``scores`` (logits, [N, classes]) and the config that ran (None: a pinned skip
    array off the front), or ``dropped`` with its ``reason`` (busy, queue_full, deadline) and no scores."""

    scores: np.ndarray | None
    config: int | None
    latency_s: float | None
    skipped_blocks: float | None
    dropped: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class ArrayJob:
    """An image array as the service's worker runs it (:class:`edgeskip.runtime.workers.Prepared`)."""

    image: np.ndarray
    config: int | None = None
    skip: object = None

    def prepare(self, manifest: Manifest, max_pixels: int) -> tuple[np.ndarray, int | None, Any, dict]:
        x = np.asarray(self.image, dtype=np.float32)
        chw = tuple(manifest.input.chw)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != chw or not 1 <= len(x):
            raise BadRequest(f"image must have shape [N, {', '.join(map(str, chw))}], got {list(self.image.shape)}")
        config, skip = pin(manifest, self.config, self.skip)
        return finite(np.ascontiguousarray(x), "image"), config, skip, {}


class Runtime:
    """A bundle served in-process (:func:`open`); thread-safe, closed with :meth:`close` or ``with``."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.manifest: Manifest = service.executor.manifest
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgeskip-runtime", daemon=True)
        self._thread.start()
        service.loop = self._loop  # where queued requests are handed over
        self._closed = False

    def infer(
        self, image: np.ndarray, config: int | None = None, skip: Sequence[object] | str | None = None
    ) -> Inference:
        """Admit one request (a batch of images) as the daemon would and wait for its answer. ``config`` or
        ``skip`` pin what runs (still counted as load). Bad input raises :class:`EdgeskipError`."""
        if self._closed:
            raise EdgeskipError("this runtime is closed")
        job = ArrayJob(np.asarray(image), config, skip)
        try:
            out = self.service.submit_here(job)  # on this thread, admitted by the daemon's Dispatcher
        except BadRequest as e:
            self.service.count_bad(e.status)
            raise EdgeskipError(str(e)) from None
        if out.dropped:
            return Inference(None, out.config, None, None, True, out.reason)
        return Inference(out.logits, out.config, out.latency_s, out.skipped)

    def status(self) -> dict:
        """The policy's state, the queue and the counters: what ``/v1/status`` reports."""
        return self.service.snapshot()

    def close(self) -> None:
        """Finish the request in flight, stop the threads and release the executor."""
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self.service.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(  # noqa: A001 - the API's verb, as in io.open
    bundle: str | os.PathLike,
    min_acc: float = 0.0,
    policy: str = "paper",
    queue_depth: int = 0,
    deadline_ms: float | None = None,
    fixed: int | None = None,
    delta_req: float | None = None,
    policy_params: dict[str, float] | None = None,
    backend: str = "auto",
    **executor_options: object,
) -> Runtime:
    """Open ``bundle`` for in-process inference with the daemon's admission: ``policy`` (paper, rate, mix) or a
    ``fixed`` config, ``queue_depth`` requests may wait (0: a request arriving while another runs is dropped),
    ``deadline_ms`` drops a queued request that cannot finish in time; ``min_acc`` bounds the configs by
    validation accuracy. ``executor_options``: ``target``, ``driver``, ``threads``, ``digest``, ``verify_key``."""
    from edgeskip.runtime.daemon import make_service

    deadline = None if deadline_ms is None else deadline_ms / 1e3
    service = make_service(
        str(bundle),
        min_acc,
        delta_req,
        fixed,
        backend,
        policy,
        queue_depth,
        deadline,
        policy_params,
        **executor_options,
    )
    return Runtime(service)
