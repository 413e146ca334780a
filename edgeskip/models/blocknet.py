"""The one forward walk over blocks: every network edgeskip handles is ``stem -> blocks -> head``.

A :class:`BlockNet` holds its blocks in an ``nn.ModuleDict`` keyed by their global index; some are *gated*
(``cfg.gated_blocks``: residual blocks with an identity shortcut). :meth:`BlockNet.plan` turns a skip or option
array into the list of modules to run, and every view of a network walks that list: the model's own forward,
the gated and static export graphs, the shared-prefix evaluator and the learned-gate networks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from edgeskip.errors import EdgeskipError
from edgeskip.skip import INT8, REST8, SKIP, has_rest, normalize_options

Step = Callable[[int, nn.Module, torch.Tensor], torch.Tensor]


class Walk(nn.Module):
    """``stem -> blocks -> head`` over ``blocks`` in ``walk_order``: the one forward walk. A gated block (index in
    ``walk_gated``) runs through ``step(index, block, h)``, which decides (a skip array, a torch.cond, a learned
    gate); every other block runs as it is."""

    stem: nn.Module
    blocks: nn.ModuleDict

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the output of the last block."""
        raise NotImplementedError

    @property
    def walk_order(self) -> Iterable[int]:
        return [int(k) for k in self.blocks.keys()]

    @property
    def walk_gated(self) -> set[int]:
        return set()

    def walk(
        self,
        x: torch.Tensor,
        step: Step | None = None,
        ends: tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """``ends``: the stem and head to run instead of this network's own (the int8 rest, :meth:`BlockNet.ends`);
        ``step`` then decides every block, the ungated ones included (they run their int8 variants)."""
        stem, head = (self.stem, self.head) if ends is None else ends
        h = stem(x)
        gated = (self.walk_gated if ends is None else set(self.walk_order)) if step is not None else ()
        for b in self.walk_order:
            block = self.blocks[str(b)]
            h = step(b, block, h) if b in gated else block(h)  # type: ignore[misc]
        return head(h)


class BlockNet(Walk):
    """Base of the built-in ResNet and of any traced model: ``forward(x, skip)`` walks the blocks :meth:`plan`
    chooses."""

    cfg: Any  # a ResNetConfig or NetConfig: num_blocks, num_gates, gated_blocks, input_size, ...

    @property
    def block_ids(self) -> list[int]:
        """Global indices of the blocks present in this network, in order."""
        return [int(k) for k in self.blocks.keys()]

    @property
    def walk_gated(self) -> set[int]:
        return set(self.cfg.gated_blocks)

    def head_modules(self) -> dict[str, nn.Module]:
        """The submodules :meth:`head` uses, by attribute name (export views adopt them under the same names)."""
        raise NotImplementedError

    def bypass(self, index: int) -> nn.Module | None:
        """What a skipped gated block reduces to: None when it is the identity (nothing runs)."""
        return None

    def variant(self, index: int, option: int) -> nn.Module:
        """The module running block ``index`` under a non-skip, non-full option: a gated block's int8 variant
        (INT8), an ungated block's under the int8 rest (REST8)."""
        raise EdgeskipError(f"block {index} has no variant for option {option} in this model")

    def rest_modules(self) -> tuple[nn.Module, dict[str, nn.Module]] | None:
        """The int8 rest's stem and head modules (by :meth:`head_modules`' names), None where it has none."""
        return None

    def ends(self, options: object | None) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None:
        """The stem and head that run ``options``: None for this network's own, the int8 ones under the int8 rest
        (an :class:`ExportView` over them runs the network's head code)."""
        if options is None or not has_rest(normalize_options(options, self.cfg.num_gates)):
            return None
        view = getattr(self, "_rest_view", None)
        if view is None:  # ExportView refuses a network without the int8 rest, in one line
            view = ExportView(self, nn.ModuleDict(), rest=True)
            object.__setattr__(self, "_rest_view", view)  # not a submodule: never in a state dict
        return view.stem, view.head

    def plan(self, options: object | None) -> list[tuple[int, nn.Module]]:
        """(global index, module to run) for a skip or option array (None = every block, full precision)."""
        if options is None:
            return [(i, self.blocks[str(i)]) for i in self.block_ids]
        o = normalize_options(options, self.cfg.num_gates)
        choice = dict(zip(self.cfg.gated_blocks, o))
        rest = has_rest(o)
        out: list[tuple[int, nn.Module]] = []
        for i in self.block_ids:
            c = choice.get(i)
            if c is None and rest:
                out.append((i, self.variant(i, REST8)))
            elif c == SKIP:
                by = self.bypass(i)
                if by is not None:
                    out.append((i, by))
            elif c == INT8:
                out.append((i, self.variant(i, c)))
            else:
                out.append((i, self.blocks[str(i)]))
        return out

    def executed_blocks(self, skip: object | None) -> list[int]:
        """Global indices of the blocks whose computation runs for ``skip`` (None = all)."""
        present = self.block_ids
        if skip is None:
            return present
        s = normalize_options(skip, self.cfg.num_gates)
        off = {g for g, e in zip(self.cfg.gated_blocks, s) if e == SKIP}
        return [i for i in present if i not in off]

    def forward(self, x: torch.Tensor, skip: object | None = None) -> torch.Tensor:
        if skip is None:
            return self.walk(x)
        run = dict(self.plan(skip))  # every block, the ungated ones included (int8 under the int8 rest)
        return self.walk(x, lambda b, block, h: run[b](h) if b in run else h, self.ends(skip))


class ExportView(Walk):
    """Base of the export graphs: adopts a network's stem, blocks and head modules under the network's own
    attribute names, so every graph names each weight as the checkpoint does (``blocks.4.conv1.weight``), and
    walks them as the network does. ``rest``: the int8 stem and head instead (``stem.w``, ``fc.w``), and with
    the model's own blocks, each ungated block's int8 variant (``blocks.<i>.w1``)."""

    def __init__(self, model: BlockNet, blocks: nn.ModuleDict | None = None, rest: bool = False) -> None:
        super().__init__()
        ends = model.rest_modules() if rest else (model.stem, model.head_modules())
        if ends is None:
            raise EdgeskipError("this network has no int8 variant of its stem and head (calibrate the rest first)")
        self.stem = ends[0]
        own = blocks is None  # the network's blocks, its gated ones gated
        if blocks is None:
            gated = set(model.cfg.gated_blocks)
            blocks = (
                nn.ModuleDict(
                    {str(i): model.blocks[str(i)] if i in gated else model.variant(i, REST8) for i in model.block_ids}
                )
                if rest
                else model.blocks
            )
        self.blocks = blocks
        for name, m in ends[1].items():
            self.add_module(name, m)
        self._head = type(model).head  # the network's head code, run on this view's adopted modules
        self._gated = set(model.cfg.gated_blocks) if own else set()

    @property
    def walk_gated(self) -> set[int]:
        return self._gated

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self._head(self, h)  # type: ignore[arg-type]  # head reads only the head_modules attributes
