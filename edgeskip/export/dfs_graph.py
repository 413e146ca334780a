"""Dynamic Fractional Skipping export (#14): one switch per gated block over its options (batch size 1).

Graph: input ``image`` float32 [1, C, H, W]; outputs ``logits`` [1, classes] and ``options`` int64 [B_s] (the
option each gate chose: 0 skip, 1.. the bit widths ascending, last full precision). Every gate runs; the chosen
option's branch alone runs (nested ONNX ``If``: first option? else second? ...). Nesting is not free: on
onnxruntime every level of ``If`` a branch sits under adds time (CIFAR ResNet-20, every block at full precision:
1.24 ms with no switch, 2.24 ms with full precision at depth 1, 5.82 ms at depth 3; original 1.04 ms). So the
options nest in the order given, most frequent first: :func:`export_dfs` takes that order from the options' rates
on validation data (``order``).

A k-bit branch computes what the DFS model computes in eval mode (:func:`edgeskip.models.dfs.run_block_bits`):
each convolution's input quantised to k bits on its calibrated range, its weight on its own min..max (integer
zero points), the convolution on the integer values, BatchNorm and the residual add in float. How each back end
runs that:

- **8 bits**, ``int8="integer"`` (default): ``ConvInteger`` (uint8 x uint8 -> int32) then one float rescale, a
  real integer kernel on onnxruntime. ``int8="qdq"``: ``QuantizeLinear``/``DequantizeLinear`` around a float
  ``Conv`` (no output quantisation, so no back end fuses it into an integer convolution: it runs at float speed
  plus the Q/DQ work; kept to show that, and because it is what IREE imports).
- **16 bits**: no back end here has a 16-bit integer convolution, so the branch is the float simulation (round
  and clamp in float, then a float ``Conv``): it costs *more* than full precision. DFS counts it at (16/32)^2 of
  the block's MACs; measured latency says otherwise (bench/README §11).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeskip.backends.ort import ort_session
from edgeskip.errors import EdgeskipError
from edgeskip.export.onnx_export import INT8_TOLERANCE, export_graph, max_abs_diff
from edgeskip.models.blocknet import ExportView
from edgeskip.models.dfs import FULL_BITS, DFSResNet, quant_params
from edgeskip.models.quant import qd

INT8_MODES = ("integer", "qdq")


class FrozenBitsConv(nn.Module):
    """One convolution of a k-bit branch with its quantisation frozen: the integer weight as a buffer ``wq``."""

    def __init__(self, conv: nn.Conv2d, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> None:
        super().__init__()
        if torch.isnan(lo) or torch.isnan(hi):
            raise EdgeskipError("a DFS model whose quantisation ranges were never trained cannot be exported")
        self.bits, self.stride, self.padding = bits, conv.stride, conv.padding
        w = conv.weight.detach()
        s_w, z_w = quant_params(bits, w.min(), w.max())
        s_x, z_x = quant_params(bits, lo, hi)
        self.s_w, self.z_w, self.s_x, self.z_x = float(s_w), int(z_w), float(s_x), int(z_x)
        q = torch.clamp(torch.round(w / s_w) + z_w, 0, 2 ** bits - 1)
        self.register_buffer("wq", q.to(torch.uint8) if bits == 8 else q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 8:
            xq = qd.quantize_per_tensor(x, self.s_x, self.z_x, 0, 255, torch.uint8)
            xd = qd.dequantize_per_tensor(xq, self.s_x, self.z_x, 0, 255, torch.uint8)
            wd = qd.dequantize_per_tensor(self.wq, self.s_w, self.z_w, 0, 255, torch.uint8)
        else:
            levels = 2 ** self.bits - 1
            xd = (torch.clamp(torch.round(x / self.s_x) + self.z_x, 0, levels) - self.z_x) * self.s_x
            wd = (self.wq - self.z_w) * self.s_w
        return F.conv2d(xd, wd, None, self.stride, self.padding)


class FrozenBitsBlock(nn.Module):
    """A residual block (identity shortcut) at k bits, quantisation frozen from a trained DFS model."""

    def __init__(self, block: nn.Module, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.conv1 = FrozenBitsConv(block.conv1, lo[0], hi[0], bits)
        self.conv2 = FrozenBitsConv(block.conv2, lo[1], hi[1], bits)
        self.bn1, self.bn2 = block.bn1, block.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


def _switch(h: torch.Tensor, c: torch.Tensor, branches: list[nn.Module], order: list[int]) -> torch.Tensor:
    """``branches[c](h)`` as nested ``torch.cond`` (one ONNX ``If`` per remaining option), ``order[0]`` outermost."""
    if len(order) == 1:
        return branches[order[0]](h)
    return torch.cond(c == order[0], lambda t, c: branches[order[0]](t),
                      lambda t, c: _switch(t, c, branches, order[1:]), (h, c))


class _Skip(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class DFSGraph(ExportView):
    """``forward(image) -> (logits, options)``: the shared LSTM gate before each gated block, then the switch."""

    def __init__(self, model: DFSResNet, order: list[int] | None = None) -> None:
        super().__init__(model)
        n = len(model.gate_cfg.options)
        self.order = list(range(n))[::-1] if order is None else [int(o) for o in order]
        if sorted(self.order) != list(range(n)):
            raise EdgeskipError(f"switch order must be a permutation of the option indices 0..{n - 1}, got {order}")
        self.gates, self.gate_core = model.gates, model.gate_core
        self.gate_of = dict(model.gate_of)
        self.n_opt = n
        self.options = nn.ModuleDict()
        for b, k in self.gate_of.items():
            block, r = model.blocks[str(b)], model.ranges[k]
            variants: list[nn.Module] = [_Skip()]
            for i, bits in enumerate(model.gate_cfg.options[1:-1]):
                variants.append(FrozenBitsBlock(block, r.lo[i], r.hi[i], bits))
            variants.append(block)
            assert model.gate_cfg.options[-1] == FULL_BITS
            self.options[str(b)] = nn.ModuleList(variants)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state: list = [None]
        chosen = []

        def step(b: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            logit, state[0] = self.gates[self.gate_of[b]](h, state[0])
            c = logit.reshape(self.n_opt).argmax()
            chosen.append(c)
            return _switch(h, c, list(self.options[str(b)]), self.order)

        return self.walk(image, step), torch.stack(chosen)


def _conv_integer(graph, produced: dict) -> int:
    """Rewrite every float ``Conv`` fed by two uint8 ``DequantizeLinear`` into ``ConvInteger`` + rescale, in
    ``graph`` and its subgraphs; returns how many were rewritten."""
    from onnx import TensorProto, helper

    n = 0
    nodes = list(graph.node)
    local = {o: node for node in nodes for o in node.output}
    scope = {**produced, **local}
    new_nodes = []
    for node in nodes:
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                n += _conv_integer(attr.g, scope)
        dq = [scope.get(i) for i in node.input[:2]]
        if (node.op_type != "Conv" or len(node.input) > 2 and node.input[2]
                or not all(d is not None and d.op_type == "DequantizeLinear" and len(d.input) == 3 for d in dq)):
            new_nodes.append(node)
            continue
        (x, sx, zx), (w, sw, zw) = (tuple(d.input) for d in dq)
        y, tag = node.output[0], node.output[0] + "_int"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        new_nodes += [
            helper.make_node("ConvInteger", [x, w, zx, zw], [tag + "_acc"], name=tag, **attrs),
            helper.make_node("Cast", [tag + "_acc"], [tag + "_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [sx, sw], [tag + "_scale"]),
            helper.make_node("Mul", [tag + "_f", tag + "_scale"], [y]),
        ]
        n += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return n


def to_conv_integer(path: str | os.PathLike) -> int:
    """Rewrite the 8-bit branches of an exported DFS graph to ``ConvInteger`` in place (unused ``Dequantize``
    nodes are left for onnxruntime to prune); returns the number of convolutions rewritten."""
    import onnx

    from edgeskip.utils.atomic import atomic_path

    model = onnx.load(str(path))
    n = _conv_integer(model.graph, {})
    onnx.checker.check_model(model)
    with atomic_path(Path(path), suffix=".onnx") as tmp:
        onnx.save_model(model, str(tmp))
    return n


def switch_order(option_rates: list[float]) -> list[int]:
    """Option indices by descending rate (ties: the higher index, i.e. more bits, first)."""
    return sorted(range(len(option_rates)), key=lambda o: (-option_rates[o], -o))


def export_dfs(model: DFSResNet, dest: str | os.PathLike, int8: str = "integer",
               order: list[int] | None = None) -> Path:
    """Export the batch-1 DFS graph to one self-contained .onnx file, atomically. ``order``: the options' nesting,
    outermost first (:func:`switch_order` of their rates; default full precision first, then fewer bits)."""
    if int8 not in INT8_MODES:
        raise EdgeskipError(f"int8 must be one of {', '.join(INT8_MODES)}, got {int8!r}")
    model.eval()
    cfg = model.cfg
    image = torch.zeros(1, cfg.in_channels, *cfg.input_size)
    path = export_graph(DFSGraph(model, order), (image,), ["image"], dest, ["logits", "options"], dynamic_batch=False)
    if int8 == "integer" and 8 in model.gate_cfg.bits:
        expected = 2 * model.cfg.num_gates
        n = to_conv_integer(path)
        if n != expected:
            raise EdgeskipError(f"DFS export: {n} of {expected} 8-bit convolutions became ConvInteger")
    return path


def verify_dfs_onnx(model: DFSResNet, images: torch.Tensor, onnx_path: str | os.PathLike,
                    tol: float = INT8_TOLERANCE) -> dict[str, float]:
    """onnxruntime vs PyTorch per image: logits within ``tol`` (relative to the largest logit, as for edgeskip's
    int8 graphs) and the same options chosen. A quantised branch may round a value that sits on a rounding
    boundary one step apart (PyTorch divides by the scale, a kernel may multiply by its inverse) and the step
    carries through later blocks; it can flip a later gate: flips are counted, more than 1% of them fail."""
    model.eval()
    sess = ort_session(onnx_path)
    worst, flips, total = 0.0, 0, 0
    with torch.no_grad():
        for x in images:
            ref = model.run(x[None])
            logits, options = sess.run(None, {"image": x[None].numpy().astype(np.float32)})
            differ = int((np.asarray(options) != ref.choice[0].numpy()).sum())
            flips += differ
            total += len(options)
            if not differ:
                scale = max(1.0, float(ref.logits.abs().max()))
                worst = max(worst, max_abs_diff(logits, ref.logits.numpy()) / scale)
    if worst > tol or flips > 0.01 * total:
        raise EdgeskipError(f"exported DFS graph does not match PyTorch: max relative diff {worst:.2e} (tol {tol:g}), "
                            f"{flips} of {total} gate decisions differ")
    return {"dfs_vs_torch": worst, "decisions_differing": flips, "decisions": total}
