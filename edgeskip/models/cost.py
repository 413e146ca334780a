"""Exact cost model: multiply-accumulates (MACs) of a network for any skip array.

The built-in ResNet's count is a formula; any other network's is traced (:func:`count_macs`: one forward pass
with hooks on every convolution and linear layer), and the two agree on the built-in ResNet (tested).

Counted: every convolution (k*k*C_in*C_out per output pixel) and the classifier (C*classes).
Not counted: BatchNorm (folded into the convolutions at deployment), ReLU, residual additions,
padding shortcuts and pooling, which are not multiply-accumulates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from edgeskip.models.config import ModelConfig, ResNetConfig
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


if TYPE_CHECKING:
    from edgeskip.models.blocknet import BlockNet


def count_macs(net: BlockNet) -> CostBreakdown:
    """Per-part MACs of ``net`` measured on one forward pass at its input size: each ``Conv2d`` counts
    k_h*k_w*C_in/groups per output element, each ``Linear`` its input features per output element."""
    import torch
    from torch import nn

    owner: dict[nn.Module, object] = {}
    for m in net.stem.modules():
        owner[m] = "stem"
    for i in net.block_ids:
        for m in net.blocks[str(i)].modules():
            owner[m] = i
    for head in net.head_modules().values():
        for m in head.modules():
            owner[m] = "head"
    parts: dict[object, int] = {}

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        per = out.numel() // out.shape[0]
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        else:
            k = m.in_features
        key = owner.get(m, "head")
        parts[key] = parts.get(key, 0) + per * k

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, net.cfg.in_channels, *net.cfg.input_size))
    finally:
        net.train(was)
        for h in handles:
            h.remove()
    return CostBreakdown(
        parts.get("stem", 0), tuple(parts.get(i, 0) for i in range(net.cfg.num_blocks)), parts.get("head", 0)
    )


@lru_cache(maxsize=16)
def _traced(key: str) -> CostBreakdown:
    from edgeskip.models import build_model
    from edgeskip.models.config import config_from_dict

    return count_macs(build_model(config_from_dict(json.loads(key))))


def breakdown(cfg: ModelConfig) -> CostBreakdown:
    """Per-part MACs of the full network described by ``cfg``."""
    if not isinstance(cfg, ResNetConfig):
        return _traced(json.dumps(cfg.to_dict(), sort_keys=True))
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


def block_macs(cfg: ModelConfig) -> list[int]:
    """MACs of each block, indexed by global block index."""
    return list(breakdown(cfg).blocks)


def macs(cfg: ModelConfig, skip: object | None = None) -> int:
    """Total MACs of one inference of one image with the given skip array (None = no skipping)."""
    bd = breakdown(cfg)
    if skip is None:
        return bd.total()
    s = normalize_options(skip, cfg.num_gates)  # a skip or option array: every non-zero entry runs its block
    off = {g for g, e in zip(cfg.gated_blocks, s) if not e}
    return bd.total([i for i in range(cfg.num_blocks) if i not in off])
