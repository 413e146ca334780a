"""The spliced export (edgeskip.export.splice): one flat trace, the switches assembled in ONNX, against the graph the
``torch.cond`` trace gives."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from edgeskip.backends.ort import ort_session
from edgeskip.errors import EdgeskipError
from edgeskip.export.graphs import GatedGraph
from edgeskip.export.onnx_export import export_gated, export_graph, export_options, subgraphs
from edgeskip.export.splice import Switch, splice
from edgeskip.models import ResNetConfig, build_model
from edgeskip.models.quant import calibrate
from tests.conftest import shared

CFG = ResNetConfig(depth=14, widths=(4, 8, 16), in_channels=1, input_size=(8, 8), num_classes=10)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(CFG).eval()
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):  # blocks that change their input
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    m.attach_int8(calibrate(m, [torch.randn(16, 1, 8, 8)], CFG.gated_blocks))
    return m


def ops(path) -> Counter:
    """Every node's op type, in the graph and its branches."""
    return Counter(n.op_type for g in subgraphs(onnx.load(str(path)).graph) for n in g.node)


def weights(path) -> set[str]:
    return {t.name for t in onnx.load(str(path)).graph.initializer if not t.name.startswith(("val_", "switch/"))}


def typed_branches(path) -> None:
    """Every tensor a branch computes has its traced type (IREE's importer reads an untyped one as a scalar, and
    then iree-compile ran out of memory on a 1x1 map)."""
    for sub in list(subgraphs(onnx.load(str(path)).graph))[1:]:
        typed = {vi.name for vi in (*sub.value_info, *sub.output)}
        assert all(o in typed for n in sub.node for o in n.output), sub.name


@pytest.fixture(scope="module")
def gated_pair(tmp_path_factory, model):
    """The gated graph spliced, and as the torch.cond trace gives it (built once per run: the model is seeded)."""

    def build(d):
        skip = torch.ones(CFG.num_gates, dtype=torch.bool)
        export_graph(GatedGraph(model), (torch.zeros(2, 1, 8, 8), skip), ["image", "skip"], d / "nested.onnx")
        export_gated(model, d / "spliced.onnx")

    d = shared(tmp_path_factory, "splice_pair", build)
    return d / "spliced.onnx", d / "nested.onnx"


def test_spliced_gated_graph_is_the_cond_trace(gated_pair, model):
    """Same ops at every level, same weight names, same outputs for every skip array as the torch.cond trace."""
    g = CFG.num_gates
    spliced, nested = gated_pair
    assert ops(spliced) == ops(nested) and ops(spliced)["If"] == g
    assert weights(spliced) == weights(nested)
    typed_branches(spliced)
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    a, b = ort_session(spliced), ort_session(nested)
    for s in np.ndindex(*(2,) * g):
        out = a.run(None, {"image": x, "skip": np.array(s, bool)})[0]
        np.testing.assert_array_equal(out, b.run(None, {"image": x, "skip": np.array(s, bool)})[0])
        np.testing.assert_allclose(out, model(torch.from_numpy(x), list(s)).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_spliced_option_array_graph_runs_every_option(tmp_path, model):
    """Two nested Ifs per gate (skip? else int8? else full), every one of the 3^B_s option arrays as PyTorch
    computes it (the torch.cond trace of this graph costs 40 s here: bench/export_cond_cost.py --gated compares
    the two on CIFAR-10 models)."""
    g = CFG.num_gates
    spliced = export_options(model, tmp_path / "options.onnx")
    assert ops(spliced)["If"] == 2 * g and ops(spliced)["Equal"] == 2 * g
    assert {f"blocks.{b}.w1" for b in CFG.gated_blocks} <= weights(spliced)  # int8 weights named as static graphs
    typed_branches(spliced)
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    sess = ort_session(spliced)
    for a in np.ndindex(*(3,) * g):
        options = [(0, 1, 8)[v] for v in a]
        out = sess.run(None, {"image": x, "options": np.array(options, np.int64)})[0]
        np.testing.assert_allclose(out, model(torch.from_numpy(x), options).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_a_graph_without_its_placeholders_is_a_one_line_error(gated_pair, model):
    """A graph whose marks were not traced (here: the torch.cond trace) is refused, not spliced wrongly."""
    switches = [Switch([model.blocks[str(b)], None], [1, 0]) for b in CFG.gated_blocks]
    with pytest.raises(EdgeskipError, match=r"^gated export: 0 placeholders and 0 marked options traced for 3 gates$"):
        splice(onnx.load(str(gated_pair[1])), switches, 1)
