"""The aarch64 CPython under qemu (``python -m edgeskip.export.emulate fetch-python``) runs the runtime's stack."""

import json
import os
import subprocess

import numpy as np
import pytest

from edgeskip.export import emulate
from edgeskip.export.iree_compile import TARGETS, compile_mlir

MLIR = """
func.func @main(%a: tensor<4xf32>, %b: tensor<4xf32>) -> tensor<4xf32> {
  %0 = arith.addf %a, %b : tensor<4xf32>
  %1 = arith.mulf %0, %b : tensor<4xf32>
  return %1 : tensor<4xf32>
}
"""


def _aarch64_python(code: str, timeout: float = 120) -> str:
    why = emulate.python_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the aarch64 Python check: {why}")
        pytest.skip(why)
    argv, env = emulate.python_command()
    proc = subprocess.run(argv + ["-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_pins_iree_runtime_to_the_host_version():
    assert emulate._pinned(["numpy", "iree_base_runtime"]) == [
        "numpy",
        f"iree_base_runtime=={emulate.runtime_version()}",
    ]
    assert "iree-base-runtime" in emulate.RUNTIME_WHEELS


def test_aarch64_python_imports_the_runtime_stack():
    out = _aarch64_python(
        "import json, platform, ssl, ctypes, asyncio, zlib, numpy, iree.runtime, aiohttp.web, PIL.Image, "
        "prometheus_client, click\n"
        "print(json.dumps({'machine': platform.machine(), 'numpy': numpy.__version__, 'sum': float(numpy.arange(5).sum())}))"
    )
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"machine": "aarch64", "numpy": got["numpy"], "sum": 10.0}


def test_aarch64_python_runs_an_aarch64_iree_module(tmp_path):
    if emulate.python_missing():
        _aarch64_python("")  # skips (or fails in CI) with the reason
    (tmp_path / "f.mlir").write_text(MLIR)
    vmfb = compile_mlir(tmp_path / "f.mlir", TARGETS["aarch64-cortex-a72"], tmp_path / "f.vmfb")
    out = _aarch64_python(
        "import numpy as np, iree.runtime as rt\n"
        "cfg = rt.Config('local-sync'); ctx = rt.SystemContext(config=cfg)\n"
        f"ctx.add_vm_module(rt.VmModule.mmap(cfg.vm_instance, {str(vmfb)!r}))\n"
        "print(np.asarray(ctx.modules.module.main(np.arange(4, dtype=np.float32), np.full(4, 2, np.float32)).to_host()).tolist())"
    )
    a, b = np.arange(4, dtype=np.float32), np.full(4, 2, np.float32)
    assert json.loads(out.strip().splitlines()[-1]) == ((a + b) * b).tolist()
