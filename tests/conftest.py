"""Shared fixtures: digits splits, tiny trained models and their bundles, each built once per test session.

The suite runs on pytest-xdist workers (pyproject's addopts). A model or bundle is built by the first worker that
asks for it, under a file lock in the run's shared temporary folder; the other workers wait for it and reuse it.
Without xdist the same code builds into the session's temporary folder. Artefacts are never reused across runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from edgeskip.models import ResNetConfig
from edgeskip.train import DataSpec, TrainConfig, load_checkpoint, train

torch.set_num_threads(1)  # tests run beside other work on a 2-core machine; keep them predictable

TINY = ResNetConfig(depth=20, widths=(8, 16, 32))
# the learned-gate baselines' backbone: 3 gated blocks (each gate adds to every DFS/SkipNet export and check)
TINY14 = ResNetConfig(depth=14, widths=(8, 16, 32))


# Work stealing (pyproject's addopts) hands each xdist worker a contiguous share of the collection, the first worker
# the first half. These files need none of the tiny model's artefacts (the int8 model, the DFS model, their own
# library models): they start the second half, so that worker builds them while the first builds the tiny model's
# bundles, and neither waits on the other's build at the start. The halves meet inside FILLER (fixture-free unit
# tests), so no other file is cut in two (its module fixtures would be built on both workers).
SECOND_HALF_FIRST = (
    "tests/export/test_zoo.py",  # the longest tests, none sharing an artefact: early, so no worker waits on them at the end
    "tests/export/test_bundle_int8.py",
    "tests/runtime/test_int8_runtime.py",
    "tests/export/test_dfs_export.py",
    "tests/export/test_generic_bundle.py",
)
FILLER = "tests/test_manifest.py"


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the order does not matter
    file = lambda i: i.nodeid.split("::")[0]  # noqa: E731
    ahead = [i for i in items if file(i) in SECOND_HALF_FIRST]
    filler = [i for i in items if file(i) == FILLER]
    rest = [i for i in items if file(i) not in SECOND_HALF_FIRST and file(i) != FILLER]
    half = len(items) // 2
    cut = half  # the last file boundary of ``rest`` at or before the half
    while 0 < cut < len(rest) and file(rest[cut - 1]) == file(rest[cut]):
        cut -= 1
    fill = min(len(filler), max(0, half - cut))
    items[:] = rest[:cut] + filler[:fill] + ahead + filler[fill:] + rest[cut:]


def edited_bundle(src, dest, edit):
    """A copy of bundle ``src`` at ``dest`` whose manifest ``edit(doc)`` changed in place (hashes untouched)."""
    shutil.copytree(src, dest)
    doc = json.loads((dest / "manifest.json").read_text())
    edit(doc)
    (dest / "manifest.json").write_text(json.dumps(doc))
    return dest


def require_arm(arch="aarch64"):
    """Skip where qemu and the ``arch`` runtime are missing; on CI, fail instead (CI must run the ARM checks)."""
    from edgeskip.export import emulate

    why = emulate.missing(arch)
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the {arch} check: {why}")
        pytest.skip(why)


def inflate_accuracies(doc):
    """The H4 edit of issue #11: every config's validation accuracy set to 0.999, all hashes still matching."""
    for c in doc["configs"]:
        c["val_accuracy"] = 0.999


def cli(*args, timeout=900, env=None, **kw):
    """Run ``edgeskip ARGS`` in a fresh interpreter (one thread per engine), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "edgeskip.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        **kw,
    )


def inproc(*args):
    """``edgeskip ARGS`` through the same click command in this process, as a CompletedProcess: for bad-input cases,
    where a user's process (each test runs at least one) would only add a Python start and a torch import."""
    from click.testing import CliRunner

    from edgeskip.cli import cli as command

    argv = [str(a) for a in args]
    res = CliRunner().invoke(command, argv, prog_name="edgeskip")
    return subprocess.CompletedProcess(argv, res.exit_code, res.stdout, res.stderr)


def shared(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """Folder ``name`` that ``build(folder)`` fills, built once per run and shared by every xdist worker.

    The first worker to ask builds it in place (paths inside it stay valid) and marks it complete; the others wait
    on the lock, so no worker sees half an artefact. A failed build is removed and fails every test that needs it,
    each with the build's own error. Tests must not write into a shared folder."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    final = root / "shared" / name
    done = final.with_name(name + ".done")
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if not done.exists():
            shutil.rmtree(final, ignore_errors=True)
            final.mkdir()
            try:
                build(final)
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
            done.touch()
    return final


def compiled(checkpoint: Path, out: Path, *args: str, expect: str) -> None:
    """``edgeskip compile`` of ``checkpoint`` into ``out`` (real CLI), asserting success and ``expect`` in stdout."""
    res = cli("compile", "--checkpoint", checkpoint, "--out", out, "--quiet", *args)
    assert res.returncode == 0, res.stderr
    assert expect in res.stdout, res.stdout


def trained(tmp_path_factory, name: str, cfg: ResNetConfig, epochs: int = 12) -> Path:
    """Checkpoint of ``cfg`` trained ``epochs`` on digits with stochastic depth, built once per run."""
    tc = TrainConfig(epochs=epochs, batch_size=64, lr=0.1)

    def build(d):
        train(d / "model.pt", DataSpec("digits"), cfg, tc, progress=False)

    return shared(tmp_path_factory, name, build) / "model.pt"


def gates_trained(tmp_path_factory, name: str, kind: str, init: Path, steps: list) -> Path:
    """Learned gates of ``kind`` on the backbone ``init``, trained step by step, each step from the one before:
    ``steps`` are (file name, epochs, lr, GateTraining); returns the last step's checkpoint, built once per run."""
    from edgeskip.models.gates import GateConfig
    from edgeskip.train.gates import train_gates

    def build(d):
        prev = init
        for file, epochs, lr, how in steps:
            tc = TrainConfig(epochs=epochs, batch_size=64, lr=lr)
            train_gates(d / file, None, GateConfig(kind), tc, how, init=prev, progress=False)
            prev = d / file

    return shared(tmp_path_factory, name, build) / steps[-1][0]


@pytest.fixture(scope="session")
def digits_splits():
    return DataSpec("digits").load()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a ResNet-20 (width 8) trained 12 epochs on digits with stochastic depth."""
    return trained(tmp_path_factory, "tiny", TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint).model()


@pytest.fixture(scope="session")
def tiny_gated(tmp_path_factory, tiny_model):
    """The tiny model's gated ONNX graph (``export_gated``), exported once per run: static graphs cut from it."""
    from edgeskip.export import export_gated

    return shared(tmp_path_factory, "tiny_gated", lambda d: export_gated(tiny_model, d / "gated.onnx")) / "gated.onnx"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tiny_checkpoint):
    """A bundle of the tiny model for host, aarch64 and odroid-xu4, built with the real CLI."""
    return (
        shared(
            tmp_path_factory,
            "bundle",
            lambda d: compiled(
                tiny_checkpoint,
                d / "bundle",
                "--target",
                "host,aarch64,odroid-xu4",
                "--repeats",
                "3",
                expect="wrote bundle",
            ),
        )
        / "bundle"
    )


# wide enough that onnxruntime's int8 kernels beat its float ones (8-channel blocks are too small to gain); trained
# without stochastic depth, so that skipping costs accuracy and int8 (free here) is what the front spends: with it,
# skipping two blocks cost nothing on digits, and whether an int8 config made the front came down to a 6% timing
# difference between 800 and 100, which the other worker's load flipped
WIDE = ResNetConfig(depth=14, widths=(32, 64, 128), sd_mode="none")


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory):
    """A fractional-depth bundle (`compile --int8`, host) of a ResNet-14 of widths 32/64/128 trained on digits
    (without stochastic depth: see WIDE)."""
    model = trained(tmp_path_factory, "wide", WIDE, epochs=8)

    def build(d):
        compiled(
            model,
            d / "bundle",
            "--target",
            "host",
            "--int8",
            "--calibration-images",
            "128",
            "--repeats",
            "10",
            "--static-data-tiling",  # the measured choice is the digits bundle's: one build here, not two
            "on",
            expect="onnxruntime front (stepping order)",
        )

    return shared(tmp_path_factory, "int8", build) / "bundle"


@pytest.fixture(scope="session")
def skipnet_checkpoint(tmp_path_factory, tiny_checkpoint):
    """A SkipNet (FFGate-I) on the tiny backbone: SP, then HRL with a skip reward so decisions vary by input."""
    from edgeskip.train.gates import GateTraining

    steps = [("sp.pt", 1, 0.01, GateTraining("sp")), ("hrl.pt", 8, 0.01, GateTraining("hrl", alpha=1.0))]
    return gates_trained(tmp_path_factory, "skipnet", "ffgate1", tiny_checkpoint, steps)


@pytest.fixture(scope="session")
def skipnet_bundle(tmp_path_factory, skipnet_checkpoint):
    """The SkipNet bundle for host, aarch64 and odroid-xu4, built with the real CLI."""
    return (
        shared(
            tmp_path_factory,
            "skipnet_bundle",
            lambda d: compiled(
                skipnet_checkpoint, d / "skipnet", "--target", "host,aarch64,odroid-xu4", expect="wrote SkipNet bundle"
            ),
        )
        / "skipnet"
    )


@pytest.fixture(scope="session")
def tiny14_checkpoint(tmp_path_factory):
    """Path of a ResNet-14 (width 8, 3 gated blocks) trained 12 epochs on digits with stochastic depth."""
    return trained(tmp_path_factory, "tiny14", TINY14)


@pytest.fixture(scope="session")
def dfs_checkpoint(tmp_path_factory, tiny14_checkpoint):
    """A DFS model on the ResNet-14 backbone: step 1 (full precision), then step 2 toward cp 0.4, so options vary (8-bit
    and full precision on digits)."""
    from edgeskip.train.gates import GateTraining

    steps = [
        ("full.pt", 1, 0.05, GateTraining("dfs-full")),
        ("cp.pt", 3, 0.05, GateTraining("dfs", alpha=2.0, cp_target=0.4)),
    ]
    return gates_trained(tmp_path_factory, "dfs", "dfs", tiny14_checkpoint, steps)


@pytest.fixture(scope="session")
def dfs_bundle(tmp_path_factory, dfs_checkpoint):
    """The DFS bundle for host and aarch64, built with the real CLI."""
    return (
        shared(
            tmp_path_factory,
            "dfs_bundle",
            lambda d: compiled(dfs_checkpoint, d / "dfs", "--target", "host,aarch64", expect="wrote DFS bundle"),
        )
        / "dfs"
    )
