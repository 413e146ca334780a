"""Accuracy of many skip arrays at once, sharing computation between them.

The skip (or option) arrays form a trie over per-block decisions (the module run, or bypass) in network order, under
the stem that runs them (the network's own, or the int8 rest's: :meth:`BlockNet.ends`). For each batch each stem runs
once; a depth-first walk of the trie runs each block once per distinct
*prefix* of decisions, so all configs that agree up to block i share everything before it. For the
sensitivity list (each block skipped alone) and the N-least-important candidates this runs a small
fraction of the blocks that evaluating every config separately would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeskip.data.batches import iterate
from edgeskip.data.dataset import ArrayDataset, Normalization
from edgeskip.models import BlockNet


@dataclass
class _Node:
    children: dict[nn.Module | None, _Node] = field(default_factory=dict)  # None: the block is bypassed
    configs: list[int] = field(default_factory=list)
    head: Callable[[torch.Tensor], torch.Tensor] | None = None  # at a leaf: the head its configs run


class SharedPrefixEvaluator:
    """Counts correct predictions of every skip or option array in one pass per batch."""

    def __init__(self, model: BlockNet, skip_arrays: Sequence[object]) -> None:
        self.model = model.eval()
        self.block_ids = model.block_ids
        self.root = _Node()  # its children: one per stem
        self.n = len(skip_arrays)
        for k, s in enumerate(skip_arrays):
            run = dict(model.plan(s))
            stem, head = model.ends(s) or (model.stem, model.head)
            node = self.root.children.setdefault(stem, _Node())
            for b in self.block_ids:
                node = node.children.setdefault(run.get(b), _Node())
            node.configs.append(k)
            node.head = head
        self.block_runs = 0  # blocks executed (per batch) by the shared walk

    @property
    def naive_block_runs(self) -> int:
        """Blocks executed per batch if every config ran separately."""

        def walk(node: _Node, executed: int) -> int:
            total = executed * len(node.configs)
            for d, child in node.children.items():
                total += walk(child, executed + int(d is not None))
            return total

        return sum(walk(c, 0) for c in self.root.children.values())

    @property
    def shared_block_runs(self) -> int:
        """Blocks executed per batch by the shared walk (one per execute-edge of the trie)."""

        def walk(node: _Node) -> int:
            return sum(int(d is not None) + walk(c) for d, c in node.children.items())

        return sum(walk(c) for c in self.root.children.values())

    @torch.no_grad()
    def correct(self, x: torch.Tensor, y: torch.Tensor) -> list[int]:
        """Number of correct predictions of each config on one batch."""
        out = [0] * self.n
        stack = [(node, stem(x)) for stem, node in self.root.children.items()]
        while stack:
            node, h = stack.pop()
            if node.configs:
                assert node.head is not None
                hits = int((node.head(h).argmax(1) == y).sum())
                for k in node.configs:
                    out[k] = hits
            for block, child in node.children.items():
                h2 = block(h) if block is not None else h
                stack.append((child, h2))
        return out


def evaluate_skip_arrays(
    model: BlockNet, ds: ArrayDataset, norm: Normalization, skip_arrays: Sequence[object], batch_size: int = 500
) -> list[float]:
    """Top-1 accuracy of each skip array on ``ds`` (identical to running each config separately)."""
    ev = SharedPrefixEvaluator(model, skip_arrays)
    device = next(model.parameters()).device
    totals = [0] * len(skip_arrays)
    for xb, yb in iterate(ds, norm, batch_size):
        for k, c in enumerate(ev.correct(xb.to(device), yb.to(device))):
            totals[k] += c
    return [t / len(ds) for t in totals]
