"""DFS export and deployment (#14): one switch per gate over its options at batch 1, the 8-bit option as a real
integer convolution (ConvInteger), parity with PyTorch, option selection equal to the block variants, IREE and
onnxruntime executors, aarch64 under qemu, serving and replaying a DFS bundle."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeskip.backends.ort import ort_session
from edgeskip.data.batches import iterate
from edgeskip.errors import EdgeskipError
from edgeskip.export import emulate
from edgeskip.export.dfs_graph import (
    calibrate_dfs,
    export_dfs,
    graph_reference,
    switch_order,
    verify_dfs_onnx,
)
from edgeskip.export.onnx_export import INT8_TOLERANCE, rounding_tolerated
from edgeskip.manifest import load_manifest
from edgeskip.runtime.executor import IreeSkipNetExecutor, OrtSkipNetExecutor, open_executor
from edgeskip.train import load_checkpoint
from tests.conftest import cli as run
from tests.conftest import shared


def ops(path):
    counts = {}

    def walk(g):
        for n in g.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
            for a in n.attribute:
                if a.type == a.GRAPH:
                    walk(a.g)

    walk(onnx.load(str(path)).graph)
    return counts


@pytest.fixture(scope="module")
def test_batch(digits_splits, dfs_checkpoint):
    ck = load_checkpoint(dfs_checkpoint)
    xb, yb = next(iterate(digits_splits.test, ck.norm, 64))
    return ck.model(), xb, yb


def test_options_vary_by_input(test_batch):
    model, xb, _ = test_batch
    with torch.no_grad():
        choice = model.run(xb).choice
    assert len(choice.unique()) >= 2, choice  # otherwise the parity tests below would exercise one branch only


@pytest.fixture(scope="module")
def calibration_batches(digits_splits, dfs_checkpoint):
    ck = load_checkpoint(dfs_checkpoint)
    return [x for x, _ in iterate(digits_splits.train, ck.norm, 128)][:2]


@pytest.fixture(scope="module")
def mixed(test_batch, calibration_batches, tmp_path_factory):
    """The trained model with its gate's output layer randomised, so that every option (skip, 8-bit, 16-bit,
    full) is chosen by some input and gate, and ``graph(form)``: its export in one int8 form (built once per run,
    shared by the xdist workers: each export takes seconds)."""
    import copy

    model, xb, _ = test_batch
    m = copy.deepcopy(model)
    for seed in range(20):  # the first seed whose random gate chooses every option on this batch
        torch.manual_seed(seed)
        with torch.no_grad():
            m.gate_core.out.weight.normal_(0, 3.0)
            m.gate_core.out.bias.zero_()
            choice = m.run(xb).choice
        if set(choice.unique().tolist()) == {0, 1, 2, 3}:
            break
    assert set(choice.unique().tolist()) == {0, 1, 2, 3}, choice.unique()
    cal = calibrate_dfs(m, calibration_batches)
    # the forms also nest the options in two orders: full precision outermost (the default), and skip
    forms = {"integer": {}, "qdq": {"int8": "qdq", "order": [0, 2, 1, 3]}, "qlinear": {"int8": "qlinear"}}

    def graph(form):
        kw = dict(forms[form], calibration=cal) if form == "qlinear" else forms[form]
        return shared(tmp_path_factory, f"dfs_mixed_{form}", lambda d: export_dfs(m, d / "g.onnx", **kw)) / "g.onnx"

    return m, xb, graph, cal


@pytest.mark.slow
@pytest.mark.parametrize("int8, conv_integer", [("integer", 2), ("qdq", 0), ("qlinear", 0)])
def test_onnx_switch_per_gate_and_parity(mixed, int8, conv_integer):
    """Every option runs its block variant: per input, the graph chooses what PyTorch chooses and computes what
    it computes, over inputs that between them take every option."""
    model, xb, graph, cal = mixed
    path = graph(int8)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits", "options"]
    n_opt = len(model.gate_cfg.options)
    assert ops(path)["If"] == model.cfg.num_gates * (n_opt - 1)  # nested: skip? else 8-bit? else 16-bit? else full
    assert ops(path).get("ConvInteger", 0) == conv_integer * model.cfg.num_gates  # two per gated block at 8 bits
    check = verify_dfs_onnx(model, xb, path, reference=graph_reference(model, None, cal if int8 == "qlinear" else None))
    assert check["images_past_tolerance"] <= 1 and check["decisions_differing"] == 0
    sess = ort_session(path)
    seen = {int(o) for x in xb for o in sess.run(None, {"image": x[None].numpy()})[1]}
    assert seen == set(range(n_opt))


def test_verification_catches_a_wrong_graph(mixed):
    model, xb, graph, _ = mixed
    path = graph("integer")
    saved = model.gate_core.out.bias.detach().clone()
    try:
        with torch.no_grad():  # PyTorch now runs everything at full precision; the graph does not
            model.gate_core.out.bias[-1] += 1e4
        with pytest.raises(EdgeskipError, match="does not match PyTorch"):
            verify_dfs_onnx(model, xb, path)
    finally:
        with torch.no_grad():
            model.gate_core.out.bias.copy_(saved)


@pytest.mark.slow
def test_qlinear_form_fuses_into_integer_convolutions(mixed, tmp_path):
    """onnxruntime turns every 8-bit convolution of the qlinear form into its int8 ``QLinearConv`` (int8 weights,
    zero point 0: the fast kernel), inside the switch's branches; the DFS model's own arithmetic is close."""
    import onnxruntime as ort

    model, xb, graph, cal = mixed
    qlinear = graph("qlinear")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(qlinear), opts, providers=["CPUExecutionProvider"])
    fused = ops(tmp_path / "opt.onnx")
    assert fused.get("QLinearConv", 0) == 2 * model.cfg.num_gates and "ConvInteger" not in fused
    weights = [
        t
        for t in onnx.load(str(qlinear)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and t.name.endswith((".w1", ".w2"))
    ]
    assert len(weights) == 2 * model.cfg.num_gates
    assert all(np.abs(onnx.numpy_helper.to_array(t)).max() <= 127 for t in weights)
    ref = graph_reference(model, None, cal)
    with torch.no_grad():
        own = model.run(xb)
        got, choice = zip(*(ref(x[None]) for x in xb))
    agree = float((torch.cat(got).argmax(1) == own.logits.argmax(1)).float().mean())
    assert agree >= 0.95, agree  # the one added rounding (the second convolution's output) rarely moves a prediction


def test_qlinear_needs_calibration(test_batch, tmp_path):
    model, _, _ = test_batch
    with pytest.raises(EdgeskipError, match="needs calibration"):
        export_dfs(model, tmp_path / "x.onnx", int8="qlinear")
    with pytest.raises(EdgeskipError, match="calibration data is empty"):
        calibrate_dfs(model, [])


def test_rounding_rule():
    """One image past the tolerance is a rounding step (or 5% of a larger set, 10% for edgeskip's int8 configs); more,
    or 1% of the decisions differing, is a wrong graph."""
    assert rounding_tolerated([0.0] * 15 + [0.02], 0, 96, 0.01)
    assert not rounding_tolerated([0.0] * 15 + [0.5], 0, 96, 0.01)  # one image far off: a wrong branch
    assert not rounding_tolerated([0.0] * 14 + [0.02, 0.02], 0, 96, 0.01)
    assert rounding_tolerated([0.0] * 60 + [0.02] * 3, 0, 384, 0.01)
    assert not rounding_tolerated([0.0] * 57 + [0.02] * 6, 0, 384, 0.01)
    assert rounding_tolerated([0.0] * 30 + [0.039] * 2, 0, 0, 0.01, 0.1)  # ResNet-20 188888+8: 2 of 32 at 3.9%
    assert not rounding_tolerated([0.0] * 28 + [0.015] * 4, 0, 0, 0.01, 0.1)  # 12.5%: a systematic shift
    assert not rounding_tolerated([0.0] * 16, 1, 96, 0.01) and rounding_tolerated([0.0] * 64, 3, 384, 0.01)


def test_switch_order_is_most_frequent_first():
    assert switch_order([0.1, 0.6, 0.0, 0.3]) == [1, 3, 0, 2]
    assert switch_order([0.0, 0.0, 0.0, 1.0]) == [3, 2, 1, 0]  # ties: more bits first


def test_export_refuses_bad_settings(tmp_path, test_batch):
    model, _, _ = test_batch
    with pytest.raises(EdgeskipError, match="int8 must be one of"):
        export_dfs(model, tmp_path / "x.onnx", int8="int4")
    with pytest.raises(EdgeskipError, match="permutation of the option indices"):
        export_dfs(model, tmp_path / "x.onnx", order=[0, 1, 1, 3])
    from edgeskip.models.dfs import DFSResNet

    fresh = DFSResNet(model.cfg, model.gate_cfg)  # its ranges were never trained
    with pytest.raises(EdgeskipError, match="ranges were never trained"):
        export_dfs(fresh, tmp_path / "y.onnx")
    with pytest.raises(EdgeskipError, match="ranges were never trained"):
        calibrate_dfs(fresh, [torch.zeros(2, fresh.cfg.in_channels, *fresh.cfg.input_size)])
    assert not (tmp_path / "y.onnx").exists()


def test_bundle_manifest_and_verification(dfs_bundle):
    m = load_manifest(dfs_bundle)
    assert m.kind == "dfs" and m.learned_gates and m.extra["gates"]["kind"] == "dfs"
    files = {str(p.relative_to(dfs_bundle)) for p in dfs_bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert files == set(m.artifacts)
    assert {f"iree/{t}/dfs.vmfb" for t in m.targets} <= files and m.onnx == {"main_graph": "onnx/dfs.onnx"}
    assert m.extra["outputs"]["options"] == {"dtype": "int64", "shape": [m.num_gates]}
    c = m.configs[0]
    assert c.skip is None and 0 < c.extra["test_cp"] <= 1 and c.extra["options_bits"] == [0, 8, 16, 32]
    assert sorted(c.extra["switch_order"]) == [0, 1, 2, 3]
    assert abs(sum(c.extra["test_option_rates"]) - 1) < 1e-6
    assert c.extra["latency_s_min"] <= c.latency_s <= c.extra["latency_s_max"]
    v = m.extra["verification"]
    assert v["onnx"]["decisions_differing"] == 0 and v["iree"]["host"]["images_past_tolerance"] <= 1
    assert v["iree"]["host"]["decisions_differing"] == 0 and v["relative"]
    graph_ops = ops(dfs_bundle / "onnx" / "dfs.onnx")  # the default 8-bit form: qlinear (int8 weights, Q/DQ)
    assert c.extra["int8_form"] == "qlinear" and c.extra["calibration_images"] == 512 and "ConvInteger" not in graph_ops
    assert graph_ops["DequantizeLinear"] >= 4 * m.num_gates  # two weights and two biases per 8-bit branch
    assert 0 < c.test_accuracy <= 1 and abs(c.test_accuracy - c.extra["model_test_accuracy"]) < 0.05
    if emulate.missing() is None or os.environ.get("CI"):
        assert v["iree"]["aarch64"]["executed"] and v["iree"]["aarch64"]["aarch64_vs_host"] <= INT8_TOLERANCE


@pytest.mark.parametrize("cls", [IreeSkipNetExecutor, OrtSkipNetExecutor])
def test_executors_match_pytorch_per_input(dfs_bundle, digits_splits, test_batch, cls):
    """Per input, each executor computes what PyTorch computes for the bundle's form (qlinear, calibrated on the
    same seeded training images as compile)."""
    from edgeskip.pareto.design import calibration_batches

    model, xb, _ = test_batch
    ex = cls(dfs_bundle)
    logits = ex.infer(xb.numpy())
    ref = graph_reference(model, None, calibrate_dfs(model, calibration_batches(digits_splits, 512)))
    with torch.no_grad():
        ref_logits, ref_choice = (torch.cat(t) for t in zip(*((lg, ch[None]) for lg, ch in (ref(x[None]) for x in xb))))
    scale = ref_logits.abs().amax(1, keepdim=True).clamp_min(1).numpy()
    within = (np.abs(logits - ref_logits.numpy()) / scale).max(1) <= INT8_TOLERANCE
    assert within.sum() >= len(xb) - 1, (~within).sum()  # a value on a rounding boundary may land one step apart
    assert ex.decisions.dtype == np.int64 and np.array_equal(ex.decisions, ref_choice.numpy())
    assert np.array_equal(ex.executed, ref_choice.numpy() != 0)
    assert ex.last_skipped == int((ref_choice[-1] == 0).sum())
    with pytest.raises(EdgeskipError, match="dfs bundle picks its blocks per input"):
        ex.infer(xb[:1].numpy(), skip=[1] * model.cfg.num_gates)


def test_inspect_serve_and_bench_a_dfs_bundle(dfs_bundle, digits_splits, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent.parent / "runtime"))
    from daemon_process import Server

    from tests.runtime.test_server import raw_image

    assert isinstance(open_executor(dfs_bundle, "onnxruntime"), OrtSkipNetExecutor)
    r = run("inspect", dfs_bundle)
    assert r.returncode == 0 and "DFS (dfs gates)" in r.stdout and "DFS cp " in r.stdout, r.stdout
    s = Server(dfs_bundle)
    try:
        status, doc = s.infer(raw_image(digits_splits, 3))
        assert status == 200 and doc["config"] == 0 and isinstance(doc["skipped_blocks"], int)
        assert s.infer(b"\x00" * 12)[0] == 400
    finally:
        assert s.stop() == 0
    r = run("bench", dfs_bundle, "--count", "50", "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(doc["summaries"]) == {"dfs"} and doc["summaries"]["dfs"]["errors"] == 0
