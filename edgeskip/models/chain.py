"""Any traced CNN as a :class:`~edgeskip.models.blocknet.BlockNet`: stem, gated blocks and the segments between.

The source model (torchvision, timm, a user's factory) is traced with torch.fx, its gated blocks kept as leaves.
The graph must be a *chain* at every gated block: the block's input is the only value that crosses it. The
graph is then cut at the blocks into the stem (before the first), the segments between blocks (ungated
blocks of the chain, e.g. a stage's entry block with its projection shortcut) and the head (after the last).
Each gated block becomes a :class:`ResidualUnit` over its traced branch and tail, with stochastic depth.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from edgeskip.errors import EdgeskipError
from edgeskip.models import zoo  # noqa: E402 - submodule import, no cycle
from edgeskip.models.blocknet import BlockNet
from edgeskip.models.config import NetConfig
from edgeskip.models.residual import (
    ResidualSplit,
    find_blocks,
    is_relu,
    select_blocks,
    trace,
    why_not_residual,
)
from edgeskip.models.stochastic_depth import residual

_MAXPOOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


class ResidualUnit(nn.Module):
    """``tail(x + F(x))`` with stochastic depth on ``F``: in batch mode a dropped branch is not computed."""

    def __init__(self, split: ResidualSplit, p_survive: float, sd_mode: str) -> None:
        super().__init__()
        self.branch = split.branch
        self.tail = split.tail
        self.p_survive = float(p_survive)
        self.sd_mode = sd_mode

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        return self.tail(h) if self.tail is not None else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual(x, x, self.branch, self.finish, self.p_survive, self.sd_mode, self.training)


def _segment(root: nn.Module, nodes: list[fx.Node], start: fx.Node | None, end: fx.Node) -> nn.Module:
    """A module computing ``end`` from the value of ``start`` (None: the network input) over ``nodes``."""
    if end is start:
        return nn.Identity()
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if start is not None:
        env[start] = g.placeholder("x")

    def lookup(a: fx.Node) -> fx.Node:
        if a not in env:
            if a.op != "get_attr":
                raise EdgeskipError(f"value {a.name!r} crosses a gated block: the model is not a chain of blocks")
            env[a] = g.node_copy(a)
        return env[a]

    for n in nodes:
        if n.op == "placeholder":
            env[n] = g.placeholder("x")
        elif n.op != "output":
            env[n] = g.node_copy(n, lookup)
    g.output(lookup(end))
    gm = fx.GraphModule(root, g)
    gm.graph.eliminate_dead_code()
    return fx.GraphModule(root, gm.graph)  # holds only the submodules the live nodes use


def _nonneg(gm: fx.GraphModule, node: fx.Node, splits: dict[str, ResidualSplit]) -> bool:
    """Whether the value of ``node`` is provably >= 0 (a ReLU, a max-pool of one, a block ending in a ReLU)."""
    if is_relu(gm, node):
        return True
    if node.op == "call_module" and str(node.target) in splits:
        return splits[str(node.target)].tail_is_relu
    pool = (node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _MAXPOOLS)) or (
        node.op == "call_function" and node.target in (F.max_pool2d, F.adaptive_max_pool2d)
    )
    return pool and isinstance(node.args[0], fx.Node) and _nonneg(gm, node.args[0], splits)


class ChainNet(BlockNet):
    """A traced network cut at its gated blocks (see the module docstring)."""

    def __init__(self, cfg: NetConfig, source: nn.Module) -> None:
        super().__init__()
        mods = dict(source.named_modules())
        if cfg.resolved:
            blocks = list(cfg.blocks)
        else:  # the user's --blocks (paths or globs), else every residual block with an identity shortcut
            blocks = select_blocks(source, cfg.blocks) if cfg.blocks else find_blocks(source)
        if not blocks:
            raise EdgeskipError(
                f"{cfg.model} has no residual block with an identity shortcut (a module computing tail(x + F(x)) "
                f"from its one input): nothing to skip; every module was tried, so --blocks cannot name one either"
            )
        splits: dict[str, ResidualSplit] = {}
        for b in blocks:
            if b not in mods:
                raise EdgeskipError(f"block {b!r} is not a module of {cfg.model}")
            r = why_not_residual(mods[b])
            if not isinstance(r, ResidualSplit):
                raise EdgeskipError(
                    f"block {b!r} of {cfg.model} is not a residual block with an identity shortcut: {r}"
                )
            splits[b] = r
        try:
            gm = trace(source, blocks)
        except Exception as e:  # noqa: BLE001 - fx fails in many ways on untraceable code
            raise EdgeskipError(
                f"cannot trace {cfg.model} with torch.fx ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:100] if str(e) else ''})"
            ) from None
        graph = gm.graph
        nodes = list(graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise EdgeskipError(f"{cfg.model}'s forward takes {len(inputs)} inputs; edgeskip needs one image tensor")
        calls = [n for n in nodes if n.op == "call_module" and str(n.target) in splits]
        called = [str(c.target) for c in calls]
        if sorted(called) != sorted(blocks):
            twice = sorted({b for b in called if called.count(b) > 1} | (set(blocks) - set(called)))
            raise EdgeskipError(f"blocks {twice} of {cfg.model} are not each run exactly once by its forward")
        for c in calls:
            if len(c.args) != 1 or c.kwargs or not isinstance(c.args[0], fx.Node):
                raise EdgeskipError(f"block {c.target!r} is called with more than one input")
        # segment id of every node: 0 up to the first block, j after the j-th block call
        seg: dict[fx.Node, int] = {}
        j = 0
        for n in nodes:
            if j < len(calls) and n is calls[j]:
                j += 1
            seg[n] = j
        for n in nodes:
            if n.op in ("get_attr", "output"):
                continue
            for u in n.users:
                if seg[u] != seg[n] and not (seg[u] == seg[n] + 1 and u is calls[seg[n]] and u.args[0] is n):
                    where = calls[seg[n] - 1].target if seg[n] else "the stem"
                    raise EdgeskipError(
                        f"{cfg.model} is not a chain of blocks: value {n.name!r} (after {where}) "
                        f"is used past the next gated block"
                    )
        out_node = next(n for n in nodes if n.op == "output")
        between = [[n for n in nodes if seg[n] == k and n not in calls] for k in range(len(calls) + 1)]

        self.stem = _segment(gm, between[0], None, calls[0].args[0])
        probs = cfg.survival_probs_for(len(calls))
        units: dict[str, nn.Module] = {}
        gated: list[int] = []
        self._bypass: dict[int, bool] = {}
        for k, c in enumerate(calls):
            if k > 0:
                glue = _segment(gm, between[k], calls[k - 1], c.args[0])
                if not isinstance(glue, nn.Identity):
                    units[str(len(units))] = glue
            name = str(c.target)
            split = splits[name]
            idx = len(units)
            units[str(idx)] = ResidualUnit(split, probs[k], cfg.sd_mode)
            gated.append(idx)
            # a skipped block computes tail(x): nothing when there is no tail, or a ReLU of a non-negative x
            self._bypass[idx] = split.tail is not None and not (split.tail_is_relu and _nonneg(gm, c.args[0], splits))
        self.blocks = nn.ModuleDict(units)
        self.head_net = _segment(gm, between[-1], calls[-1], out_node.args[0])
        resolved = dataclasses.replace(cfg, blocks=tuple(called), num_blocks=len(units), gated_blocks=tuple(gated))
        if cfg.resolved and (cfg.blocks, cfg.num_blocks, cfg.gated_blocks) != (
            resolved.blocks,
            resolved.num_blocks,
            resolved.gated_blocks,
        ):
            raise EdgeskipError(
                f"{cfg.model} no longer cuts into the blocks its checkpoint records (another version of its library?)"
            )
        self.cfg = resolved

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_net(h)

    def head_modules(self) -> dict[str, nn.Module]:
        return {"head_net": self.head_net}

    def bypass(self, index: int) -> nn.Module | None:
        unit = self.blocks[str(index)]
        return unit.tail if self._bypass.get(index) else None


def build_chain(cfg: NetConfig, init_weights: str | None = None) -> ChainNet:
    """Create the source model (optionally loading local weights), find or check its blocks and cut it."""
    source = zoo.create(cfg.model, cfg.num_classes, cfg.in_channels, cfg.kwargs)
    if init_weights:
        zoo.load_weights(source, init_weights)
    net = ChainNet(cfg, source)
    if not cfg.resolved:
        check_input_size(net)
    return net


def check_input_size(net: BlockNet) -> None:
    """A one-line error when the network cannot take its configured input size."""
    c, (h, w) = net.cfg.in_channels, net.cfg.input_size
    was = net.training
    try:
        with torch.no_grad():
            y = net.eval()(torch.zeros(1, c, h, w))
    except Exception as e:  # noqa: BLE001 - shape errors come as RuntimeError/ValueError/IndexError
        raise EdgeskipError(
            f"{net.cfg.name} cannot take {c}x{h}x{w} inputs ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''})"
        ) from None
    finally:
        net.train(was)
    if tuple(y.shape) != (1, net.cfg.num_classes):
        raise EdgeskipError(
            f"{net.cfg.name} returns shape {tuple(y.shape)} for one image, not (1, {net.cfg.num_classes}) logits"
        )
