"""Export-ready views of a trained network.

Both views hold the *same* submodules as the model (``stem``, ``blocks`` and the head's), so
parameter names in every exported graph are the checkpoint's (``blocks.4.conv1.weight``): static
graphs of different configs and the gated graph name each weight identically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from edgeskip.export.splice import Switch, mark, with_marks
from edgeskip.models import BlockNet
from edgeskip.models.blocknet import ExportView
from edgeskip.skip import FULL, INT8, SKIP, has_rest, normalize_options

# where OptionsGraph holds the int8 variants; the exported graph names their weights ``blocks.<i>.w1`` instead
VARIANTS = "variants"


def dense(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` with a contiguous result. ``torch.cond`` requires both branches to return the same strides, and a
    block whose last op is a permute (ConvNeXt's channels-last LayerNorm) returns other strides than its input on
    a 1x1 map; ONNX has no strides, so this adds no node to the graph."""
    return lambda t: fn(t).contiguous()


def bypass_branch(by: nn.Module | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``If`` branch of a skipped block: the block input (a copy, since a branch may not alias its input), or
    what the block reduces to (``by``, :meth:`BlockNet.bypass`) when that is not the identity."""
    return dense(lambda t: t.clone(memory_format=torch.contiguous_format)) if by is None else dense(by)


class GatedGraph(ExportView):
    """``forward(image, skip)``: one ``torch.cond`` per gate, exported as one ONNX ``If`` each.

    ``skip`` is a bool tensor of length B_s (True = execute); a skipped block runs :func:`bypass_branch`.
    Exported spliced (:func:`~edgeskip.export.onnx_export.export_spliced`): each gate marked, the ``If``s of
    :meth:`switch` assembled in ONNX.
    """

    def __init__(self, model: BlockNet) -> None:
        super().__init__(model)
        self.gate_of = {b: k for k, b in enumerate(model.cfg.gated_blocks)}
        self.reduced = {b: model.bypass(b) for b in self.gate_of}
        self.bypass = {b: bypass_branch(by) for b, by in self.reduced.items()}
        self.marks: list[torch.Tensor] | None = None

    def switch(self, b: int) -> Switch:
        return Switch([self.blocks[str(b)], self.reduced[b]], [FULL, SKIP])

    def forward(self, image: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        def step(b: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            run = skip[self.gate_of[b]]
            if self.marks is not None:
                return mark(self, b, run, h)
            return torch.cond(run, dense(block), self.bypass[b], (h,))

        return with_marks(self, self.walk(image, step))


class OptionsGraph(ExportView):
    """``forward(image, options)``: per gate, ``options`` (int64 [B_s], an option array: 0 skip, 1 full precision, 8
    int8) chooses the bypass, the block or its int8 variant: two nested ``torch.cond``s, two ONNX ``If``s (exported
    spliced, as :class:`GatedGraph`). Never
    deployed: exported once, then cut into each option array's static graph in milliseconds
    (:func:`~edgeskip.export.onnx_export.specialise`) instead of tracing each one. Every gated block needs its
    int8 variant (``attach_int8``). ``rest``: the int8 rest's graph (the stem, the ungated blocks and the head in
    int8, ``attach_int8_rest``), from which the option arrays that end in REST8 are cut."""

    def __init__(self, model: BlockNet, rest: bool = False) -> None:
        super().__init__(model, rest=rest)
        self.gate_of = {b: k for k, b in enumerate(model.cfg.gated_blocks)}
        self.reduced = {b: model.bypass(b) for b in self.gate_of}
        self.bypass = {b: bypass_branch(by) for b, by in self.reduced.items()}
        self.add_module(VARIANTS, nn.ModuleDict({str(b): model.variant(b, INT8) for b in self.gate_of}))
        self.marks: list[torch.Tensor] | None = None

    def switch(self, b: int) -> Switch:
        return Switch([self.reduced[b], getattr(self, VARIANTS)[str(b)], self.blocks[str(b)]], [SKIP, INT8, FULL])

    def forward(self, image: torch.Tensor, options: torch.Tensor) -> torch.Tensor:
        variants = getattr(self, VARIANTS)

        def step(b: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            o = options[self.gate_of[b]]
            if self.marks is not None:
                return mark(self, b, o == SKIP, h)
            variant = variants[str(b)]

            def run(t: torch.Tensor) -> torch.Tensor:
                return torch.cond(o == INT8, dense(variant), dense(block), (t,))

            return torch.cond(o == SKIP, self.bypass[b], run, (h,))

        return with_marks(self, self.walk(image, step))


class StaticGraph(ExportView):
    """``forward(image)`` of one config: the bypassed blocks are absent, no control flow. ``skip`` may be an
    option array: an int8 block is its QDQ variant (int8 weights ``blocks.<i>.w1`` ...; float blocks keep the
    checkpoint's names), and under the int8 rest the stem and head are too (``stem.w``, ``fc.w``)."""

    def __init__(self, model: BlockNet, skip: Sequence[object]) -> None:
        rest = has_rest(normalize_options(skip, model.cfg.num_gates))
        super().__init__(model, nn.ModuleDict({str(b): block for b, block in model.plan(skip)}), rest=rest)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.walk(image)
