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
    DATA_TILING_HINT,
    TARGETS,
    annotate_pipeline,
    compile_mlir,
    import_onnx,
    parse_targets,
)
from edgeskip.export.onnx_export import specialise, subgraphs
from edgeskip.export.shared_weights import module_name
from tests.conftest import require_arm, shared

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
    require_arm()
    d, gated, _, mlir = exported
    host = IreeModule(compile_mlir(mlir, TARGETS["host"], d / "g_host2.vmfb"))
    arm = compile_mlir(mlir, TARGETS["aarch64-cortex-a72"], d / "gated_a72.vmfb")
    assert embedded_elfs(arm)[0].machine == "EM_AARCH64"
    x = images.numpy()[:4]
    for s in SKIPS[1:3]:
        skip = np.array(s, dtype=bool)
        assert np.abs(emulate.run_module(arm, [x, skip]) - host(x, skip)).max() <= 1e-4


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
    untiled = annotate_pipeline(text, ["f"], CHANNELS_LAST, untiled=True).splitlines()
    assert all(f"{DATA_TILING_HINT}, iree.abi.stub" in ln for ln in untiled[:2]) and DATA_TILING_HINT not in untiled[2]


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
    at 0.5, exports with no random operator (it used to hold ``RandomUniformLike``) and computes what PyTorch does.
    At 8x8 its second stage runs on a 1x1 map, where a block (its LayerNorm permutes) returns other strides than a
    skipped one, which ``torch.cond`` refused before the branches were made contiguous."""
    import torch

    from edgeskip.export.onnx_export import export_gated
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
    net = ChainNet(NetConfig("torchvision:convnext_tiny", input_size=(8, 8)), source).eval()
    assert net.cfg.num_gates == 4
    gated = export_gated(net, tmp_path / "gated.onnx")
    path = export_static(net, [1, 0, 1, 1], tmp_path / "g.onnx", gated)
    random = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli", "Dropout"}
    for graph in (gated, path):
        m = onnx.load(str(graph))
        assert not {n.op_type for g in subgraphs(m.graph) for n in g.node} & random
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        ref = net(x, [1, 0, 1, 1]).numpy()
    np.testing.assert_allclose(ort_session(path).run(None, {"image": x.numpy()})[0], ref, atol=1e-5, rtol=1e-5)
    got = ort_session(gated).run(None, {"image": x.numpy(), "skip": np.array([1, 0, 1, 1], bool)})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h,k,s,p,cip", [(8, 2, 2, 0, 0), (7, 2, 2, 0, 1), (8, 3, 2, 1, 1)])
def test_ceil_mode_average_pools_compile_as_pytorch_computes_them(tmp_path, h, k, s, p, cip):
    """Issue #35: IREE 3.13 computes these ceil-mode pools wrong (timm's avg_down shortcut, the first, 4x the value
    with a dynamic batch); the export's rewrite gives PyTorch's numbers on IREE and onnxruntime
    (bench/iree_pool_ceil.py: 12 of 64 cases wrong before, 0 after)."""
    import torch
    from onnx import TensorProto, helper

    from edgeskip.export.onnx_export import _pool_out, fix_average_pools

    out = _pool_out(h, k, s, p, p, True)
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, ceil_mode=1,
        count_include_pad=cip,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, h, h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, out, out])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert fix_average_pools(model) == 1
    path = tmp_path / "pool.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(0).standard_normal((2, 3, h, h)).astype(np.float32)
    ref = torch.nn.functional.avg_pool2d(torch.from_numpy(x), k, s, p, True, bool(cip)).numpy()
    np.testing.assert_allclose(ort_session(path).run(None, {"x": x})[0], ref, atol=1e-6)
    vmfb = compile_mlir(import_onnx(path, tmp_path / "pool.mlir"), TARGETS["host"], tmp_path / "pool.vmfb")
    np.testing.assert_allclose(np.asarray(IreeModule(vmfb, function="g")(x)), ref, atol=1e-6)


def squeeze_excite_graph(path):
    """The 10 nodes of timm's MobileNetV3 that IREE refuses at its default stack limit with a dynamic batch
    (1x1 convolution to 288 channels on a 1x1 map, hard-swish, depthwise, squeeze-excite; found by bisecting the
    exported network: 148,480 bytes asked, bench/README section 12.7)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c, r = 288, 72

    def w(name, shape):
        return numpy_helper.from_array((0.1 * rng.standard_normal(shape)).astype(np.float32), name)

    inits = [w("w0", (c, 48, 1, 1)), w("b0", (c,)), w("wd", (c, 1, 1, 1)), w("bd", (c,)), w("w1", (r, c, 1, 1))]
    inits += [w("b1", (r,)), w("w2", (c, r, 1, 1)), w("b2", (c,)), numpy_helper.from_array(np.array([2, 3]), "ax")]
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w0", "b0"], ["a"]),
        node("HardSwish", ["a"], ["b"]),
        node("Conv", ["b", "wd", "bd"], ["c"], group=c),
        node("HardSwish", ["c"], ["d"]),
        node("ReduceMean", ["d", "ax"], ["m"], keepdims=1),
        node("Conv", ["m", "w1", "b1"], ["s1"]),
        node("Relu", ["s1"], ["s2"]),
        node("Conv", ["s2", "w2", "b2"], ["s3"]),
        node("HardSigmoid", ["s3"], ["s4"], alpha=1 / 6),
        node("Mul", ["d", "s4"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 48, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 1, 1])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_a_dispatch_over_the_stack_limit_compiles_with_a_raised_one_and_gets_its_stack(tmp_path, monkeypatch):
    """Issue #35: compile retries with the limit asked for (a power of two, capped), the target's flags say so, the
    module computes what onnxruntime does, and the runtime gives it the stack: local-task workers (128 KiB by
    default: this module segfaulted there in 2 runs of 3) get twice the limit; a small thread stack is a
    one-line error."""
    import subprocess
    import sys
    import threading

    from edgeskip.backends.iree import prepare_stack, stack_limit
    from edgeskip.export import iree_compile

    path = squeeze_excite_graph(tmp_path / "se.onnx")
    mlir = import_onnx(path, tmp_path / "se.mlir")
    compiled = iree_compile.compile_module(mlir, TARGETS["host"], tmp_path / "se.vmfb")
    assert stack_limit(compiled.target.flags()) == 262144 and stack_limit(TARGETS["host"].flags()) == 32768
    x = np.random.default_rng(1).standard_normal((3, 48, 1, 1)).astype(np.float32)
    ref = ort_session(path).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.asarray(IreeModule(compiled.path, function="g")(x)), ref, atol=1e-5)
    flags = compiled.target.flags()
    code = (
        "import sys, numpy as np\n"
        "from edgeskip.backends.iree import IreeModule, prepare_stack\n"
        f"prepare_stack({flags!r}, 'local-task')\n"
        f"m = IreeModule({str(compiled.path)!r}, driver='local-task', function='g')\n"
        "x = np.random.default_rng(1).standard_normal((3, 48, 1, 1)).astype(np.float32)\n"
        "for _ in range(20): y = np.asarray(m(x))\n"
        "np.save(sys.argv[1], y)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "y.npy")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-500:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, atol=1e-5)
    old = threading.stack_size(256 * 1024)
    try:
        with pytest.raises(EdgeskipError, match="need 262144 bytes of stack.*ulimit -s 512"):
            prepare_stack(flags, "local-sync")
    finally:
        threading.stack_size(old)
    prepare_stack(flags, "local-sync")  # the default stack holds it
    monkeypatch.setattr(iree_compile, "STACK_LIMIT_CAP", 128 * 1024)
    with pytest.raises(EdgeskipError, match=r"needs \d+ bytes of stack, more than edgeskip allows"):
        iree_compile.compile_module(mlir, TARGETS["host"], tmp_path / "capped.vmfb")
    assert not (tmp_path / "capped.vmfb").exists()


def test_an_export_or_a_tool_crash_is_one_line_with_its_cause(tmp_path):
    """Issue #35: an exporter failure names the failing op's error, not torch's banner; a compiler killed by a
    signal names the signal and the pass it was in, not LLVM's "Please report issues" line."""
    import subprocess

    import torch

    from edgeskip.export.iree_compile import _tool_error
    from edgeskip.export.onnx_export import export_graph

    class DataDependent(torch.nn.Module):
        def forward(self, image):
            return image * 2 if image.sum() > 0 else image  # no torch.cond: torch.export cannot trace it

    with pytest.raises(EdgeskipError) as err:
        export_graph(DataDependent(), (torch.ones(2, 1, 4, 4),), ["image"], tmp_path / "d.onnx")
    assert err.value.args[0].startswith("ONNX export of d.onnx failed: ") and "\n" not in err.value.args[0]
    assert not list(tmp_path.iterdir())
    banner = (
        "PLEASE submit a bug report to https://github.com/iree-org/iree/issues and include the crash backtrace.\n"
        "Stack dump:\n0.\tProgram arguments: iree-compile m.mlir\n"
        "1.\tRunning pass 'X86 DAG->DAG Instruction Selection' on function '@main_dispatch_3'\n"
        " #0 0x00007f llvm::sys::PrintStackTrace(llvm::raw_ostream&, int)\n"
    )
    crash = _tool_error("iree-compile for host", subprocess.CompletedProcess([], -11, "", banner))
    assert str(crash) == (
        "iree-compile for host crashed (SIGSEGV): 1. Running pass 'X86 DAG->DAG Instruction Selection' on "
        "function '@main_dispatch_3'"
    )
    plain = _tool_error("iree-compile for host", subprocess.CompletedProcess([], 1, "", "m.mlir:1:1: error: bad\n"))
    assert str(plain) == "iree-compile for host failed: m.mlir:1:1: error: bad"


def test_a_dispatch_iree_cannot_hoist_compiles_without_data_tiling(tmp_path):
    """Issue #35 (convnext_tiny at 32x32, bench/iree_unhoisted_alloca.py): LayerNorm -> transpose -> a convolution
    covering its whole 2x2 map, dynamic batch. IREE fails under data tiling; compile retries without it, the
    target's flags say so, and the module computes what onnxruntime does."""
    import onnx

    from bench.iree_unhoisted_alloca import graph
    from edgeskip.export import iree_compile

    path = tmp_path / "ln.onnx"
    onnx.save(graph("N", 2, 16, 32, 2), str(path))
    mlir = import_onnx(path, tmp_path / "ln.mlir")
    with pytest.raises(EdgeskipError, match="stack allocations need to be hoisted"):  # the bug, as IREE has it
        iree_compile._compile_layouts(mlir, TARGETS["host"], tmp_path / "tiled.vmfb", [], ())
    compiled = iree_compile.compile_module(mlir, TARGETS["host"], tmp_path / "ln.vmfb")
    flags = compiled.target.flags()
    assert iree_compile.NO_DATA_TILING in flags and not any("set-data-tiling-ops" in f for f in flags)
    x = np.random.default_rng(1).standard_normal((3, 2, 2, 16)).astype(np.float32)
    ref = ort_session(path).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.asarray(IreeModule(compiled.path, function="repro")(x)), ref, atol=1e-5)


def test_export_runs_in_place_activations_out_of_place_and_restores_them(tmp_path):
    """An ``inplace`` flag is off while exporting (torch.export then traces without functionalising each in-place op:
    faster, same numbers) and back on after, whether the export succeeds or fails."""
    import torch
    from torch import nn

    from edgeskip.export.onnx_export import export_graph

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU6(inplace=True), nn.Hardswish(inplace=True))

        def forward(self, image):
            return self.body(image)

    net = Net().eval()
    x = torch.randn(2, 1, 8, 8)
    path = export_graph(net, (x,), ["image"], tmp_path / "n.onnx", outputs=["y"])
    assert [m.inplace for m in net.modules() if hasattr(m, "inplace")] == [True, True]
    with torch.no_grad():
        ref = net(x.clone()).numpy()
    np.testing.assert_allclose(ort_session(path).run(None, {"image": x.numpy()})[0], ref, atol=1e-6)
    with pytest.raises(EdgeskipError, match="ONNX export"):
        export_graph(net, (x,), ["wrong"], tmp_path / "bad.onnx")  # dynamic_shapes names no argument
    assert [m.inplace for m in net.modules() if hasattr(m, "inplace")] == [True, True]
