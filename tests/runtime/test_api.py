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


def test_threads_share_one_executor_with_the_daemons_admission(bundle, digits_splits):
    x = images(digits_splits, 64)
    results = []
    with es.open(bundle, backend="iree", queue_depth=0) as rt:  # no queue: a request arriving while busy drops
        for _ in range(10):  # bounded: rounds of simultaneous calls until some arrive while another runs
            barrier = threading.Barrier(8)

            def one(barrier=barrier):
                barrier.wait()
                results.append(rt.infer(x))

            threads = [threading.Thread(target=one) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if any(r.dropped for r in results):
                break
        status = rt.status()
    done = [r for r in results if not r.dropped]
    drops = [r for r in results if r.dropped]
    assert done and drops and all(r.reason == "busy" and r.scores is None for r in drops)
    assert status["counts"]["processed"] == len(done) and status["counts"]["dropped"] == len(drops)
