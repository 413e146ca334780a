"""The daemon's service with a queue, driven directly (real executor): waiting, cancelled waiters, deadlines."""

import asyncio
import threading

import numpy as np

from edgeskip.runtime.daemon import make_service


def test_queued_requests_wait_and_a_cancelled_waiter_frees_its_place(bundle):
    service = make_service(str(bundle), 0.0, None, None, "iree", policy="rate", queue_depth=2)
    x = np.zeros((1, *service.executor.input_shape), np.float32)
    gate = threading.Event()

    def slow():  # on the worker thread: holds the executor until released
        gate.wait(10)
        return x, None, None

    async def main():
        first = asyncio.ensure_future(service.submit(slow))
        await asyncio.sleep(0.05)
        assert service.busy
        second = asyncio.ensure_future(service.submit(lambda: (x, None, None)))
        third = asyncio.ensure_future(service.submit(lambda: (x, None, None)))
        await asyncio.sleep(0.05)
        assert service.dispatcher.queued == 2
        fourth = await service.submit(lambda: (x, None, None))  # queue full: dropped at once
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
        first = asyncio.ensure_future(service.submit(lambda: (gate.wait(10), (x, None, None))[1]))
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(service.submit(lambda: (x, None, None)))
        await asyncio.sleep(0.2)  # the first one runs far past the 50 ms deadline of the one waiting
        gate.set()
        assert not (await first).dropped
        late = await waiting
        assert late.dropped and late.reason == "deadline" and service.drops["deadline"] == 1

    try:
        asyncio.run(main())
    finally:
        service.close()
