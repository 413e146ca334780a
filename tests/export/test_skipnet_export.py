"""SkipNet export and deployment: one If per learned gate at batch 1, parity with PyTorch, IREE and ORT
executors, aarch64 under qemu, armv7 ELF check, and the bench replaying one trace against both models."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeskip.data.batches import iterate
from edgeskip.errors import EdgeskipError
from edgeskip.export import emulate
from edgeskip.export.skipnet_graph import export_skipnet, verify_skipnet_onnx
from edgeskip.manifest import load_manifest
from edgeskip.runtime.executor import IreeSkipNetExecutor, OrtSkipNetExecutor, open_executor
from edgeskip.train import load_checkpoint
from tests.conftest import cli as run


@pytest.fixture(scope="module")
def test_batch(digits_splits, skipnet_checkpoint):
    ck = load_checkpoint(skipnet_checkpoint)
    xb, yb = next(iterate(digits_splits.test, ck.norm, 64))
    return ck.model(), xb, yb


def test_decisions_vary_by_input(test_batch):
    model, xb, _ = test_batch
    with torch.no_grad():
        rate = (~model.run(xb).execute).float().mean(0)
    assert ((rate > 0) & (rate < 1)).any(), rate  # otherwise the parity tests below would not exercise both branches


def test_onnx_has_one_if_per_gate_and_matches_pytorch(tmp_path, test_batch):
    model, xb, _ = test_batch
    path = export_skipnet(model, tmp_path / "s.onnx")
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "If" for n in graph.node) == model.cfg.num_gates
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits", "executed"]
    check = verify_skipnet_onnx(model, xb, path)
    assert check["skipnet_vs_torch"] <= 1e-4 and check["decisions_differing"] == 0


def test_verification_catches_a_wrong_graph(tmp_path, test_batch):
    model, xb, _ = test_batch
    path = export_skipnet(model, tmp_path / "s.onnx")
    with torch.no_grad():  # push one gate to "always execute": PyTorch's decisions now differ from the graph's
        model.gates[4].linear.bias += 50.0
    try:
        with pytest.raises(EdgeskipError, match="does not match PyTorch"):
            verify_skipnet_onnx(model, xb, path)
    finally:
        with torch.no_grad():
            model.gates[4].linear.bias -= 50.0


def test_bundle_manifest_and_verification(skipnet_bundle):
    m = load_manifest(skipnet_bundle)
    assert m.kind == "skipnet" and m.extra["gates"]["kind"] == "ffgate1" and m.input.shape == (1, 1, 8, 8)
    assert set(m.targets) == {"host", "aarch64", "odroid-xu4"}
    files = {str(p.relative_to(skipnet_bundle)) for p in skipnet_bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert files == set(m.artifacts)
    assert {f"iree/{t}/skipnet.vmfb" for t in m.targets} <= files and m.onnx == {"main_graph": "onnx/skipnet.onnx"}
    c = m.configs[0]
    assert c.skip is None and c.module == "main_graph" and m.iree.functions == ("main_graph",)
    assert 0 < c.extra["test_mean_skipped"] < m.num_gates
    assert c.extra["latency_s_min"] <= c.latency_s <= c.extra["latency_s_max"]
    v = m.extra["verification"]
    assert v["onnx"]["decisions_differing"] == 0 and v["iree"]["host"]["iree_vs_onnxruntime"] <= 1e-4
    assert v["iree"]["odroid-xu4"]["elf_checked"] > 0 and v["iree"]["odroid-xu4"]["undefined_symbols"] == 0
    if emulate.missing() is None or os.environ.get("CI"):
        assert v["iree"]["aarch64"]["executed"] and v["iree"]["aarch64"]["aarch64_vs_host"] <= 1e-4
    if emulate.missing("armv7") is None or os.environ.get("CI"):
        assert v["iree"]["odroid-xu4"]["executed"] and v["iree"]["odroid-xu4"]["armv7_vs_host"] <= 1e-4


@pytest.mark.parametrize("cls", [IreeSkipNetExecutor, OrtSkipNetExecutor])
def test_executors_match_pytorch_per_input(skipnet_bundle, test_batch, cls):
    model, xb, _ = test_batch
    ex = cls(skipnet_bundle)
    logits = ex.infer(xb.numpy())
    with torch.no_grad():
        ref = model.run(xb)
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4)
    assert np.array_equal(ex.executed, ref.execute.numpy())
    assert ex.last_skipped == int((~ref.execute[-1]).sum())
    with pytest.raises(EdgeskipError, match="no skip array"):
        ex.infer(xb[:1].numpy(), skip=[1] * 6)
    with pytest.raises(EdgeskipError, match="one config"):
        ex.infer(xb[:1].numpy(), config=1)
    with pytest.raises(EdgeskipError, match="input must have shape"):
        ex.infer(np.zeros((1, 3, 8, 8), np.float32))


def test_open_executor_inspect_and_tampering(skipnet_bundle, tmp_path):
    import shutil

    assert isinstance(open_executor(skipnet_bundle, "iree", target="host"), IreeSkipNetExecutor)
    r = run("inspect", skipnet_bundle)
    assert r.returncode == 0 and "SkipNet (ffgate1 gates)" in r.stdout and "all 7 artifact hashes match" in r.stdout
    copy = tmp_path / "copy"
    shutil.copytree(skipnet_bundle, copy)
    with open(copy / "iree" / "host" / "skipnet.vmfb", "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    r = run("inspect", copy)
    assert r.returncode == 2 and r.stderr.strip() == f"error: bundle {copy}: sha256 mismatch for iree/host/skipnet.vmfb"


def test_bench_replays_one_trace_against_edgeskip_and_skipnet(bundle, skipnet_bundle, tmp_path):
    r = run("bench", bundle, "--compare", skipnet_bundle, "--count", "200", "--configs", "0", "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(doc["summaries"]) == {"adaptive", "original", "skipnet"}
    for s in doc["summaries"].values():
        assert s["sent"] == 200 and s["processed"] + s["dropped"] + s["errors"] == 200 and s["errors"] == 0
    sk = doc["records"]["skipnet"]
    skipped = [k for k, o in zip(sk["skipped"], sk["outcome"]) if o == "processed"]
    assert skipped and all(0 <= k <= 6 for k in skipped)
    assert "skipnet" in r.stdout
    r = run("bench", bundle, "--compare", bundle, "--count", "10", "--out", tmp_path / "c")
    assert r.returncode == 2 and "expects a SkipNet or DFS bundle" in r.stderr


def test_serve_a_skipnet_bundle(skipnet_bundle, digits_splits):
    sys.path.insert(0, str(Path(__file__).parent.parent / "runtime"))
    from daemon_process import Server

    from tests.runtime.test_server import raw_image

    s = Server(skipnet_bundle)
    try:
        status, doc = s.infer(raw_image(digits_splits, 3))
        assert status == 200 and doc["config"] == 0 and isinstance(doc["skipped_blocks"], int)
        status, doc = s.infer(b"\x00" * 12)
        assert status == 400
        assert s.call("/healthz")[0] == 200
    finally:
        assert s.stop() == 0
