"""QDQ export of int8 blocks (#15): PyTorch vs onnxruntime vs IREE host, real int8 kernels, aarch64 under qemu."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeskip.backends.iree import IreeModule
from edgeskip.backends.ort import ort_session
from edgeskip.data.batches import iterate
from edgeskip.export import emulate, export_static
from edgeskip.export.iree_compile import TARGETS, compile_mlir, import_onnx
from edgeskip.export.onnx_export import INT8_TOLERANCE
from edgeskip.export.shared_weights import module_name
from edgeskip.models.quant import calibrate, calibrate_rest
from edgeskip.pareto.design import calibration_batches
from edgeskip.skip import REST8
from tests.conftest import require_arm, shared

MIXED = (8, 1, 0, 8, 8, 1)  # gate 0 int8, gate 2 skipped, gates 3 and 4 an int8 run
ALL_REST = (8,) * 6 + (REST8,)  # the whole network in int8: the stem, the stage entries and the head too


@pytest.fixture(scope="module")
def quantized(tiny_checkpoint, digits_splits):
    from edgeskip.train import load_checkpoint

    m = load_checkpoint(tiny_checkpoint).model().eval()
    batches = calibration_batches(digits_splits, images=256)
    m.attach_int8(calibrate(m, batches, m.cfg.gated_blocks))
    m.attach_int8_rest(calibrate_rest(m, batches))
    return m


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, quantized):
    """(a folder for the tests' own outputs, the QDQ graphs of two option arrays), exported once per run."""
    paths = {o: f"{module_name(o)}.onnx" for o in [MIXED, (8,) * 6, MIXED + (REST8,), ALL_REST]}
    g = shared(
        tmp_path_factory, "int8_graphs", lambda g: [export_static(quantized, o, g / f) for o, f in paths.items()]
    )
    return tmp_path_factory.mktemp("int8"), {o: g / f for o, f in paths.items()}


@pytest.fixture(scope="module")
def images(digits_splits):
    return next(iterate(digits_splits.test, digits_splits.norm, 32))[0]


def test_qdq_graph_holds_int8_weights_and_keeps_float_names(graphs):
    _, paths = graphs
    g = onnx.load(paths[MIXED]).graph
    init = {i.name: i.data_type for i in g.initializer}
    assert init["blocks.1.w1"] == onnx.TensorProto.INT8 and init["blocks.1.b1"] == onnx.TensorProto.INT32
    assert init["blocks.5.w2"] == onnx.TensorProto.INT8
    assert "blocks.2.conv1.weight" in init and "blocks.1.conv1.weight" not in init  # gate 1 float, gate 0 int8
    assert not any(n.startswith("blocks.4.") for n in init)  # gate 2 skipped
    ops = {n.op_type for n in g.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_onnxruntime_runs_int8_kernels_and_matches_pytorch(graphs, quantized, images, tmp_path):
    _, paths = graphs
    for o, path in paths.items():
        with torch.no_grad():
            ref = quantized(images, o).numpy()
        got = ort_session(path, 1).run(None, {"image": images.numpy()})[0]
        assert np.abs(got - ref).max() <= INT8_TOLERANCE * max(1.0, np.abs(ref).max())
        assert np.median(np.abs(got - ref)) <= 1e-4  # the same integer arithmetic: almost every value agrees
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(paths[MIXED]), opts, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") == 2 * 3  # three int8 blocks, two convolutions each, all fused
    assert fused.count("QLinearAdd") == 3
    # the whole network in int8: every convolution (stem, blocks, the entries' projections) and the classifier fused
    opts.optimized_model_filepath = str(tmp_path / "opt_rest.onnx")
    ort.InferenceSession(str(paths[ALL_REST]), opts, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    convs = sum(n.op_type == "Conv" for n in onnx.load(paths[ALL_REST]).graph.node)  # QDQ convolutions, all
    assert convs > 6 * 2 + 1 and fused.count("Conv") == 0 and fused.count("QLinearConv") == convs
    assert fused.count("QGemm") == 1 and "Gemm" not in fused


def test_the_int8_rest_names_its_weights_apart(graphs):
    _, paths = graphs
    init = {i.name: i.data_type for i in onnx.load(paths[ALL_REST]).graph.initializer}
    assert init["stem.w"] == onnx.TensorProto.INT8 and init["fc.w"] == onnx.TensorProto.INT8
    assert init["blocks.3.w1"] == onnx.TensorProto.INT8  # stage 2's entry block, ungated
    assert not any(n.endswith(".weight") for n in init)  # no float weight left


def test_iree_host_matches_onnxruntime_on_int8(graphs, images):
    d, paths = graphs
    x = images.numpy()
    vmfb = compile_mlir(import_onnx(paths[MIXED], d / "mixed.mlir"), TARGETS["host"], d / "mixed_host.vmfb")
    ref = ort_session(paths[MIXED], 1).run(None, {"image": x})[0]
    assert np.abs(IreeModule(vmfb)(x) - ref).max() <= INT8_TOLERANCE * max(1.0, np.abs(ref).max())


@pytest.mark.slow
def test_aarch64_int8_module_runs_under_qemu(graphs, images):
    require_arm()
    d, paths = graphs
    mlir = import_onnx(paths[MIXED], d / "mixed_arm.mlir")
    host = IreeModule(compile_mlir(mlir, TARGETS["host"], d / "mixed_host2.vmfb"))
    arm = compile_mlir(mlir, TARGETS["aarch64-i8mm"], d / "mixed_i8mm.vmfb")
    x = images.numpy()[:4]
    assert np.abs(emulate.run_module(arm, [x]) - host(x)).max() <= INT8_TOLERANCE * max(1.0, np.abs(host(x)).max())


def test_verify_int8_passes_rounding_and_catches_a_wrong_scale(graphs, quantized, images, tmp_path):
    """The build's int8 check (rounding_tolerated): the bundle's graphs pass; a graph whose first quantisation scale
    is off by 20% (what a wrong calibration or a rewrite that recomputes scales does) fails in one line."""
    from edgeskip.errors import EdgeskipError
    from edgeskip.export.onnx_export import verify_int8

    _, paths = graphs
    ok = verify_int8(quantized, images, {ALL_REST: paths[ALL_REST], MIXED: paths[MIXED]})
    assert ok["images"] == len(images) and ok["images_past_tolerance"] <= 3
    model = onnx.load(paths[ALL_REST])
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    scale = next(t for t in model.graph.initializer if t.name == q.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * 1.2, scale.name))
    onnx.save(model, tmp_path / "wrong.onnx")
    with pytest.raises(EdgeskipError, match=r"int8 graph 888888\+8 does not match PyTorch: \d+ of 32 images"):
        verify_int8(quantized, images, {ALL_REST: tmp_path / "wrong.onnx"})
