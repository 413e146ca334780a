"""The runtime over a fractional-depth bundle (#15): each back end steps through its own front, and switching to
an int8 config is a switch like any other (no reload), over HTTP too."""

import json

import numpy as np
import pytest
from daemon_process import Server

from edgeskip.backends.ort import ort_session
from edgeskip.manifest import load_manifest
from edgeskip.runtime.executor import open_executor


def images(digits_splits, n=4):
    x = (digits_splits.test.x[:n] - digits_splits.norm.mean[0]) / digits_splits.norm.std[0]
    return x.astype(np.float32)


def test_each_backend_runs_its_own_front(int8_bundle, digits_splits):
    m = load_manifest(int8_bundle)
    x = images(digits_splits)
    for backend in ("onnxruntime", "iree"):
        ex = open_executor(int8_bundle, backend=backend)
        assert [c.module for c in ex.configs] == [m.configs[i].module for i in m.fronts[backend]]
        assert [c.index for c in ex.configs] == list(range(len(ex.configs)))
        for k, c in enumerate(ex.configs):
            ref = ort_session(int8_bundle / m.onnx[c.module]).run(None, {"image": x})[0]
            got = ex.infer(x, config=k)
            tol = 1e-4 if not c.quantized else 1e-6  # int8 through onnxruntime: the same kernels, the same numbers
            assert np.abs(got - ref).max() <= tol * max(1.0, float(np.abs(ref).max()))
    ort = open_executor(int8_bundle, backend="onnxruntime")
    k = next(k for k, c in enumerate(ort.configs) if c.quantized)
    c = ort.configs[k]
    # a skip array names the float config of that mask, never the int8 one
    assert ort.manifest.by_skip.get(c.skip_tuple) != k


def test_serve_switches_to_an_int8_config(int8_bundle, digits_splits):
    s = Server(int8_bundle, "--backend", "onnxruntime")
    try:
        ex = open_executor(int8_bundle, backend="onnxruntime")
        k = next(k for k, c in enumerate(ex.configs) if c.n_int8)
        body = images(digits_splits, 1).tobytes()
        for pinned in (0, k, 0):
            status, raw, _ = s.call(f"/v1/infer?config={pinned}", body, "application/octet-stream")
            doc = json.loads(raw)
            assert status == 200 and doc["config"] == pinned
            assert doc["skipped_blocks"] == ex.configs[pinned].n_skipped
        status, raw, _ = s.call("/v1/status")
        st = json.loads(raw)
        assert st["backend"] == "onnxruntime" and st["num_configs"] == len(ex.configs)
    finally:
        s.kill()


@pytest.mark.parametrize("args, fragment", [(["--config", "99"], "out of range")])
def test_config_index_counts_in_the_backends_front(int8_bundle, args, fragment):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "edgeskip", "serve", str(int8_bundle), "--backend", "iree", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and fragment in res.stderr and len(res.stderr.strip().splitlines()) == 1
