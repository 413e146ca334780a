"""Export parity on real images: PyTorch vs onnxruntime vs IREE (host, aarch64 under qemu), armv7 ELF checks."""

import logging
from collections import Counter

import numpy as np
import onnx
import pytest

from edgeskip.backends.iree import IreeModule
from edgeskip.backends.ort import ort_session
from edgeskip.data.batches import iterate
from edgeskip.errors import EdgeskipError
from edgeskip.export import emulate, export_static, verify_onnx
from edgeskip.export.elf_check import check_no_imports, embedded_elfs
from edgeskip.export.iree_compile import (
    CHANNELS_LAST,
    TARGETS,
    annotate_pipeline,
    compile_mlir,
    import_onnx,
    parse_targets,
)
from edgeskip.export.onnx_export import specialise
from edgeskip.export.shared_weights import module_name
from tests.conftest import require_aarch64, shared

SKIPS = [(1, 1, 1, 1, 1, 1), (0, 0, 0, 0, 0, 0), (1, 0, 1, 1, 0, 1), (0, 1, 0, 1, 0, 1), (1, 1, 0, 0, 1, 1)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model, tiny_gated):
    """(a folder for the tests' own outputs, the gated graph, three traced static graphs, the gated MLIR); the
    graphs are exported once per run and shared by the xdist workers (tests/conftest.py: shared)."""

    def build(g):
        for s in SKIPS[:3]:
            export_static(tiny_model, s, g / f"{module_name(s)}.onnx")
        import_onnx(tiny_gated, g / "gated.mlir")

    g = shared(tmp_path_factory, "export_graphs", build)
    static = {tuple(bool(v) for v in s): g / f"{module_name(s)}.onnx" for s in SKIPS[:3]}
    return tmp_path_factory.mktemp("export"), tiny_gated, static, g / "gated.mlir"


@pytest.fixture(scope="module")
def images(digits_splits):
    xb, _ = next(iterate(digits_splits.test, digits_splits.norm, 16))
    return xb


def test_graph_structure(exported, tiny_model):
    _, gated, static, _ = exported
    g = onnx.load(gated)
    ops = Counter(n.op_type for n in g.graph.node)
    assert ops["If"] == tiny_model.cfg.num_gates
    assert [i.name for i in g.graph.input] == ["image", "skip"]
    assert g.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert g.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    s = onnx.load(static[(True, False, True, True, False, True)])
    assert "If" not in {n.op_type for n in s.graph.node}
    names = {i.name for i in s.graph.initializer}
    assert "blocks.4.conv1.weight" in names and "blocks.2.conv1.weight" not in names  # gate 1 = block 2 removed


def test_a_static_graph_cut_from_the_gated_graph_is_the_traced_one(exported, tiny_model, images):
    """What `compile` ships: each config's graph cut from the gated graph (Ifs folded) is the traced static graph:
    the same operators, the same weight names (the shared archive depends on them), the same outputs."""
    d, gated, static, _ = exported
    x = images.numpy()
    for s, traced in static.items():
        cut = export_static(tiny_model, s, d / f"cut_{''.join(map(str, map(int, s)))}.onnx", gated)
        a, b = onnx.load(traced).graph, onnx.load(cut).graph
        assert "If" not in {n.op_type for n in b.node}
        assert Counter(n.op_type for n in a.node) == Counter(n.op_type for n in b.node)
        named = lambda g: {t.name for t in g.initializer if "." in t.name}  # noqa: E731 (exporter constants aside)
        assert named(a) == named(b)
        np.testing.assert_allclose(
            ort_session(cut).run(None, {"image": x})[0], ort_session(traced).run(None, {"image": x})[0], atol=1e-5
        )
    with pytest.raises(EdgeskipError, match="not a gated graph"):  # a static graph cannot be cut again
        export_static(tiny_model, SKIPS[1], d / "again.onnx", static[(True,) * 6])
    with pytest.raises(EdgeskipError, match="not this model's gated graph"):  # another model's gated graph
        specialise(gated, [True] * 3, d / "again.onnx")
    assert not (d / "again.onnx").exists()


def test_onnxruntime_matches_pytorch_and_static_matches_gated(exported, tiny_model, images):
    _, gated, static, _ = exported
    worst = verify_onnx(tiny_model, images, gated, SKIPS, static)
    assert max(worst.values()) <= 1e-4
    assert set(worst) == {"gated_vs_torch", "static_vs_torch", "static_vs_gated"}


def test_verify_fails_loudly_on_a_mismatch(exported, tiny_model, images):
    _, gated, static, _ = exported
    wrong = {(True,) * 6: static[(False,) * 6]}  # the all-skip graph claimed as the no-skip config
    with pytest.raises(EdgeskipError, match="does not match PyTorch"):
        verify_onnx(tiny_model, images, None, [], wrong)


def test_iree_host_matches_onnxruntime(exported, images):
    d, gated, _, mlir = exported
    vmfb = compile_mlir(mlir, TARGETS["host"], d / "gated_host.vmfb")
    module = IreeModule(vmfb)
    sess = ort_session(gated)
    x = images.numpy()
    for s in SKIPS:
        skip = np.array(s, dtype=bool)
        ref = sess.run(None, {"image": x, "skip": skip})[0]
        assert np.abs(module(x, skip) - ref).max() <= 1e-4


def test_aarch64_module_runs_under_qemu(exported, images):
    require_aarch64()
    d, gated, _, mlir = exported
    host = IreeModule(compile_mlir(mlir, TARGETS["host"], d / "g_host2.vmfb"))
    arm = compile_mlir(mlir, TARGETS["aarch64-cortex-a72"], d / "gated_a72.vmfb")
    assert embedded_elfs(arm)[0].machine == "EM_AARCH64"
    x = images.numpy()[:4]
    for s in SKIPS[1:3]:
        skip = np.array(s, dtype=bool)
        assert np.abs(emulate.run_aarch64(arm, [x, skip]) - host(x, skip)).max() <= 1e-4


def test_armv7_modules_import_no_symbols(exported):
    d, _, _, mlir = exported
    ok = compile_mlir(mlir, TARGETS["odroid-xu4"], d / "gated_xu4.vmfb")
    elfs = check_no_imports(ok, machine="EM_ARM")
    assert elfs and all(e.elf_class == 32 for e in elfs)
    # the check can fail: with debug symbols on, the module imports the ARM EHABI personality routine
    dbg = compile_mlir(
        mlir, TARGETS["odroid-xu4"], d / "gated_xu4_dbg.vmfb", extra=["--iree-llvmcpu-debug-symbols=true"]
    )
    with pytest.raises(EdgeskipError, match="__aeabi_unwind_cpp_pr0"):
        check_no_imports(dbg)


def test_static_graphs_compile_channels_last_with_the_same_numbers(exported, images, caplog):
    d, _, static, _ = exported
    graph = static[(True,) * 6]
    mlir = import_onnx(graph, d / "static_full.mlir")
    nchw = IreeModule(compile_mlir(mlir, TARGETS["host"], d / "full_nchw.vmfb"))
    cl = IreeModule(compile_mlir(mlir, TARGETS["host"], d / "full_cl.vmfb", channels_last=("main_graph",)))
    assert sorted(p.name for p in d.iterdir() if p.name.startswith("full_")) == ["full_cl.vmfb", "full_nchw.vmfb"]
    x = images.numpy()
    ref = ort_session(graph).run(None, {"image": x})[0]
    assert np.abs(cl(x) - ref).max() <= 1e-4 and np.abs(cl(x) - nchw(x)).max() <= 1e-4
    # where the channels-last compile fails (here: no such function), the module is compiled as it is
    with caplog.at_level(logging.WARNING, logger="edgeskip.compile"):
        plain = IreeModule(compile_mlir(mlir, TARGETS["host"], d / "plain.vmfb", channels_last=("gated",)))
    assert "cannot set" in caplog.text and "on function gated: not in the module" in caplog.text
    assert np.abs(plain(x) - nchw(x)).max() == 0
    assert not [p for p in d.iterdir() if "input.mlir" in p.name]  # the input-phase MLIR is gone


def test_the_pipeline_attribute_goes_on_the_body_and_the_wrapper():
    text = (
        "  util.func public @f$async(%a: !hal.buffer_view) -> !hal.buffer_view attributes {iree.abi.stub} {\n"
        "  util.func public @f(%a: !hal.buffer_view) -> !hal.buffer_view attributes {iree.abi.stub} {\n"
        "  util.func public @g(%a: !hal.buffer_view) -> !hal.buffer_view attributes {iree.abi.stub} {\n"
    )
    out = annotate_pipeline(text, ["f"], CHANNELS_LAST).splitlines()
    attr = f'attributes {{preprocessing_pipeline = #util.preprocessing_pipeline<"{CHANNELS_LAST}">, iree.abi.stub}}'
    assert attr in out[0] and attr in out[1] and "preprocessing" not in out[2]


def test_bad_targets_and_compiler_failures(tmp_path):
    assert [t.name for t in parse_targets("host, odroid-xu4,host")] == ["host", "odroid-xu4"]
    with pytest.raises(EdgeskipError, match="unsupported target riscv"):
        parse_targets("host,riscv")
    bad = tmp_path / "bad.mlir"
    bad.write_text("this is not MLIR\n")
    with pytest.raises(EdgeskipError, match="iree-compile for host failed"):
        compile_mlir(bad, TARGETS["host"], tmp_path / "bad.vmfb")
    assert not (tmp_path / "bad.vmfb").exists() and [p.name for p in tmp_path.iterdir()] == ["bad.mlir"]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    with pytest.raises(EdgeskipError, match="iree-import-onnx"):
        import_onnx(junk, tmp_path / "junk.mlir")


def test_a_traced_models_own_stochastic_depth_exports_as_inference(tmp_path):
    """Eval means eval in the export too (issue #35): a ConvNeXt built in training mode, with its own stochastic depth
    at 0.5, exports with no random operator (it used to hold ``RandomUniformLike``) and computes what PyTorch does."""
    import torch

    from edgeskip.models import NetConfig
    from edgeskip.models.chain import ChainNet
    from edgeskip.models.zoo import import_torchvision

    convnext = import_torchvision().models.convnext
    torch.manual_seed(0)
    source = convnext.ConvNeXt(
        [convnext.CNBlockConfig(8, 16, 2), convnext.CNBlockConfig(16, None, 2)],
        stochastic_depth_prob=0.5,
        num_classes=10,
    )
    net = ChainNet(NetConfig("torchvision:convnext_tiny"), source).eval()
    assert net.cfg.num_gates == 4
    path = export_static(net, [1, 0, 1, 1], tmp_path / "g.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli", "Dropout"}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = net(x, [1, 0, 1, 1]).numpy()
    np.testing.assert_allclose(ort_session(path).run(None, {"image": x.numpy()})[0], ref, atol=1e-5, rtol=1e-5)
