"""Bring your own model: torchvision, timm and a user's factory through `train` and `compile` (real CLI, real IREE)."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap

import numpy as np
import pytest

from edgeskip.export import emulate
from edgeskip.manifest import load_manifest
from tests.conftest import cli, inproc

USER_MODULE = """
    from torch import nn

    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(x + self.f(x))

    def tiny(num_classes, in_channels, width=8):
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1), nn.ReLU(), Res(width), Res(width),
                             nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(), Res(2 * width), Res(2 * width),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
"""


def run(*args, pythonpath=None):
    env = {"PYTHONPATH": os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")])} if pythonpath else None
    return cli(*args, timeout=900, env=env)


@pytest.fixture(scope="module")
def user_bundle(tmp_path_factory):
    """A user's model given as module:factory from a file, trained on digits and compiled for host + aarch64."""
    d = tmp_path_factory.mktemp("user")
    (d / "usermodels.py").write_text(textwrap.dedent(USER_MODULE))
    ck = d / "model.pt"
    res = run(
        "train", "--model", "usermodels:tiny", "--epochs", "8", "--out", ck, "--quiet", "--threads", "1", pythonpath=d
    )
    assert res.returncode == 0, res.stderr
    out = d / "bundle"
    res = run(
        "compile",
        "--checkpoint",
        ck,
        "--target",
        "host,aarch64",
        "--out",
        out,
        "--repeats",
        "3",
        "--static-data-tiling",
        "on",
        "--quiet",
        pythonpath=d,
    )
    assert res.returncode == 0, res.stderr
    return d, ck, out


@pytest.mark.slow
def test_a_users_model_becomes_a_verified_bundle(user_bundle):
    d, ck, out = user_bundle
    m = load_manifest(out)
    assert m.model["model"] == "usermodels:tiny" and m.model["blocks"] == ["2", "3", "6", "7"]
    assert m.num_gates == 4 and m.input.shape == ("N", 1, 8, 8)
    v = m.extra["verification"]
    assert v["onnx"]["gated_vs_torch"] <= 1e-4 and v["iree"]["host"]["iree_vs_onnxruntime"] <= 1e-4
    if emulate.missing() is None or os.environ.get("CI"):
        assert v["iree"]["aarch64"]["executed"] and v["iree"]["aarch64"]["aarch64_vs_host"] <= 1e-4
    front = json.loads((out / "pareto.json").read_text())
    assert front["model"]["model"] == "usermodels:tiny" and front["configs"][0]["val_accuracy"] > 0.8
    ins = run("inspect", out)
    assert ins.returncode == 0 and "usermodels:tiny" in ins.stdout, ins.stderr


def test_the_runtime_serves_a_users_model_as_pytorch_computes_it(user_bundle):
    """The deployed executor (no torch) against the checkpoint, config by config."""
    import torch

    from edgeskip.runtime.executor import open_executor
    from edgeskip.train import load_model

    d, ck, out = user_bundle
    sys.path.insert(0, str(d))
    try:
        model, _ = load_model(ck)
    finally:
        sys.path.remove(str(d))
    m = load_manifest(out)
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    ex = open_executor(out, backend="iree")
    with torch.no_grad():
        for k, c in enumerate(m.configs):  # the static config modules
            np.testing.assert_allclose(
                ex.infer(x, config=k), model(torch.from_numpy(x), list(c.skip)).numpy(), atol=1e-4, rtol=1e-4
            )
        for skip in ("0101", "1010"):  # any skip array: the gated module
            np.testing.assert_allclose(
                ex.infer(x, skip=skip), model(torch.from_numpy(x), skip).numpy(), atol=1e-4, rtol=1e-4
            )


def test_model_options_bad_input(tmp_path):
    """One line, exit 2, nothing written: the first case as a user's process, the rest through the same click
    command in this process (a Python start and a torch import each would cost 3 s)."""

    def bad(*args, fragment, process=False):
        argv = ["train", *map(str, args), "--epochs", "1", "--out", str(tmp_path / "m.pt"), "--quiet"]
        res = run(*argv) if process else inproc(*argv)
        code, err = res.returncode, res.stderr
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
        assert not (tmp_path / "m.pt").exists() and not list(tmp_path.glob(".*"))

    bad("--model", "torchvision:no_such_net", fragment="unknown torchvision model", process=True)
    bad("--model", "no_such_module_xyz:f", fragment="cannot import")
    bad("--model", "torchvision:resnet18", "--width", "8", fragment="--width shape(s) the built-in ResNet")
    bad("--model-arg", "width_mult=0.5", fragment="--model-arg and --blocks apply to")
    bad("--model", "torchvision:resnet18", "--blocks", "layer2.0", fragment="not a residual block")
    bad("--model", "torchvision:shufflenet_v2_x0_5", fragment="--blocks cannot name one either")  # an honest hint
    bad("--model", "torchvision:resnet18", "--model-arg", "oops", fragment="KEY=VALUE")
    bad("--model", "torchvision:resnet18", "--gates", "rnn", fragment="learned gates")
    bad("--model", "torchvision:resnet18", "--init-weights", tmp_path / "none.pt", fragment="does not exist")


SE_MODULE = """
    from torch import nn

    class SE(nn.Module):
        # a MobileNetV3 block at 288 channels on a 1x1 map: IREE 3.13 asks 145-148 KiB of stack for it (by vector width)
        def __init__(self, c=48, e=288, r=72):
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(c, e, 1), nn.Hardswish(), nn.Conv2d(e, e, 1, groups=e),
                                        nn.Hardswish())
            self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(e, r, 1), nn.ReLU(), nn.Conv2d(r, e, 1),
                                         nn.Hardsigmoid())
            self.project = nn.Conv2d(e, c, 1)

        def forward(self, x):
            h = self.expand(x)
            return x + self.project(h * self.squeeze(h))

    def se_net(num_classes, in_channels):
        return nn.Sequential(nn.Conv2d(in_channels, 48, 8), nn.ReLU(), SE(), SE(), nn.Flatten(),
                             nn.Linear(48, num_classes))
"""


def test_what_iree_cannot_compile_is_left_out_and_said(tmp_path, monkeypatch):
    """Issue #35: where IREE cannot build the host module the bundle is made for onnxruntime alone, with IREE's
    reason in the manifest; where one other target fails, that target is left out, with its reason, and the rest
    stands. Real failures: IREE's stack limit held at 64 KiB (this model needs 145-148 KiB, by the host's vector width: by default the module is
    compiled with 256 KiB, and the manifest's flags say so), and an aarch64 CPU that does not exist (the link
    fails)."""
    import torch

    from edgeskip.errors import EdgeskipError
    from edgeskip.export import iree_compile
    from edgeskip.export.iree_compile import Target
    from edgeskip.runtime.executor import open_executor
    from edgeskip.train import load_model

    (tmp_path / "semodels.py").write_text(textwrap.dedent(SE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    ck = tmp_path / "se.pt"
    res = inproc("train", "--model", "semodels:se_net", "--epochs", "1", "--out", ck, "--quiet", "--threads", "1")
    assert res.returncode == 0, res.stderr
    model, _ = load_model(ck)
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = {s: model(torch.from_numpy(x), list(s)).numpy() for s in [(1, 1), (1, 0), (0, 1), (0, 0)]}

    def check(ex, m):
        for c in m.configs:
            np.testing.assert_allclose(ex.infer(x, config=c.index), ref[c.skip], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(ex.infer(x, skip=(0, 1)), ref[(0, 1)], atol=1e-4, rtol=1e-4)

    monkeypatch.setattr(iree_compile, "STACK_LIMIT_CAP", 64 * 1024)
    ort_only = tmp_path / "ort_only"
    args = ["--repeats", "2", "--static-data-tiling", "off", "--quiet"]
    res = inproc("compile", "--checkpoint", ck, "--out", ort_only, "--target", "host", *args)
    assert res.returncode == 0, res.stderr
    assert "no IREE modules: onnxruntime only" in res.stdout
    m = load_manifest(ort_only)
    assert m.iree is None and m.targets == {} and m.host_fastest == "onnxruntime"
    assert re.search(r"needs \d+ bytes of stack", m.iree_unavailable) and not (ort_only / "iree").exists()
    assert m.extra["verification"]["iree"] == {"available": False, "reason": m.iree_unavailable}
    ex = open_executor(ort_only)
    assert ex.backend == "onnxruntime"
    check(ex, m)
    with pytest.raises(EdgeskipError, match=r"this bundle has no IREE modules .*needs \d+ bytes.*onnxruntime"):
        open_executor(ort_only, backend="iree")
    res = inproc("inspect", ort_only)
    assert res.returncode == 0 and "IREE: no modules (iree-compile for host: a dispatch needs" in res.stdout

    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(iree_compile.TARGETS, "aarch64", Target("aarch64", "aarch64-linux-gnu", cpu="no-such-cpu"))
    partial = tmp_path / "partial"
    res = inproc("compile", "--checkpoint", ck, "--out", partial, "--target", "host,aarch64", *args)
    assert res.returncode == 0, res.stderr
    assert "target aarch64 left out: iree-compile for aarch64 failed" in res.stdout
    m = load_manifest(partial)
    assert list(m.targets) == ["host"] and "--iree-llvmcpu-stack-allocation-limit=262144" in m.targets["host"].flags
    assert not m.targets["host"].static_data_tiling  # --static-data-tiling off: not measured, recorded
    assert m.extra["verification"]["iree"]["aarch64"]["compiled"] is False
    assert not (partial / "iree" / "aarch64").exists()
    check(open_executor(partial, backend="iree"), m)
