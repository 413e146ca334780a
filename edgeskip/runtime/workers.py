"""Where an admitted request is decoded and run: the daemon's inference thread.

A request reaches the worker as a :class:`Job`: the body as received and what the API read from the URL and
headers (plain data). The worker decodes it (:mod:`edgeskip.runtime.preprocess`), runs the executor and
returns a :class:`Result`; nothing is decoded on the event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgeskip.manifest import Manifest
from edgeskip.runtime.preprocess import BadRequest, decode, decode_kserve, pin


class Prepared(Protocol):
    """What a worker runs: anything that turns into (images, pinned config, pinned skip array, extra)."""

    def prepare(self, manifest: Manifest, max_pixels: int) -> tuple[np.ndarray, int | None, Any, dict]: ...


@dataclass(frozen=True)
class Job:
    """One admitted request as received. ``api`` "v1": ``meta`` {"ctype", "config"} (the media type and a
    pinned config from the query); "kserve": {"header_length"} (the binary-data header, or None)."""

    api: str
    body: bytes
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def inline_bytes(self) -> int | None:
        """The body's size where it is a raw tensor (:func:`runs_inline` may run it on the loop), else None: an
        image to decode, JSON, or a KServe request whose tensor lies in shared memory (its small body says
        nothing of the work)."""
        if self.api == "v1":
            return len(self.body) if self.meta.get("ctype") == "application/octet-stream" else None
        try:
            header = int(self.meta.get("header_length"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None  # a JSON request, or a malformed header length that prepare() will refuse
        return None if b"shared_memory_region" in self.body[:header] else len(self.body)

    def prepare(self, manifest: Manifest, max_pixels: int) -> tuple[np.ndarray, int | None, Any, dict]:
        """Decode the body (raises BadRequest): (images, pinned config, pinned skip array, extra), ``extra``
        being what the API needs back to answer (JSON-able)."""
        if self.api == "v1":
            return decode(self.body, self.meta["ctype"], manifest, max_pixels), self.meta.get("config"), None, {}
        if self.api == "kserve":
            doc, x, outputs = decode_kserve(
                self.body, self.meta.get("header_length"), manifest, self.meta.get("regions")
            )
            params = doc.get("parameters") or {}
            if not isinstance(params, dict):
                raise BadRequest("request parameters must be an object")
            config, skip = pin(manifest, params.get("config"), params.get("skip"))
            extra: dict[str, Any] = {"outputs": outputs}
            if "id" in doc:
                extra["id"] = doc["id"]
            return x, config, skip, extra
        raise BadRequest(f"unknown API {self.api!r}")


@dataclass(frozen=True)
class Result:
    """One request run: logits [N, classes], the config that ran (None: a pinned skip array off the front),
    the executor's latency, blocks skipped, and the job's ``extra``."""

    logits: np.ndarray
    config: int | None
    latency_s: float
    skipped: float | None
    extra: dict[str, Any]
    input_s: float = 0.0  # decoding the request (Triton's statistics: compute_input)


def execute(executor: Any, job: Prepared, chosen: int, max_pixels: int) -> Result:
    """Decode ``job`` and run it with the policy's ``chosen`` config unless it pins one; the output must be
    finite (a NaN score is never answered)."""
    t_in = time.perf_counter()
    x, config, skip, extra = job.prepare(executor.manifest, max_pixels)
    input_s = time.perf_counter() - t_in
    if skip is None and config is None:
        config = chosen
    t0 = time.perf_counter()
    logits = executor.infer(x, config=None if skip is not None else config, skip=skip)
    latency = time.perf_counter() - t0
    if not np.isfinite(logits).all():
        raise BadRequest("input values out of range: the model's output is not finite")
    return Result(logits, config, latency, executor.last_skipped, extra, input_s)


After = Callable[[Result | None], Callable[[], None] | None]


def runs_inline(service_s: float | None, max_s: float, nbytes: int | None, max_bytes: int) -> bool:
    """Whether a request admitted to an idle executor runs on the event loop itself instead of the worker thread.

    The worker costs two thread wake-ups per request (loop -> worker -> loop: 80-105 us of the daemon's own cost on
    a 2-core VM, bench/README §15.1), a third of a small model's inference. But while a job runs on the loop nothing
    else is read: a request that arrives meanwhile is seen only when the job ends, so a burst is served one by one
    instead of being queued or dropped on arrival. Hence ``serve --inline-max-ms`` is off by default, for one client
    sending one request at a time. Inline only where the service time (``service_s``) is at most ``max_s`` (0:
    never) and the request is one raw tensor in its body (``nbytes``, a job's ``inline_bytes``, <= ``max_bytes``;
    None: an image to decode, JSON or shared memory, whose work its size does not bound)."""
    if not max_s or service_s is None or service_s > max_s or nbytes is None:
        return False
    return nbytes <= max_bytes


class Worker:
    """One thread that runs jobs; results come back to the event loop as awaitable futures (one queue put,
    one ``call_soon_threadsafe`` back).

    ``after(result)`` (None if the job failed) runs on the worker thread as soon as the job ends, before the
    event loop hears of it: the service frees the executor there. Under overload one loop iteration answers
    dozens of drops, and waiting for the loop to notice left the executor idle more than half the time
    (bench/README §7). What ``after`` returns runs on the loop, before the result is handed over."""

    def __init__(self, executor: Any, name: str = "edgeskip-infer") -> None:
        self.executor = executor
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            loop, fut, args, after = item
            try:
                result, error = execute(self.executor, *args), None
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                result, error = None, e
            follow = after(result) if after is not None else None
            loop.call_soon_threadsafe(_settle, fut, result, error, follow)

    def run(self, job: Prepared, chosen: int, max_pixels: int, after: After | None = None) -> asyncio.Future:
        """Run ``job`` on the worker thread; await the returned future for its :class:`Result`."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._jobs.put((loop, fut, (job, chosen, max_pixels), after))
        return fut

    def shutdown(self) -> None:
        """Finish the job in flight and stop the thread."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()


def _settle(
    fut: asyncio.Future, result: Any, error: BaseException | None, follow: Callable[[], None] | None = None
) -> None:
    if follow is not None:
        follow()
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
