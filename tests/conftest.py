"""Shared fixtures: digits splits and one tiny trained model (trained once per session)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from edgeskip.models import ResNetConfig
from edgeskip.train import DataSpec, TrainConfig, load_checkpoint, train

torch.set_num_threads(1)  # tests run beside other work on a 2-core machine; keep them predictable

TINY = ResNetConfig(depth=20, widths=(8, 16, 32))


def edited_bundle(src, dest, edit):
    """A copy of bundle ``src`` at ``dest`` whose manifest ``edit(doc)`` changed in place (hashes untouched)."""
    shutil.copytree(src, dest)
    doc = json.loads((dest / "manifest.json").read_text())
    edit(doc)
    (dest / "manifest.json").write_text(json.dumps(doc))
    return dest


def require_aarch64():
    """Skip where qemu and the aarch64 runtime are missing; on CI, fail instead (CI must run the ARM checks)."""
    from edgeskip.export import emulate

    why = emulate.missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the aarch64 check: {why}")
        pytest.skip(why)


def inflate_accuracies(doc):
    """The H4 edit of issue #11: every config's validation accuracy set to 0.999, all hashes still matching."""
    for c in doc["configs"]:
        c["val_accuracy"] = 0.999


@pytest.fixture(scope="session")
def digits_splits():
    return DataSpec("digits").load()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, digits_splits):
    """Path of a ResNet-20 (width 8) trained 12 epochs on digits with stochastic depth."""
    path = tmp_path_factory.mktemp("tiny") / "model.pt"
    train(path, DataSpec("digits"), TINY, TrainConfig(epochs=12, batch_size=64, lr=0.1), splits=digits_splits,
          progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint).model()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tiny_checkpoint):
    """A bundle of the tiny model for host, aarch64 and odroid-xu4, built with the real CLI."""
    out = tmp_path_factory.mktemp("b") / "bundle"
    res = subprocess.run([sys.executable, "-m", "edgeskip.cli", "compile", "--checkpoint", str(tiny_checkpoint),
                          "--target", "host,aarch64,odroid-xu4", "--out", str(out), "--repeats", "3", "--quiet"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "wrote bundle" in res.stdout
    return out


# wide enough that onnxruntime's int8 kernels beat its float ones (8-channel blocks are too small to gain)
WIDE = ResNetConfig(depth=14, widths=(32, 64, 128))


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory, digits_splits):
    """A fractional-depth bundle (`compile --int8`, host) of a ResNet-14 of widths 32/64/128 trained on digits."""
    d = tmp_path_factory.mktemp("int8")
    train(d / "model.pt", DataSpec("digits"), WIDE, TrainConfig(epochs=8, batch_size=64, lr=0.1), splits=digits_splits,
          progress=False)
    out = d / "bundle"
    res = subprocess.run([sys.executable, "-m", "edgeskip.cli", "compile", "--checkpoint", str(d / "model.pt"),
                          "--target", "host", "--int8", "--calibration-images", "128", "--out", str(out),
                          "--repeats", "10", "--quiet"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "onnxruntime front (stepping order)" in res.stdout
    return out


@pytest.fixture(scope="session")
def skipnet_checkpoint(tmp_path_factory, tiny_checkpoint):
    """A SkipNet (FFGate-I) on the tiny backbone: SP, then HRL with a skip reward so decisions vary by input."""
    from edgeskip.models.gates import GateConfig
    from edgeskip.train.gates import GateTraining, train_gates

    d = tmp_path_factory.mktemp("skipnet")
    train_gates(d / "sp.pt", None, GateConfig("ffgate1"), TrainConfig(epochs=1, batch_size=64, lr=0.01),
                GateTraining("sp"), init=tiny_checkpoint, progress=False)
    train_gates(d / "hrl.pt", None, GateConfig("ffgate1"), TrainConfig(epochs=8, batch_size=64, lr=0.01),
                GateTraining("hrl", alpha=1.0), init=d / "sp.pt", progress=False)
    return d / "hrl.pt"


@pytest.fixture(scope="session")
def skipnet_bundle(tmp_path_factory, skipnet_checkpoint):
    """The SkipNet bundle for host, aarch64 and odroid-xu4, built with the real CLI."""
    out = tmp_path_factory.mktemp("sb") / "skipnet"
    res = subprocess.run([sys.executable, "-m", "edgeskip.cli", "compile", "--checkpoint", str(skipnet_checkpoint),
                          "--target", "host,aarch64,odroid-xu4", "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "wrote SkipNet bundle" in res.stdout
    return out


@pytest.fixture(scope="session")
def dfs_checkpoint(tmp_path_factory, tiny_checkpoint):
    """A DFS model on the tiny backbone: step 1 (full precision), then step 2 toward cp 0.4, so options vary (8-bit
    and full precision on digits)."""
    from edgeskip.models.gates import GateConfig
    from edgeskip.train.gates import GateTraining, train_gates

    d = tmp_path_factory.mktemp("dfs")
    train_gates(d / "full.pt", None, GateConfig("dfs"), TrainConfig(epochs=1, batch_size=64, lr=0.05),
                GateTraining("dfs-full"), init=tiny_checkpoint, progress=False)
    train_gates(d / "cp.pt", None, GateConfig("dfs"), TrainConfig(epochs=3, batch_size=64, lr=0.05),
                GateTraining("dfs", alpha=2.0, cp_target=0.4), init=d / "full.pt", progress=False)
    return d / "cp.pt"


@pytest.fixture(scope="session")
def dfs_bundle(tmp_path_factory, dfs_checkpoint):
    """The DFS bundle for host and aarch64, built with the real CLI."""
    out = tmp_path_factory.mktemp("db") / "dfs"
    res = subprocess.run([sys.executable, "-m", "edgeskip.cli", "compile", "--checkpoint", str(dfs_checkpoint),
                          "--target", "host,aarch64", "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "wrote DFS bundle" in res.stdout
    return out
