"""The daemon's service with a queue, driven directly (real executor): waiting, cancelled waiters, deadlines."""

import asyncio
import threading

import numpy as np

from edgeskip.runtime.daemon import make_service


class Tensor:
    """A job already decoded (optionally held at ``gate`` first: it occupies the executor until released)."""

    def __init__(self, x, gate=None):
        self.x, self.gate = x, gate

    def prepare(self, manifest, max_pixels):  # on the worker thread
        if self.gate is not None:
            self.gate.wait(10)
        return self.x, None, None, {}


async def occupy(service, x, gate):
    """Submit a job that holds the executor until ``gate`` is set; returns its task once it runs."""
    first = asyncio.ensure_future(service.submit(Tensor(x, gate)))
    await asyncio.sleep(0.05)
    assert service.busy
    return first


def test_queued_requests_wait_and_a_cancelled_waiter_frees_its_place(bundle):
    service = make_service(str(bundle), 0.0, None, None, "iree", policy="rate", queue_depth=2)
    x = np.zeros((1, *service.executor.input_shape), np.float32)
    gate = threading.Event()

    async def main():
        first = await occupy(service, x, gate)
        second = asyncio.ensure_future(service.submit(Tensor(x)))
        third = asyncio.ensure_future(service.submit(Tensor(x)))
        await asyncio.sleep(0.05)
        assert service.dispatcher.queued == 2
        fourth = await service.submit(Tensor(x))  # queue full: dropped at once
        assert fourth.dropped and fourth.reason == "queue_full"
        second.cancel()  # its client went away while waiting
        await asyncio.sleep(0.01)
        assert service.dispatcher.queued == 1
        gate.set()
        a, c = await first, await third
        assert not a.dropped and not c.dropped and second.cancelled()
        assert not service.busy and service.dispatcher.queued == 0
        assert service.counts["processed"] == 2 and service.drops["queue_full"] == 1

    try:
        asyncio.run(main())
    finally:
        service.close()


def test_a_deadline_drops_what_cannot_finish_in_time(bundle):
    service = make_service(str(bundle), 0.0, None, None, "iree", policy="paper", queue_depth=4, deadline=0.05)
    x = np.zeros((1, *service.executor.input_shape), np.float32)
    gate = threading.Event()

    async def main():
        first = asyncio.ensure_future(service.submit(Tensor(x, gate)))
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(service.submit(Tensor(x)))
        await asyncio.sleep(0.2)  # the first one runs far past the 50 ms deadline of the one waiting
        gate.set()
        assert not (await first).dropped
        late = await waiting
        assert late.dropped and late.reason == "deadline" and service.drops["deadline"] == 1

    try:
        asyncio.run(main())
    finally:
        service.close()


def test_the_worker_frees_the_executor_without_waiting_for_the_loop(bundle):
    """Under overload the loop is slow to notice a finished job; the worker thread frees the executor itself."""
    import time

    service = make_service(str(bundle), 0.0, None, None, "iree", policy="paper")
    x = np.zeros((1, *service.executor.input_shape), np.float32)
    gate = threading.Event()

    async def main():
        first = await occupy(service, x, gate)
        gate.set()
        t0 = time.monotonic()  # the loop is blocked from here on: only the worker thread can free the executor
        while service.busy and time.monotonic() - t0 < 5:
            time.sleep(0.001)
        assert not service.busy
        second = await service.submit(Tensor(x))  # admitted at once, before the loop has seen the first end
        assert not second.dropped and not (await first).dropped
        assert service.counts["processed"] == 2 and service.drops["busy"] == 0

    try:
        asyncio.run(main())
    finally:
        service.close()


def test_when_a_request_runs_on_the_loop_itself():
    from edgeskip.runtime.workers import runs_inline

    assert runs_inline(1e-4, 1e-3, nbytes=300, max_bytes=5000)
    assert not runs_inline(1e-4, 0.0, nbytes=300, max_bytes=5000)  # 0: off
    assert not runs_inline(2e-3, 1e-3, nbytes=300, max_bytes=5000)  # a slower model
    assert not runs_inline(None, 1e-3, nbytes=300, max_bytes=5000)  # never measured
    assert not runs_inline(1e-4, 1e-3, nbytes=9000, max_bytes=5000)  # a large body to decode
    assert not runs_inline(1e-4, 1e-3, nbytes=None, max_bytes=5000)  # an image, JSON or shared memory


def test_only_a_raw_tensor_in_the_body_may_run_on_the_loop():
    """A job's inline_bytes: its body's size where the body is the tensor, None where the work is elsewhere."""
    from edgeskip.runtime.workers import Job

    raw = np.zeros((1, 1, 8, 8), np.float32).tobytes()
    assert Job("v1", raw, {"ctype": "application/octet-stream"}).inline_bytes == len(raw)
    assert Job("v1", b"\x89PNG...", {"ctype": "image/png"}).inline_bytes is None  # decode work, not body size
    header = b'{"inputs":[{"name":"image","shape":[1,1,8,8],"datatype":"FP32","parameters":{"binary_data_size":256}}]}'
    assert Job("kserve", header + raw, {"header_length": str(len(header))}).inline_bytes == len(header) + len(raw)
    shm = b'{"inputs":[{"name":"image","shape":[64,1,8,8],"parameters":{"shared_memory_region":"r"}}]}'
    assert Job("kserve", shm, {"header_length": str(len(shm))}).inline_bytes is None  # 64 images in 90 bytes
    assert Job("kserve", header, {"header_length": None}).inline_bytes is None  # JSON data


def test_an_idle_small_model_answers_on_the_loop_with_the_threads_numbers(bundle):
    from edgeskip.runtime.workers import Job

    service = make_service(str(bundle), 0.0, None, None, "iree", policy="paper", queue_depth=2)
    x = np.random.default_rng(0).standard_normal((1, *service.executor.input_shape)).astype(np.float32)
    job = Job("v1", x.tobytes(), {"ctype": "application/octet-stream"})
    gate = threading.Event()

    async def main():
        assert service.inline_max_s == 0.0  # off unless the daemon (serve --inline-max-ms) turns it on
        threaded = await service.submit(job)
        service.inline_max_s = 1.0
        inline = await service.submit(job)
        assert service.counts["inline"] == 1 and not service.busy
        np.testing.assert_array_equal(inline.logits, threaded.logits)
        assert inline.config == threaded.config and inline.latency_s > 0
        # a request that has to wait takes the worker when its turn comes (the queue still works)
        first = await occupy(service, x, gate)
        waiting = asyncio.ensure_future(service.submit(job))
        await asyncio.sleep(0.05)
        assert service.dispatcher.queued == 1
        gate.set()
        assert not (await first).dropped and not (await waiting).dropped
        assert service.counts["inline"] == 1 and service.counts["processed"] == 4

    try:
        asyncio.run(main())
    finally:
        service.close()
