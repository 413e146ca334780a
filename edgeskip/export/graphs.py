"""Export-ready views of a trained network.

Both views hold the *same* submodules as the model (``stem``, ``blocks``, ``pool``, ``fc``), so
parameter names in every exported graph are the checkpoint's (``blocks.4.conv1.weight``): static
graphs of different configs and the gated graph name each weight identically.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from edgeskip.models import CifarResNet


class GatedGraph(nn.Module):
    """``forward(image, skip)``: one ``torch.cond`` per gate, exported as one ONNX ``If`` each.

    ``skip`` is a bool tensor of length B_s (True = execute). The bypass branch returns the block
    input unchanged (a copy, since a branch may not alias its input).
    """

    def __init__(self, model: CifarResNet) -> None:
        super().__init__()
        self.stem, self.blocks, self.pool, self.fc = model.stem, model.blocks, model.pool, model.fc
        self.gate_of = {b: k for k, b in enumerate(model.cfg.gated_blocks)}
        self.order = model.block_ids

    def forward(self, image: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = self.stem(image)
        for b in self.order:
            block = self.blocks[str(b)]
            if b in self.gate_of:
                h = torch.cond(skip[self.gate_of[b]], lambda t, block=block: block(t), lambda t: t.clone(), (h,))
            else:
                h = block(h)
        return self.fc(torch.flatten(self.pool(h), 1))


class StaticGraph(nn.Module):
    """``forward(image)`` of one config: the bypassed blocks are absent, no control flow. ``skip`` may be an
    option array: an int8 block is its QDQ variant (int8 weights ``blocks.<i>.w1`` ...; float blocks keep the
    checkpoint's names)."""

    def __init__(self, model: CifarResNet, skip: Sequence[object]) -> None:
        super().__init__()
        self.stem, self.pool, self.fc = model.stem, model.pool, model.fc
        self.blocks = nn.ModuleDict({str(b): block for b, block in model.plan(skip)})

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.stem(image)
        for block in self.blocks.values():
            h = block(h)
        return self.fc(torch.flatten(self.pool(h), 1))
