"""The in-process API (``edgeskip.runtime.open``): the daemon's service without HTTP, from many threads."""

import threading

import numpy as np
import pytest
from daemon_process import digit_images as images

import edgeskip.runtime as es
from edgeskip.errors import EdgeskipError
from edgeskip.runtime.executor import open_executor


def test_infer_matches_the_executor_and_pins_configs(bundle, digits_splits):
    ex = open_executor(bundle, backend="iree")
    x = images(digits_splits, 3)
    with es.open(bundle, backend="iree", policy="mix", queue_depth=4) as rt:
        r = rt.infer(x)
        assert not r.dropped and r.latency_s > 0 and r.scores.shape == (3, 10)
        np.testing.assert_allclose(r.scores, ex.infer(x, config=r.config), atol=1e-4)
        last = len(ex.configs) - 1
        pinned = rt.infer(x[0], config=last)  # [C, H, W] is one image
        assert pinned.config == last and pinned.skipped_blocks == ex.configs[last].n_skipped
        np.testing.assert_allclose(pinned.scores, ex.infer(x[:1], config=last), atol=1e-4)
        off = rt.infer(x, skip="100001")
        assert off.config is None and off.skipped_blocks == 4
        np.testing.assert_allclose(off.scores, ex.infer(x, skip="100001"), atol=1e-4)
        with pytest.raises(EdgeskipError, match=r"image must have shape \[N, 1, 8, 8\], got \[2, 3\]"):
            rt.infer(np.zeros((2, 3), np.float32))
        with pytest.raises(EdgeskipError, match="contains NaN"):
            rt.infer(np.full((1, 1, 8, 8), np.nan, np.float32))
        with pytest.raises(EdgeskipError, match="config must be an integer"):
            rt.infer(x, config=99)
        status = rt.status()
        assert status["counts"]["processed"] == 3 and status["counts"]["bad_request"] == 3
    with pytest.raises(EdgeskipError, match="closed"):
        rt.infer(x)


@pytest.mark.parametrize("depth, reason", [(0, "busy"), (2, "queue_full")])
def test_threads_share_one_executor_with_the_daemons_admission(bundle, digits_splits, depth, reason):
    x = images(digits_splits, 64)
    ex = open_executor(bundle, backend="iree")
    rounds = []
    with es.open(bundle, backend="iree", queue_depth=depth) as rt:  # a request arriving while busy waits or drops
        for _ in range(10):  # bounded: rounds of simultaneous calls until some arrive while another runs
            barrier, results = threading.Barrier(8), []

            def one(barrier=barrier, results=results):
                barrier.wait()
                results.append(rt.infer(x))

            threads = [threading.Thread(target=one) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rounds.append(results)
            if any(r.dropped for r in results) and (depth == 0 or sum(not r.dropped for r in results) > 1):
                break
        status = rt.status()
    done = [r for rs in rounds for r in rs if not r.dropped]
    drops = [r for rs in rounds for r in rs if r.dropped]
    assert done and drops and all(r.reason == reason and r.scores is None for r in drops)
    assert status["counts"]["processed"] == len(done) and status["counts"]["dropped"] == len(drops)
    assert status["queued"] == 0
    for r in done[:3]:  # queued ones ran the config admitted for them, on the caller's thread
        np.testing.assert_allclose(r.scores, ex.infer(x, config=r.config), atol=1e-4)
