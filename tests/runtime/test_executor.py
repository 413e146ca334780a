"""Bundle executors: Pareto configs through static executables, other skip arrays through the gated graph."""

import dataclasses

import numpy as np
import pytest
import torch

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.executor import IreeBundleExecutor, OrtBundleExecutor, open_executor
from edgeskip.train import load_checkpoint


@pytest.fixture(scope="module")
def images(digits_splits):
    x = torch.from_numpy(digits_splits.test.x[:6]).float()
    return ((x - digits_splits.norm.mean[0]) / digits_splits.norm.std[0]).numpy()


@pytest.mark.parametrize("cls", [IreeBundleExecutor, OrtBundleExecutor])
def test_every_config_and_arbitrary_skips_match_pytorch(bundle, images, cls):
    ex = cls(bundle)
    model = load_checkpoint(bundle / "model.pt").model()
    with torch.no_grad():
        for k, c in enumerate(ex.configs):
            ref = model(torch.from_numpy(images), c.skip).numpy()
            assert np.abs(ex.infer(images, config=k) - ref).max() <= 1e-4
            assert np.array_equal(ex.infer(images, skip=c.skip), ex.infer(images, config=k))  # static path
        for s in ("010101", "110011", "000001"):
            ref = model(torch.from_numpy(images), s).numpy()
            assert np.abs(ex.infer(images, skip=s) - ref).max() <= 1e-4  # gated path
    assert np.array_equal(ex.infer(images), ex.infer(images, config=0))


def test_bad_runtime_inputs(bundle, images):
    ex = open_executor(bundle, backend="iree")
    with pytest.raises(EdgeskipError, match="length 4, expected B_s = 6"):
        ex.infer(images, skip="1101")
    with pytest.raises(EdgeskipError, match="0 or 1"):
        ex.infer(images, skip=[1, 1, 2, 1, 1, 1])
    with pytest.raises(EdgeskipError, match=r"shape \[N, 1, 8, 8\]"):
        ex.infer(images[:, :, :4])
    with pytest.raises(EdgeskipError, match="out of range"):
        ex.infer(images, config=len(ex.configs))
    with pytest.raises(EdgeskipError, match="no modules for target"):
        IreeBundleExecutor(bundle, target="aarch64-cortex-a76")
    with pytest.raises(EdgeskipError, match="unknown backend"):
        open_executor(bundle, backend="tvm")
    assert open_executor(bundle).backend in ("iree", "onnxruntime")
    assert open_executor(bundle, backend="iree", driver="local-task").infer(images).shape == (6, 10)


def test_machine_target_picks_this_boards_modules(bundle):
    from edgeskip.manifest import load_manifest
    from edgeskip.runtime.executor import machine_target

    m = load_manifest(bundle)
    assert machine_target(m, "x86_64") == "host"
    assert machine_target(m, "aarch64") == "aarch64"
    assert machine_target(m, "armv7l") == "odroid-xu4"
    with pytest.raises(EdgeskipError, match="no IREE modules for this machine"):
        machine_target(m, "riscv64")
    host_only = dataclasses.replace(m, targets={"host": m.targets["host"]})
    with pytest.raises(EdgeskipError, match=r"\(armv7l\); it has host: compile it with --target odroid-xu4"):
        machine_target(host_only, "armv7l")
    with pytest.raises(EdgeskipError, match="--target aarch64, or serve its ONNX graphs"):
        machine_target(host_only, "aarch64")


def test_a_missing_iree_runtime_is_one_line_that_says_what_runs_the_bundle(monkeypatch):
    """armv7 has no IREE wheel: the error says how to build it (or use the C tool); elsewhere, what to install."""
    import sys

    from edgeskip.runtime.executor import require_iree_runtime

    require_iree_runtime("armv7l")  # installed here: nothing to say
    monkeypatch.setitem(sys.modules, "iree.runtime", None)  # as on a board without the wheel
    with pytest.raises(EdgeskipError, match="no Python runtime for armv7l: build it .* fetch-python --arch armv7"):
        require_iree_runtime("armv7l")
    with pytest.raises(EdgeskipError, match=r"pip install iree-base-runtime \(or --backend onnxruntime\)"):
        require_iree_runtime("aarch64")
