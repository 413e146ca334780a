"""`edgeskip compile --int8` (#15): int8 block variants on onnxruntime, the IREE modules float, per-back-end fronts."""

import json
import subprocess
import sys

import onnx

from edgeskip.backends.iree import parameter_index
from edgeskip.manifest import VERSION, load_manifest
from edgeskip.skip import doc_options, module_name, with_rest


def test_int8_bundle_manifest_and_fronts(int8_bundle):
    m = load_manifest(int8_bundle)
    written = json.loads((int8_bundle / "manifest.json").read_text())["version"]
    assert m.version == VERSION == 4 and written == (4 if any(c.int8_rest for c in m.configs) else 3)
    assert sorted(int(b) for b in m.int8["blocks"]) == list(m.gated_blocks)
    assert m.int8["calibration"] == {"split": "train", "images": 128, "method": "minmax"}
    int8_cfgs = [c.index for c in m.configs if c.n_int8]
    assert int8_cfgs, "no int8 config on any front"
    assert set(m.fronts) == {"iree", "onnxruntime"} and all(f[0] == 0 for f in m.fronts.values())
    # measured: onnxruntime's int8 kernels pay at these widths; IREE targets carry the float configs only
    assert set(m.fronts["onnxruntime"]) & set(int8_cfgs)
    assert not set(m.fronts["iree"]) & set(int8_cfgs) and "slower" in m.int8["iree"]
    for k in int8_cfgs:
        c = m.configs[k]
        assert c.latency_s == c.extra["latency_s_onnxruntime"] and c.module not in m.iree.functions
        assert c.module in m.onnx
        assert c.skip == tuple(int(v != 0) for v in c.options) and c.module == module_name(
            with_rest(c.options, c.int8_rest)
        )
    assert all(m.configs[i].module in m.iree.functions for i in m.fronts["iree"])
    for backend, front in m.fronts.items():  # stepping order: slower to faster on that back end
        key = (lambda c: c.latency_s) if backend == "iree" else (lambda c: c.extra["latency_s_onnxruntime"])
        t = [key(m.configs[i]) for i in front[1:]]
        assert t == sorted(t, reverse=True)
    ver = m.extra["verification"]
    assert ver["onnx"]["int8_images"] == 32 and 0 <= ver["onnx"]["int8_relative"]  # the rule: test_int8_export
    frac = json.loads((int8_bundle / "fractional.json").read_text())
    assert frac["format"] == "edgeskip-fractional" and frac["latency_model"]["probes"] >= 2 * m.num_gates
    assert {r["source"] for r in frac["candidates"]} >= {"skip-only", "greedy", "probe"}
    measured = {doc_options(r) for r in frac["candidates"]}  # every skip-only candidate's int8 twins too
    twins = [tuple(8 if v else 0 for v in r["options"]) for r in frac["candidates"] if r["source"] == "skip-only"]
    assert twins and all(t in measured and with_rest(t, True) in measured for t in twins)
    # the stem, the stage entries and the head are one more int8 option (issue #34)
    entries = {int(b) for b in m.int8["rest"]["blocks"]}  # each stage's first block
    assert frac["int8_rest"] and len(entries) == 3 and not entries & set(m.gated_blocks)
    assert any(r["int8_rest"] for r in frac["candidates"]) and 0 <= frac["rest"]["val_accuracy"] <= 1
    assert [b["block"] for b in frac["blocks"]] == list(m.gated_blocks)
    # the bundle carries every candidate of the design space, each with its test accuracy (a board's own front may
    # run any of them: edgeskip profile), over the one shared file of weights
    assert all(0 <= r["test_accuracy"] <= 1 for r in frac["candidates"])
    assert {module_name(doc_options(r)) for r in frac["candidates"]} <= set(m.onnx)
    assert m.onnx_weights and m.extra["onnx_sharing"]["graphs"] == len(m.onnx)
    assert all(0 <= b["val_accuracy_int8"] <= 1 and b["latency_s_int8"] > 0 for b in frac["blocks"])


def test_int8_graphs_hold_int8_weights_at_a_quarter_of_the_float(int8_bundle):
    m = load_manifest(int8_bundle)
    wb = m.int8["weight_bytes"]
    assert 0.25 <= wb["int8"] / wb["float"] <= 0.26  # int8 weights (a quarter of float32) plus int32 biases
    assert wb["rest_int8"] > 0  # the stem, the three stage entries and the classifier in int8
    c = next(c for c in m.configs if c.n_int8)
    g = onnx.load(int8_bundle / m.onnx[c.module]).graph
    init = {i.name: i for i in g.initializer}
    for b, o in zip(m.gated_blocks, c.options):
        if o == 8:
            assert init[f"blocks.{b}.w1"].data_type == onnx.TensorProto.INT8 and f"blocks.{b}.conv1.weight" not in init
    idx = dict(parameter_index(int8_bundle / m.iree.weights).items())
    assert not any(k.endswith((".w1", ".w2")) for k in idx)  # the IREE archive stays float


def test_inspect_shows_options_and_fronts(int8_bundle):
    res = subprocess.run(
        [sys.executable, "-m", "edgeskip.cli", "inspect", str(int8_bundle)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert "manifest version 4" in res.stdout and "onnxruntime front (stepping order)" in res.stdout
    assert "ORT ms" in res.stdout and "int8 variants:" in res.stdout
    assert any("8" in line.split()[2] for line in res.stdout.splitlines() if line[:3].strip().isdigit())


def test_int8_graphs_cut_from_the_option_graph_are_the_traced_ones(int8_bundle, tmp_path):
    """`compile --int8` traces one option-array graph and cuts every config's graph from it (milliseconds each, not
    a trace each): the bundle's int8 graph is the traced static graph: same operators, same weight names, same
    outputs."""
    from edgeskip.export.onnx_export import export_static
    from edgeskip.models.quant import BlockQuant, RestQuant
    from edgeskip.train import load_checkpoint

    m = load_manifest(int8_bundle)
    model = load_checkpoint(int8_bundle / "model.pt").model().eval()
    model.attach_int8({int(b): BlockQuant.from_dict(q) for b, q in m.int8["blocks"].items()})
    model.attach_int8_rest(RestQuant.from_dict(m.int8["rest"]))
    frac = json.loads((int8_bundle / "fractional.json").read_text())
    for o in (  # the candidate with the most int8 blocks, and the one with the rest too
        max((doc_options(r) for r in frac["candidates"] if not r["int8_rest"]), key=lambda o: o.count(8)),
        max((doc_options(r) for r in frac["candidates"] if r["int8_rest"]), key=lambda o: o.count(8)),
    ):
        _cut_is_traced(int8_bundle / m.onnx[module_name(o)], export_static(model, o, tmp_path / "traced.onnx"), m)


def _cut_is_traced(cut, traced, m):
    from collections import Counter

    import numpy as np

    from edgeskip.backends.ort import ort_session

    a, b = onnx.load(str(traced)).graph, onnx.load(str(cut)).graph
    assert Counter(n.op_type for n in a.node) == Counter(n.op_type for n in b.node)
    named = lambda g: {t.name for t in g.initializer if "." in t.name}  # noqa: E731 (exporter constants aside)
    assert named(a) == named(b) and any(n.endswith(".w1") for n in named(b))
    x = np.random.default_rng(0).standard_normal((4, *m.input.shape[1:])).astype(np.float32)
    np.testing.assert_array_equal(
        ort_session(cut).run(None, {"image": x})[0], ort_session(traced).run(None, {"image": x})[0]
    )
