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
  ``int8="qlinear"``: the form onnxruntime fuses into its fast integer convolution (``QLinearConv``, int8
  weights with zero point 0, ~0.5-0.6x a float block; uint8 weights with a zero point, DFS's own asymmetric
  form, run at float speed, bench/README §11). Each BatchNorm is folded into per-channel weight scales (DFS's
  integer weights times the BatchNorm's factor: exact), the first convolution's output is requantised at the
  second's input range (DFS's own quantisation of that tensor: the ReLU is the clamp at zero point 0), the second
  one's output at a range calibrated on training images (:func:`calibrate_dfs`; DFS keeps it in float: the one
  added rounding), and a channel whose integer weights exceed [-127, 127] (DFS's zero point is not 128) is
  requantised symmetrically on its own range. The residual add stays in float, as DFS computes it.
- **16 bits**: no back end here has a 16-bit integer convolution, so the branch is the float simulation (round
  and clamp in float, then a float ``Conv``): it costs *more* than full precision. DFS counts it at (16/32)^2 of
  the block's MACs; measured latency says otherwise (bench/README §11).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeskip.backends.ort import ort_session
from edgeskip.errors import EdgeskipError
from edgeskip.export.onnx_export import INT8_TOLERANCE, export_spliced, max_abs_diff, rounding_tolerated
from edgeskip.export.splice import Switch, mark, with_marks
from edgeskip.models.blocknet import ExportView
from edgeskip.models.dfs import FULL_BITS, DFSResNet, quant_params, residual_bits
from edgeskip.models.quant import I8, I32, MinMax, TensorQuant, bn_affine, qd

INT8_MODES = ("integer", "qdq", "qlinear")


def _require_trained(lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Quantisation ranges are NaN until DFS training has set them."""
    if torch.isnan(lo).any() or torch.isnan(hi).any():
        raise EdgeskipError("a DFS model whose quantisation ranges were never trained cannot be exported")


class FrozenBitsConv(nn.Module):
    """One convolution of a k-bit branch with its quantisation frozen: the integer weight as a buffer ``wq``."""

    def __init__(self, conv: nn.Conv2d, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> None:
        super().__init__()
        _require_trained(lo, hi)
        self.bits, self.stride, self.padding = bits, conv.stride, conv.padding
        w = conv.weight.detach()
        s_w, z_w = quant_params(bits, w.min(), w.max())
        s_x, z_x = quant_params(bits, lo, hi)
        self.s_w, self.z_w, self.s_x, self.z_x = float(s_w), int(z_w), float(s_x), int(z_x)
        q = torch.clamp(torch.round(w / s_w) + z_w, 0, 2**bits - 1)
        self.register_buffer("wq", q.to(torch.uint8) if bits == 8 else q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 8:
            xq = qd.quantize_per_tensor(x, self.s_x, self.z_x, 0, 255, torch.uint8)
            xd = qd.dequantize_per_tensor(xq, self.s_x, self.z_x, 0, 255, torch.uint8)
            wd = qd.dequantize_per_tensor(self.wq, self.s_w, self.z_w, 0, 255, torch.uint8)
        else:
            levels = 2**self.bits - 1
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


def _fold_int8(conv: nn.Conv2d, bn: nn.BatchNorm2d, s_in: float) -> tuple[torch.Tensor, ...]:
    """DFS's 8-bit weight of ``conv`` (asymmetric, per tensor) times ``bn``'s per-channel factor, as symmetric
    int8 per output channel: (int8 weight, scales, int32 bias at ``s_in`` x scale). Exact except in a channel
    whose integers leave [-127, 127]: that channel is requantised on its own range."""
    w = conv.weight.detach()
    s_w, z_w = quant_params(8, w.min(), w.max())
    n = torch.clamp(torch.round(w / s_w) + z_w, 0, 255) - z_w  # DFS's integer weight
    k, bias = bn_affine(bn)
    ints = n * torch.sign(k)[:, None, None, None]
    scale = s_w * k.abs()
    folded = n * s_w * k[:, None, None, None]
    peak = folded.abs().amax((1, 2, 3))
    redo = (ints.abs().amax((1, 2, 3)) > I8[1]) | (scale == 0)
    scale = torch.where(redo, torch.where(peak > 0, peak / I8[1], torch.ones_like(peak)), scale)
    ints = torch.where(redo[:, None, None, None], torch.round(folded / scale[:, None, None, None]), ints)
    b = torch.clamp(torch.round(bias.double() / (s_in * scale.double())), *I32)  # float64: 2**31 - 1 is exact
    return ints.to(torch.int8), scale.float(), b.to(torch.int32)


class FusedInt8Block(nn.Module):
    """DFS's 8-bit branch of a residual block (identity shortcut) in the form onnxruntime fuses into two
    ``QLinearConv`` (``int8="qlinear"``, see the module docstring)::

        h_q = Q(relu(conv(DQ Q(x; s_x, 0); W1 k1) + b1); s_h, 0)
        y   = relu(x + DQ Q(conv(DQ h_q; W2 k2) + b2; s_c, z_c))
    """

    def __init__(self, block: nn.Module, lo: torch.Tensor, hi: torch.Tensor, c: TensorQuant) -> None:
        super().__init__()
        _require_trained(lo, hi)
        qx, qh = (quant_params(8, lo[i], hi[i]) for i in (0, 1))
        if int(qx[1]) or int(qh[1]):
            raise EdgeskipError("int8='qlinear' needs the convolutions' inputs >= 0 (zero point 0)")
        self.x, self.h, self.c = TensorQuant(float(qx[0]), 0), TensorQuant(float(qh[0]), 0), c
        self.stride, self.padding = block.conv1.stride, block.conv1.padding
        for i, conv, bn, s_in in ((1, block.conv1, block.bn1, self.x.scale), (2, block.conv2, block.bn2, self.h.scale)):
            w, scale, b = _fold_int8(conv, bn, s_in)
            self.register_buffer(f"w{i}", w)
            self.register_buffer(f"s{i}", scale)
            self.register_buffer(f"sb{i}", scale * s_in)
            self.register_buffer(f"b{i}", b)
        self.register_buffer("zp", torch.zeros(len(self.s1), dtype=torch.int64))

    def _conv(self, h: torch.Tensor, i: int, stride: Any, padding: Any) -> torch.Tensor:
        w = qd.dequantize_per_channel(getattr(self, f"w{i}"), getattr(self, f"s{i}"), self.zp, 0, *I8, torch.int8)
        b = qd.dequantize_per_channel(getattr(self, f"b{i}"), getattr(self, f"sb{i}"), self.zp, 0, *I32, torch.int32)
        return F.conv2d(h, w, b, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.h.fake(F.relu(self._conv(self.x.fake(x), 1, self.stride, self.padding)))
        return F.relu(x + self.c.fake(self._conv(h, 2, 1, self.padding)))


@torch.no_grad()
def calibrate_dfs(model: DFSResNet, batches: Iterable[torch.Tensor]) -> dict[int, TensorQuant]:
    """Range of each gated block's 8-bit residual branch output over ``batches`` (normalised images, the model in
    eval mode, every block's input as DFS routes it), for ``int8="qlinear"``."""
    bits = 8
    if bits not in model.gate_cfg.bits:
        raise EdgeskipError("this DFS model has no 8-bit option")
    for r in model.ranges:
        _require_trained(r.lo, r.hi)
    ranges = {b: MinMax() for b in model.gate_of}
    was = model.training
    model.eval()

    def probe(b: int, h: torch.Tensor) -> None:
        ranges[b].update(residual_bits(model.blocks[str(b)], model.ranges[model.gate_of[b]], h, bits))

    try:
        for x in batches:
            model.run(x, probe)
    finally:
        model.train(was)
    if any(r.lo > r.hi for r in ranges.values()):
        raise EdgeskipError("int8 calibration needs images (the calibration data is empty)")
    return {b: TensorQuant.from_range(r.lo, r.hi) for b, r in ranges.items()}


def _switch(h: torch.Tensor, c: torch.Tensor, branches: list[nn.Module], order: list[int]) -> torch.Tensor:
    """``branches[c](h)`` as nested ``torch.cond`` (one ONNX ``If`` per remaining option), ``order[0]`` outermost."""
    if len(order) == 1:
        return branches[order[0]](h)
    return torch.cond(
        c == order[0], lambda t, c: branches[order[0]](t), lambda t, c: _switch(t, c, branches, order[1:]), (h, c)
    )


class _Skip(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class DFSGraph(ExportView):
    """``forward(image) -> (logits, options)``: the shared LSTM gate before each gated block, then the switch."""

    def __init__(
        self, model: DFSResNet, order: list[int] | None = None, fused: dict[int, TensorQuant] | None = None
    ) -> None:
        super().__init__(model)
        n = len(model.gate_cfg.options)
        self.order = list(range(n))[::-1] if order is None else [int(o) for o in order]
        if sorted(self.order) != list(range(n)):
            raise EdgeskipError(f"switch order must be a permutation of the option indices 0..{n - 1}, got {order}")
        self.gates, self.gate_core = model.gates, model.gate_core
        self.gate_of = dict(model.gate_of)
        self.marks: list[torch.Tensor] | None = None
        self.n_opt = n
        self.options = nn.ModuleDict()
        for b, k in self.gate_of.items():
            block, r = model.blocks[str(b)], model.ranges[k]
            variants: list[nn.Module] = [_Skip()]
            for i, bits in enumerate(model.gate_cfg.options[1:-1]):
                if bits == 8 and fused is not None:
                    variants.append(FusedInt8Block(block, r.lo[i], r.hi[i], fused[b]))
                else:
                    variants.append(FrozenBitsBlock(block, r.lo[i], r.hi[i], bits))
            variants.append(block)
            assert model.gate_cfg.options[-1] == FULL_BITS
            self.options[str(b)] = nn.ModuleList(variants)

    def switch(self, b: int) -> Switch:
        """Gated block ``b``'s options in nesting order (the skip option, 0, is the identity)."""
        options = list(self.options[str(b)])
        return Switch([options[o] if o else None for o in self.order], list(self.order))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state: list = [None]
        chosen = []

        def step(b: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            logit, state[0] = self.gates[self.gate_of[b]](h, state[0])
            c = logit.reshape(self.n_opt).argmax()
            chosen.append(c)
            if self.marks is not None:  # exported spliced: the switch is assembled in ONNX
                return mark(self, b, c == self.order[0], h)
            return _switch(h, c, list(self.options[str(b)]), self.order)

        return with_marks(self, (self.walk(image, step), torch.stack(chosen)))


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
        if (
            node.op_type != "Conv"
            or len(node.input) > 2
            and node.input[2]
            or not all(d is not None and d.op_type == "DequantizeLinear" and len(d.input) == 3 for d in dq)
        ):
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


def export_dfs(
    model: DFSResNet,
    dest: str | os.PathLike,
    int8: str = "integer",
    order: list[int] | None = None,
    calibration: dict[int, TensorQuant] | None = None,
) -> Path:
    """Export the batch-1 DFS graph to one self-contained .onnx file, atomically. ``order``: the options' nesting,
    outermost first (:func:`switch_order` of their rates; default full precision first, then fewer bits).
    ``int8="qlinear"`` needs ``calibration`` (:func:`calibrate_dfs`).

    Tracing the switch as nested ``torch.cond`` costs ~10 s per gate (``bench/export_cond_cost.py``): the exporter
    re-traces every branch at every level. So the graph is exported spliced (:func:`export_spliced`): traced once,
    every option flat, and the switches assembled in ONNX; :func:`verify_dfs_onnx` checks the result against
    PyTorch."""
    if int8 not in INT8_MODES:
        raise EdgeskipError(f"int8 must be one of {', '.join(INT8_MODES)}, got {int8!r}")
    fused = int8 == "qlinear" and 8 in model.gate_cfg.bits
    if fused and calibration is None:
        raise EdgeskipError("int8='qlinear' needs calibration ranges (calibrate_dfs on training images)")
    model.eval()
    cfg = model.cfg
    image = torch.zeros(1, cfg.in_channels, *cfg.input_size)
    graph = DFSGraph(model, order, calibration if fused else None)
    dest = export_spliced(graph, (image,), ["image"], dest, ["logits", "options"], dynamic_batch=False)
    if int8 == "integer" and 8 in model.gate_cfg.bits:
        expected = 2 * model.cfg.num_gates
        n = to_conv_integer(dest)
        if n != expected:
            raise EdgeskipError(f"DFS export: {n} of {expected} 8-bit convolutions became ConvInteger")
    return dest


def graph_reference(
    model: DFSResNet, order: list[int] | None = None, calibration: dict[int, TensorQuant] | None = None
) -> Any:
    """What :func:`export_dfs` computes, in PyTorch: ``ref(x) -> (logits, options)`` for one image. Without
    ``calibration`` (``integer``, ``qdq``) that is the DFS model itself; with it, the ``qlinear`` form."""
    model.eval()
    if calibration is None:
        return lambda x: (lambda o: (o.logits, o.choice[0]))(model.run(x))
    return DFSGraph(model, order, calibration).eval()


def verify_dfs_onnx(
    model: DFSResNet,
    images: torch.Tensor,
    onnx_path: str | os.PathLike,
    tol: float = INT8_TOLERANCE,
    reference: Any = None,
) -> dict[str, float]:
    """onnxruntime vs PyTorch per image: logits within ``tol`` (relative to the largest logit, as for edgeskip's
    int8 graphs) and the same options chosen. A quantised branch may round a value that sits on a rounding
    boundary one step apart (PyTorch divides by the scale, a kernel may multiply by its inverse) and the step
    carries through later blocks, past ``tol`` on that image, or flip a later gate: more than 1% of the decisions
    differing, or more images than max(1, 5%) past ``tol``, fail (a wrong graph differs on most images; CIFAR-10
    ResNet-20's qlinear form: 2 of 64 images at 1.3e-2). ``reference``: :func:`graph_reference` of the
    export's settings (default: the DFS model)."""
    ref_fn = reference or graph_reference(model)
    sess = ort_session(onnx_path)
    diffs, flips, total = [], 0, 0
    with torch.no_grad():
        for x in images:
            ref_logits, ref_choice = ref_fn(x[None])
            logits, options = sess.run(None, {"image": x[None].numpy().astype(np.float32)})
            differ = int((np.asarray(options) != ref_choice.numpy()).sum())
            flips += differ
            total += len(options)
            if not differ:
                scale = max(1.0, float(ref_logits.abs().max()))
                diffs.append(max_abs_diff(logits, ref_logits.numpy()) / scale)
    over = sum(d > tol for d in diffs)
    worst = max(diffs, default=0.0)
    if not rounding_tolerated(diffs, flips, total, tol):
        raise EdgeskipError(
            f"exported DFS graph does not match PyTorch: {over} of {len(images)} images past the "
            f"relative tolerance {tol:g} (max {worst:.2e}), {flips} of {total} gate decisions differ"
        )
    return {"dfs_vs_torch": worst, "images_past_tolerance": over, "decisions_differing": flips, "decisions": total}
