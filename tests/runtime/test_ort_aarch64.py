"""onnxruntime as the engine of an aarch64 board: the runtime's onnxruntime back end in Debian's arm64 CPython under
qemu (PyPI's aarch64 onnxruntime wheel, no torch), running a fractional bundle's onnxruntime front, int8 configs
and float ones, against the host's. Emulation says nothing about an ARM core's speed: no timing is made here."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from edgeskip.export import emulate
from edgeskip.export.onnx_export import INT8_SHARE, INT8_TOLERANCE, logit_diff, rounding_tolerated
from edgeskip.runtime.executor import open_executor

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import json, platform, sys
import numpy as np, onnxruntime
from edgeskip.runtime.executor import open_executor
ex = open_executor(sys.argv[1], backend="onnxruntime")
x = np.load(sys.argv[2])
logits = [ex.infer(x, config=k).tolist() for k in range(len(ex.configs))]
print(json.dumps({"machine": platform.machine(), "ort": onnxruntime.__version__, "backend": ex.backend,
                  "modules": [c.module for c in ex.configs], "logits": logits}))
"""


def test_the_int8_front_runs_on_aarch64_onnxruntime(int8_bundle, tmp_path):
    why = emulate.python_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run onnxruntime under qemu-aarch64: {why}")
        pytest.skip(why)
    x = np.load(int8_bundle / "eval" / "sample.npz")["images"][:32]
    np.save(tmp_path / "x.npy", x)
    argv, env = emulate.python_command(extra_path=[REPO])
    res = subprocess.run(
        [*argv, "-c", SCRIPT, str(int8_bundle), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["machine"] == "aarch64" and doc["ort"] == onnxruntime.__version__ and doc["backend"] == "onnxruntime"
    host = open_executor(int8_bundle, backend="onnxruntime")
    assert doc["modules"] == [c.module for c in host.configs]
    int8 = [c.quantized for c in host.configs]
    assert any(int8) and not all(int8), "the onnxruntime front should hold int8 and float configs"
    for k, c in enumerate(host.configs):
        ref, got = host.infer(x, config=k), np.asarray(doc["logits"][k], np.float32)
        # float: IEEE arithmetic in another order; int8: the bundle's rule for integer kernels (rounding_tolerated:
        # 1% of the top logit but on max(1, 10%) of the images, where a rounding step grew over the layers)
        if int8[k]:
            assert rounding_tolerated([logit_diff(g, r) for g, r in zip(got, ref)], 0, 0, INT8_TOLERANCE, INT8_SHARE), (
                c.module
            )
        else:
            assert logit_diff(got, ref) <= 1e-4, c.module
        agree = float((got.argmax(1) == ref.argmax(1)).mean())
        assert agree >= (0.95 if int8[k] else 1.0), (c.module, agree)
