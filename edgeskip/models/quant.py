"""Post-training int8 variants of residual blocks (issue #15): the arithmetic of onnxruntime's QDQ int8 kernels,
written with PyTorch's ``quantized_decomposed`` ops, so that evaluating a block in PyTorch and exporting it give
the same numbers (the exporter turns each op into ONNX ``QuantizeLinear``/``DequantizeLinear``, and onnxruntime
fuses the pattern into ``QLinearConv``/``QLinearAdd``).

An int8 block, with BatchNorm folded into its convolutions (per tensor, as ONNX QDQ on every back end takes it)::

    x_q = Q(x; s_x, 0)                              block input, uint8 (>= 0: a ReLU's output)
    h_q = Q(relu(conv(DQ x_q; W1) + b1); s_h, 0)    the ReLU is the clamp of a zero point of 0
    c_q = Q(conv(DQ h_q; W2) + b2; s_c, z_c)        asymmetric uint8
    y   = DQ Q(relu(DQ x_q + DQ c_q); s_y, 0)

Weights: symmetric int8 per tensor (scale max|W| / 127, values in [-127, 127]); biases int32 at scale s_in·s_w.
``Q(x; s, z) = clamp(round(x / s) + z, 0, 255)``, ``DQ(q) = (q - z)·s``. Activation ranges are min/max over the
calibration images (training data) with 0 included, onnxruntime's MinMax calibration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed
import torch.nn.functional as F
from torch import nn

from edgeskip.errors import EdgeskipError

qd = torch.ops.quantized_decomposed
U8 = (0, 255)
I8 = (-127, 127)
I32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class TensorQuant:
    """uint8 affine quantisation of one activation tensor."""

    scale: float
    zero_point: int

    @classmethod
    def from_range(cls, lo: float, hi: float) -> TensorQuant:
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        scale = (hi - lo) / 255 if hi > lo else 1.0
        return cls(scale, int(min(255, max(0, round(-lo / scale)))))

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        """DQ(Q(x)): the float values an int8 kernel sees. Exported as the Q and DQ ops; evaluated (float32, no
        gradient) as the same arithmetic on the float tensor in place: the uint8 round trip holds integers 0..255
        exactly, so every value is equal (a zero may keep its input's sign, -0.0), about 1.5x faster."""
        exporting = torch.compiler.is_exporting() or torch.compiler.is_compiling()
        if exporting or x.requires_grad or x.dtype != torch.float32:
            q = qd.quantize_per_tensor(x, self.scale, self.zero_point, *U8, torch.uint8)
            return qd.dequantize_per_tensor(q, self.scale, self.zero_point, *U8, torch.uint8)
        y = torch.mul(x, 1.0 / self.scale).round_()  # quantize_per_tensor's own expression
        # clamp(r + z, 0, 255) - z == clamp(r, -z, 255 - z) on the integers r: exact, two passes fewer
        return y.clamp_(U8[0] - self.zero_point, U8[1] - self.zero_point).mul_(self.scale)


@dataclass(frozen=True)
class BlockQuant:
    """Calibrated activation quantisation of one residual block: input, mid (after the first ReLU), second
    convolution's output, block output; ``s`` the output of a projection shortcut (a 1x1 convolution), where the
    block has one."""

    x: TensorQuant
    h: TensorQuant
    c: TensorQuant
    y: TensorQuant
    s: TensorQuant | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.s is None:
            del d["s"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockQuant:
        try:
            parts = {k: _tensor_quant(d[k], k) for k in "xhcy"}
            if isinstance(d, Mapping) and d.get("s") is not None:
                parts["s"] = _tensor_quant(d["s"], "s")
        except (KeyError, TypeError, ValueError):
            raise EdgeskipError("int8 calibration entry needs x, h, c, y with scale and zero_point") from None
        return cls(**parts)


def _tensor_quant(d: Any, k: str) -> TensorQuant:
    t = TensorQuant(float(d["scale"]), int(d["zero_point"]))
    if not (math.isfinite(t.scale) and t.scale > 0 and 0 <= t.zero_point <= 255):
        raise EdgeskipError(f"int8 calibration entry {k}: scale must be > 0 and zero_point in 0..255")
    return t


@dataclass(frozen=True)
class RestQuant:
    """Calibrated activation quantisation of the rest of a network (issue #34): the stem's input (the normalised
    image) and output, each ungated block's :class:`BlockQuant` (global index), and the head's pooled features."""

    stem_x: TensorQuant
    stem_y: TensorQuant
    blocks: dict[int, BlockQuant]
    head: TensorQuant

    def to_dict(self) -> dict[str, Any]:
        return {
            "stem_x": asdict(self.stem_x),
            "stem_y": asdict(self.stem_y),
            "blocks": {str(b): q.to_dict() for b, q in self.blocks.items()},
            "head": asdict(self.head),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RestQuant:
        try:
            return cls(
                _tensor_quant(d["stem_x"], "stem_x"),
                _tensor_quant(d["stem_y"], "stem_y"),
                {int(b): BlockQuant.from_dict(q) for b, q in d["blocks"].items()},
                _tensor_quant(d["head"], "head"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise EdgeskipError("int8 calibration of the rest needs stem_x, stem_y, blocks and head") from None


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-channel factor, offset) of ``bn`` in eval mode: ``bn(y) = factor * y + offset``."""
    k = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return k, bn.bias.detach() - bn.running_mean * k


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(x))`` in eval mode as one convolution."""
    k, b = bn_affine(bn)
    w = conv.weight.detach() * k[:, None, None, None]
    if conv.bias is not None:
        b = b + conv.bias.detach() * k
    return w, b


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Symmetric per-tensor int8: (values in [-127, 127], scale)."""
    scale = float(w.abs().max()) / 127 or 1.0
    return qd.quantize_per_tensor(w, scale, 0, *I8, torch.int8), scale


class Int8Block(nn.Module):
    """The int8 variant of a residual block (see the module docstring). Buffers: ``w1``/``w2`` int8 weights,
    ``b1``/``b2`` int32 biases (``ws``/``bs`` for a projection shortcut); exported as initializers under those
    names. A stage's entry block (issue #34) subsamples and zero-pads its quantised input (option A: exact on the
    input's grid, which is re-quantised at the same scale so the addition stays an int8 one) or projects it (a
    1x1 convolution with its own output scale ``q.s``)."""

    def __init__(self, block: nn.Module, q: BlockQuant) -> None:
        super().__init__()
        shortcut = getattr(block, "shortcut", None)
        self.q = q
        self.stride, self.padding = block.conv1.stride, block.conv1.padding
        w1, b1 = fold_bn(block.conv1, block.bn1)
        w2, b2 = fold_bn(block.conv2, block.bn2)
        q1, self.s_w1 = quantize_weight(w1)
        q2, self.s_w2 = quantize_weight(w2)
        self.s_b1, self.s_b2 = q.x.scale * self.s_w1, q.h.scale * self.s_w2
        self.register_buffer("w1", q1)
        self.register_buffer("w2", q2)
        self.register_buffer("b1", qd.quantize_per_tensor(b1, self.s_b1, 0, *I32, torch.int32))
        self.register_buffer("b2", qd.quantize_per_tensor(b2, self.s_b2, 0, *I32, torch.int32))
        self.pad: nn.Module | None = None
        self.proj_stride = 1
        if isinstance(shortcut, nn.Sequential) and len(shortcut) == 2 and isinstance(shortcut[0], nn.Conv2d):
            if q.s is None:
                raise EdgeskipError("a block with a projection shortcut needs its calibrated output scale 's'")
            ws, bs = fold_bn(shortcut[0], shortcut[1])
            qs, self.s_ws = quantize_weight(ws)
            self.s_bs = q.x.scale * self.s_ws
            self.proj_stride = shortcut[0].stride
            self.register_buffer("ws", qs)
            self.register_buffer("bs", qd.quantize_per_tensor(bs, self.s_bs, 0, *I32, torch.int32))
        elif shortcut is not None and not isinstance(shortcut, nn.Identity):
            if type(shortcut).__name__ != "PadShortcut":
                raise EdgeskipError(f"no int8 variant for a block whose shortcut is a {type(shortcut).__name__}")
            self.pad = shortcut
        elif shortcut is None:
            raise EdgeskipError("only edgeskip's own residual blocks have an int8 variant")

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The shortcut of the quantised input ``x``, on an int8 grid."""
        if self.pad is not None:
            return self.q.x.fake(self.pad(x))
        if hasattr(self, "ws"):
            ws = qd.dequantize_per_tensor(self.ws, self.s_ws, 0, *I8, torch.int8)
            bs = qd.dequantize_per_tensor(self.bs, self.s_bs, 0, *I32, torch.int32)
            assert self.q.s is not None
            return self.q.s.fake(F.conv2d(x, ws, bs, self.proj_stride))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q
        x = q.x.fake(x)
        w1 = qd.dequantize_per_tensor(self.w1, self.s_w1, 0, *I8, torch.int8)
        b1 = qd.dequantize_per_tensor(self.b1, self.s_b1, 0, *I32, torch.int32)
        h = q.h.fake(F.relu(F.conv2d(x, w1, b1, self.stride, self.padding)))
        w2 = qd.dequantize_per_tensor(self.w2, self.s_w2, 0, *I8, torch.int8)
        b2 = qd.dequantize_per_tensor(self.b2, self.s_b2, 0, *I32, torch.int32)
        c = q.c.fake(F.conv2d(h, w2, b2, 1, 1))
        return q.y.fake(F.relu(self.shortcut(x) + c))


class Int8Stem(nn.Module):
    """The int8 variant of a ``conv -> BatchNorm -> ReLU`` stem: the normalised image quantised asymmetric uint8,
    int8 weights (``w``), int32 bias (``b``), a uint8 output."""

    def __init__(self, stem: nn.Sequential, x: TensorQuant, y: TensorQuant) -> None:
        super().__init__()
        conv, bn = stem[0], stem[1]
        self.qx, self.qy = x, y
        self.stride, self.padding = conv.stride, conv.padding
        w, b = fold_bn(conv, bn)
        qw, self.s_w = quantize_weight(w)
        self.s_b = x.scale * self.s_w
        self.register_buffer("w", qw)
        self.register_buffer("b", qd.quantize_per_tensor(b, self.s_b, 0, *I32, torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = qd.dequantize_per_tensor(self.w, self.s_w, 0, *I8, torch.int8)
        b = qd.dequantize_per_tensor(self.b, self.s_b, 0, *I32, torch.int32)
        return self.qy.fake(F.relu(F.conv2d(self.qx.fake(x), w, b, self.stride, self.padding)))


class Int8Linear(nn.Module):
    """The int8 variant of the classifier: its input (the pooled features) quantised uint8, int8 weights (``w``),
    int32 bias (``b``), float logits."""

    def __init__(self, fc: nn.Linear, x: TensorQuant) -> None:
        super().__init__()
        self.qx = x
        qw, self.s_w = quantize_weight(fc.weight.detach())
        self.s_b = x.scale * self.s_w
        self.register_buffer("w", qw)
        bias = fc.bias.detach() if fc.bias is not None else torch.zeros(fc.out_features)
        self.register_buffer("b", qd.quantize_per_tensor(bias, self.s_b, 0, *I32, torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = qd.dequantize_per_tensor(self.w, self.s_w, 0, *I8, torch.int8)
        b = qd.dequantize_per_tensor(self.b, self.s_b, 0, *I32, torch.int32)
        return F.linear(self.qx.fake(x), w, b)


class MinMax:
    """Running min and max of the tensors seen."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def update(self, t: torch.Tensor) -> None:
        self.lo, self.hi = min(self.lo, float(t.min())), max(self.hi, float(t.max()))


def _quant(r: dict[str, MinMax]) -> BlockQuant:
    return BlockQuant(**{k: TensorQuant.from_range(v.lo, v.hi) for k, v in r.items()})


@torch.no_grad()
def _ranges(model: nn.Module, batches: Iterable[torch.Tensor], blocks: Iterable[int]) -> tuple[dict, dict, int]:
    """Activation ranges of ``blocks`` (x, h, c, y; s for a projection shortcut) and of the stem's input and output
    and the head's pooled input, over ``batches`` run through the full float network in eval mode."""
    wanted = [int(b) for b in blocks]
    ranges = {b: {k: MinMax() for k in "xhcy"} for b in wanted}
    ends = {k: MinMax() for k in ("stem_x", "stem_y", "head")}
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x in batches:
            seen += len(x)
            ends["stem_x"].update(x)
            h = model.stem(x)
            ends["stem_y"].update(h)
            for b in model.block_ids:
                block = model.blocks[str(b)]
                if b in ranges:
                    r = ranges[b]
                    r["x"].update(h)
                    mid = F.relu(block.bn1(block.conv1(h)))
                    r["h"].update(mid)
                    r["c"].update(block.bn2(block.conv2(mid)))
                    if isinstance(getattr(block, "shortcut", None), nn.Sequential):
                        r.setdefault("s", MinMax()).update(block.shortcut(h))
                h = block(h)
                if b in ranges:
                    ranges[b]["y"].update(h)
            if hasattr(model, "pool"):  # the head's input (calibrate_rest): the pooled features
                ends["head"].update(torch.flatten(model.pool(h), 1))
    finally:
        model.train(was_training)
    return ranges, ends, seen


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], blocks: Iterable[int]) -> dict[int, BlockQuant]:
    """Activation ranges of ``blocks`` (global indices) over ``batches`` of normalised images, run through the
    full float network in eval mode; returns each block's :class:`BlockQuant`."""
    ranges, _, seen = _ranges(model, batches, blocks)
    if not seen:
        raise EdgeskipError("int8 calibration needs images (the calibration data is empty)")
    return {b: _quant(r) for b, r in ranges.items()}


def calibrate_rest(model: nn.Module, batches: Iterable[torch.Tensor]) -> RestQuant:
    """:class:`RestQuant` of the blocks that are not gated, the stem and the head, as :func:`calibrate` does."""
    gated = set(model.cfg.gated_blocks)
    ranges, ends, seen = _ranges(model, batches, [b for b in model.block_ids if b not in gated])
    if not seen:
        raise EdgeskipError("int8 calibration needs images (the calibration data is empty)")
    q = {k: TensorQuant.from_range(v.lo, v.hi) for k, v in ends.items()}
    return RestQuant(q["stem_x"], q["stem_y"], {b: _quant(r) for b, r in ranges.items()}, q["head"])
