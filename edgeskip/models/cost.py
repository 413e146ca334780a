"""Exact cost model: multiply-accumulates (MACs) of a network for any skip array.

Counted: every convolution (k*k*C_in*C_out per output pixel) and the classifier (C*classes).
Not counted: BatchNorm (folded into the convolutions at deployment), ReLU, residual additions,
padding shortcuts and pooling, which are not multiply-accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeskip.models.config import ResNetConfig
from edgeskip.skip import normalize_options


def _conv_out(size: int, stride: int, k: int = 3, pad: int = 1) -> int:
    return (size + 2 * pad - k) // stride + 1


@dataclass(frozen=True)
class CostBreakdown:
    """MACs of the stem, of each block (by global index) and of the classifier head."""

    stem: int
    blocks: tuple[int, ...]
    head: int

    def total(self, executed: list[int] | None = None) -> int:
        idx = range(len(self.blocks)) if executed is None else executed
        return self.stem + sum(self.blocks[i] for i in idx) + self.head


def breakdown(cfg: ResNetConfig) -> CostBreakdown:
    """Per-part MACs of the full network described by ``cfg``."""
    h, w = cfg.input_size
    w1 = cfg.widths[0]
    stem = h * w * cfg.in_channels * w1 * 9
    blocks = []
    in_ch = w1
    n = cfg.blocks_per_stage
    for s, width in enumerate(cfg.widths):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            ho, wo = _conv_out(h, stride), _conv_out(w, stride)
            m = ho * wo * in_ch * width * 9 + ho * wo * width * width * 9
            if stride != 1 or in_ch != width:
                if cfg.shortcut == "proj":
                    m += ho * wo * in_ch * width
            blocks.append(m)
            h, w, in_ch = ho, wo, width
    head = cfg.widths[2] * cfg.num_classes
    return CostBreakdown(stem, tuple(blocks), head)


def block_macs(cfg: ResNetConfig) -> list[int]:
    """MACs of each block, indexed by global block index."""
    return list(breakdown(cfg).blocks)


def macs(cfg: ResNetConfig, skip: object | None = None) -> int:
    """Total MACs of one inference of one image with the given skip array (None = no skipping)."""
    bd = breakdown(cfg)
    if skip is None:
        return bd.total()
    s = normalize_options(skip, cfg.num_gates)  # a skip or option array: every non-zero entry runs its block
    off = {g for g, e in zip(cfg.gated_blocks, s) if not e}
    return bd.total([i for i in range(cfg.num_blocks) if i not in off])
