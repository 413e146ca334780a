"""Config-specialised IREE modules over one shared weight archive."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeskip.backends.iree import SharedIreeExecutor
from edgeskip.errors import EdgeskipError
from edgeskip.export.iree_compile import TARGETS, compile_mlir
from edgeskip.export.shared_weights import (
    SharedModules,
    build_shared_modules,
    check_shared,
    merge_modules,
    write_weights,
)
from edgeskip.models import build_model
from tests.conftest import shared as shared_artefact

CONFIGS = [(1, 1, 1, 1, 1, 1), (1, 0, 1, 1, 0, 1), (0, 0, 0, 0, 0, 0)]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_model, tiny_gated):
    """The modules of CONFIGS over one archive (their graphs cut from the gated graph, as `compile` does), built
    once per run (tests/conftest.py: shared)."""

    def build(d):
        sm = build_shared_modules(tiny_model, CONFIGS, TARGETS["host"], d / "out", d / "work", tiny_gated)
        doc = {k: [str(p) for p in v] for k, v in vars(sm).items() if k != "weights"}
        (d / "sm.json").write_text(json.dumps({**doc, "weights": str(sm.weights)}))

    d = shared_artefact(tmp_path_factory, "shared_weights", build)
    doc = json.loads((d / "sm.json").read_text())
    weights = Path(doc.pop("weights"))
    return d, SharedModules(weights=weights, **{k: tuple(map(Path, v)) for k, v in doc.items()})


def test_all_configs_in_one_context_match_pytorch(shared, tiny_model, digits_splits):
    _, sm = shared
    ex = SharedIreeExecutor(sm.weights, sm.modules)
    assert len(ex) == 3 and [m.name for m in ex.vm_modules] == ["static_111111", "static_101101", "static_000000"]
    x = torch.from_numpy(digits_splits.test.x[:8]).float()
    x = (x - digits_splits.norm.mean[0]) / digits_splits.norm.std[0]
    with torch.no_grad():
        for k, s in enumerate(CONFIGS):
            assert np.abs(ex.run(k, x.numpy()) - tiny_model(x, s).numpy()).max() <= 1e-4
    # switching back and forth gives the same answers (no state, no reload)
    assert np.array_equal(ex.run(0, x.numpy()), ex.run(0, x.numpy()))


def test_data_tiling_is_chosen_per_function(shared):
    """IREE's data-tiling flag is module-wide; the hint on a function keeps its dispatches untiled, the other
    functions of the same module stay tiled (compiled to flow, where a tiled dispatch carries an encoding)."""
    d, sm = shared
    merged = merge_modules({"full": sm.mlir[0], "none": sm.mlir[2]}, d / "merged_two.mlir")
    untiled = dataclasses.replace(TARGETS["host"], static_data_tiling=False)
    out = compile_mlir(merged, untiled, d / "flow.vmfb", extra=["--compile-to=flow"], channels_last=("full",))
    ops = re.split(r"\n  (?=[a-z])", out.read_text())  # the module's top-level operations
    of = lambda fn: [op for op in ops if op.startswith((f"flow.executable private @{fn}$", f"util.func public @{fn}"))]  # noqa: E731
    assert len(of("full")) > 3 and len(of("none")) > 3  # its dispatches and its functions
    assert not any("iree_encoding" in op for op in of("full"))  # the hinted function: no data tiling
    assert any("iree_encoding" in op for op in of("none"))  # the other: tiled as before


def test_weights_live_only_in_the_archive(shared, tiny_model):
    _, sm = shared
    w = tiny_model.fc.weight.detach().numpy().tobytes()  # no BN after it, so stored unchanged
    assert w in sm.weights.read_bytes()
    for m in sm.modules:
        assert w not in m.read_bytes()


def test_check_shared_rejects_foreign_weights(shared, tiny_model, tmp_path):
    d, sm = shared
    other = build_model(tiny_model.cfg).eval()  # same names, different values
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    foreign = write_weights(other, tmp_path / "other.irpa", tmp_path)  # its archive: nothing to compile
    assert check_shared(sm.weights, d / "work" / "static_101101.irpa") > 0
    with pytest.raises(EdgeskipError, match="differs from the shared archive"):
        check_shared(foreign, d / "work" / "static_101101.irpa")


def test_compile_jobs_setting(monkeypatch):
    import pytest

    from edgeskip.errors import EdgeskipError
    from edgeskip.export.iree_compile import compile_jobs

    monkeypatch.setenv("EDGESKIP_COMPILE_JOBS", "3")
    assert compile_jobs() == 3
    monkeypatch.setenv("EDGESKIP_COMPILE_JOBS", "0")
    with pytest.raises(EdgeskipError, match="EDGESKIP_COMPILE_JOBS"):
        compile_jobs()
    monkeypatch.delenv("EDGESKIP_COMPILE_JOBS")
    assert compile_jobs() >= 1


def test_onnx_graphs_share_one_file_of_weights(tiny_model, tiny_gated, tmp_path):
    """Every graph's initializers in one file, each distinct tensor once; onnxruntime computes the same, bit for bit."""
    import shutil

    from edgeskip.backends.ort import ort_session
    from edgeskip.export.onnx_export import export_static
    from edgeskip.export.shared_weights import share_onnx_weights

    d = tmp_path / "onnx"
    d.mkdir()
    graphs = [Path(shutil.copyfile(tiny_gated, d / "gated.onnx"))]
    graphs += [export_static(tiny_model, s, d / f"c{k}.onnx", tiny_gated) for k, s in enumerate(CONFIGS)]
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8), np.float32)
    feeds = [{"image": x, "skip": np.array(CONFIGS[1], bool)}] + [{"image": x}] * len(CONFIGS)
    before = [ort_session(g).run(None, f)[0] for g, f in zip(graphs, feeds)]
    sizes = sum(g.stat().st_size for g in graphs)
    stats = share_onnx_weights(graphs, d / "weights.bin")
    assert [np.array_equal(ort_session(g).run(None, f)[0], b) for g, f, b in zip(graphs, feeds, before)] == [True] * 4
    params = sum(p.numel() * 4 for p in tiny_model.parameters())
    size = (d / "weights.bin").stat().st_size  # the tensors at 64-byte aligned offsets: about one copy, not four
    assert stats["bytes_shared"] <= size < stats["bytes_shared"] + 64 * stats["distinct"] and size <= 1.1 * params
    assert stats["bytes_in_graphs"] > 2.5 * stats["bytes_shared"]
    assert sum(g.stat().st_size for g in graphs) + stats["bytes_shared"] < sizes / 2
    # the graphs need the file beside them; a graph that is not beside it, or already shared, is refused
    moved = Path(shutil.copyfile(graphs[1], tmp_path / "alone.onnx"))
    with pytest.raises(EdgeskipError, match="onnxruntime cannot load"):
        ort_session(moved)
    with pytest.raises(EdgeskipError, match="is not beside"):
        share_onnx_weights([moved], d / "again.bin")
    with pytest.raises(EdgeskipError, match="already has external data"):
        share_onnx_weights(graphs[:1], d / "again.bin")
    with pytest.raises(EdgeskipError, match="exists"):  # other graphs may point into it
        share_onnx_weights(graphs[:1], d / "weights.bin")
    assert not (d / "again.bin").exists()  # nothing half-written
