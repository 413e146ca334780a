"""ONNX rewrites on the way into IREE: stride-1 depthwise convolutions as shifted multiply-adds."""

from collections import Counter

import numpy as np
import onnx
import torch

from edgeskip.backends.ort import ort_session
from edgeskip.export.iree_rewrites import depthwise_as_shifts, for_iree
from edgeskip.export.onnx_export import export_graph


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)  # rewritten
        self.dw_nobias = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # rewritten
        self.dw_s2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)  # stride 2: kept (no gain)
        self.full = torch.nn.Conv2d(8, 4, 3, padding=1)  # not depthwise: kept

    def forward(self, x):
        return self.full(self.dw_s2(torch.relu(self.dw_nobias(self.dw(x)))))


def test_depthwise_convolutions_become_shifted_multiply_adds_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 9)  # odd, non-square maps: the shifted slices must cover every border
    path = export_graph(Net().eval(), (x,), ["image"], tmp_path / "net.onnx", dynamic_batch=False)
    model = onnx.load(path)
    names = {t.name for t in model.graph.initializer}
    assert depthwise_as_shifts(model) == 2
    assert Counter(n.op_type for n in model.graph.node)["Conv"] == 2  # the strided depthwise one and the full one
    assert names <= {t.name for t in model.graph.initializer}  # the weights keep their names (the shared archive)
    onnx.checker.check_model(model)
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(model, rewritten)
    want = ort_session(path).run(None, {"image": x.numpy()})[0]
    got = ort_session(rewritten).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    # for_iree: a rewritten copy where something applies, the graph itself otherwise
    assert for_iree(path, tmp_path).name == "net.iree.onnx"
    plain = export_graph(torch.nn.Conv2d(8, 4, 3).eval(), (x,), ["image"], tmp_path / "plain.onnx", dynamic_batch=False)
    assert for_iree(plain, tmp_path) == plain
