"""Rank the gated blocks from least to most important.

- ``sensitivity``: validation accuracy with the block skipped alone (higher = less important).
- ``weight_l2``: L2 norm of the block's weights (smaller = less important).
- ``random``: a seeded permutation (the control).
Ties are broken by gate index, so every ranking is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from edgeskip.errors import EdgeskipError
from edgeskip.models import BlockNet
from edgeskip.skip import skip_from_indices

RANKINGS = ("sensitivity", "weight_l2", "random")


def single_skip_arrays(num_gates: int) -> list[tuple[bool, ...]]:
    """Skip array k bypasses gate k only."""
    return [skip_from_indices([k], num_gates) for k in range(num_gates)]


def block_weight_l2(model: BlockNet) -> list[float]:
    """L2 norm of all parameters of each gated block, in gate order."""
    out = []
    for b in model.cfg.gated_blocks:
        params = [p.detach().flatten() for p in model.blocks[str(b)].parameters()]
        out.append(float(torch.linalg.vector_norm(torch.cat(params))))
    return out


def order_by(scores: Sequence[float], descending: bool) -> list[int]:
    """Gate indices sorted by score (stable: ties keep gate order)."""
    idx = list(range(len(scores)))
    return sorted(idx, key=lambda k: (-scores[k] if descending else scores[k], k))


def rank_blocks(
    kind: str, model: BlockNet, skipped_alone_acc: Sequence[float] | None = None, seed: int = 0
) -> list[int]:
    """Gate indices from least to most important according to ``kind``."""
    g = model.cfg.num_gates
    if kind == "sensitivity":
        if skipped_alone_acc is None or len(skipped_alone_acc) != g:
            raise ValueError("sensitivity ranking needs the accuracy of each block skipped alone")
        return order_by(skipped_alone_acc, descending=True)
    if kind == "weight_l2":
        return order_by(block_weight_l2(model), descending=False)
    if kind == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(g)]
    raise EdgeskipError(f"unknown ranking {kind!r}; choose from {', '.join(RANKINGS)}")
