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
        """DQ(Q(x)): the float values an int8 kernel sees."""
        q = qd.quantize_per_tensor(x, self.scale, self.zero_point, *U8, torch.uint8)
        return qd.dequantize_per_tensor(q, self.scale, self.zero_point, *U8, torch.uint8)


@dataclass(frozen=True)
class BlockQuant:
    """Calibrated activation quantisation of one residual block: input, mid (after the first ReLU), second
    convolution's output, block output."""

    x: TensorQuant
    h: TensorQuant
    c: TensorQuant
    y: TensorQuant

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockQuant:
        try:
            parts = {k: TensorQuant(float(d[k]["scale"]), int(d[k]["zero_point"])) for k in "xhcy"}
        except (KeyError, TypeError, ValueError):
            raise EdgeskipError("int8 calibration entry needs x, h, c, y with scale and zero_point") from None
        for k, t in parts.items():
            if not (math.isfinite(t.scale) and t.scale > 0 and 0 <= t.zero_point <= 255):
                raise EdgeskipError(f"int8 calibration entry {k}: scale must be > 0 and zero_point in 0..255")
        return cls(**parts)


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
    """The int8 variant of a residual block with an identity shortcut (see the module docstring). Buffers:
    ``w1``/``w2`` int8 weights, ``b1``/``b2`` int32 biases; exported as initializers under those names."""

    def __init__(self, block: nn.Module, q: BlockQuant) -> None:
        super().__init__()
        if not isinstance(getattr(block, "shortcut", None), nn.Identity):
            raise EdgeskipError("only a residual block with an identity shortcut has an int8 variant")
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q
        x = q.x.fake(x)
        w1 = qd.dequantize_per_tensor(self.w1, self.s_w1, 0, *I8, torch.int8)
        b1 = qd.dequantize_per_tensor(self.b1, self.s_b1, 0, *I32, torch.int32)
        h = q.h.fake(F.relu(F.conv2d(x, w1, b1, self.stride, self.padding)))
        w2 = qd.dequantize_per_tensor(self.w2, self.s_w2, 0, *I8, torch.int8)
        b2 = qd.dequantize_per_tensor(self.b2, self.s_b2, 0, *I32, torch.int32)
        c = q.c.fake(F.conv2d(h, w2, b2, 1, 1))
        return q.y.fake(F.relu(x + c))


class MinMax:
    """Running min and max of the tensors seen."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def update(self, t: torch.Tensor) -> None:
        self.lo, self.hi = min(self.lo, float(t.min())), max(self.hi, float(t.max()))


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], blocks: Iterable[int]) -> dict[int, BlockQuant]:
    """Activation ranges of ``blocks`` (global indices) over ``batches`` of normalised images, run through the
    full float network in eval mode; returns each block's :class:`BlockQuant`."""
    wanted = [int(b) for b in blocks]
    ranges = {b: {k: MinMax() for k in "xhcy"} for b in wanted}
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x in batches:
            seen += len(x)
            h = model.stem(x)
            for b in model.block_ids:
                block = model.blocks[str(b)]
                if b in ranges:
                    r = ranges[b]
                    r["x"].update(h)
                    mid = F.relu(block.bn1(block.conv1(h)))
                    r["h"].update(mid)
                    r["c"].update(block.bn2(block.conv2(mid)))
                h = block(h)
                if b in ranges:
                    ranges[b]["y"].update(h)
    finally:
        model.train(was_training)
    if not seen:
        raise EdgeskipError("int8 calibration needs images (the calibration data is empty)")
    return {b: BlockQuant(**{k: TensorQuant.from_range(v.lo, v.hi) for k, v in r.items()}) for b, r in ranges.items()}
