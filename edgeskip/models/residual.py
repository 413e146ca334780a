"""Residual blocks with an identity shortcut, found by tracing (torch.fx): ``y = tail(x + F(x))``.

A module is such a block when its traced graph adds its own input ``x`` to a branch ``F(x)`` computed from
``x`` alone, and at most a chain of single-input operations (``tail``, e.g. the post-activation ReLU of a
ResNet block) follows the addition. torchvision's BasicBlock/Bottleneck without ``downsample``, its
InvertedResidual with ``use_res_connect``, timm's ResNet blocks without a downsample and a user's own
``x + F(x)`` all qualify; a block with a projection or a stride on its shortcut does not (its shortcut is
not ``x``). The split gives edgeskip the branch and the tail as separate modules, which is what skipping
(and stochastic depth) needs: a skipped block computes ``tail(x)``, nothing at all when that is ``x``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from edgeskip.errors import EdgeskipError

ADDS = (operator.add, operator.iadd, torch.add)
RELUS = (F.relu, torch.relu, torch.relu_)


@dataclass
class ResidualSplit:
    """A block split into its residual branch and the operations after the addition."""

    branch: fx.GraphModule
    tail: fx.GraphModule | None  # None: y = x + F(x)
    tail_is_relu: bool


# Modules whose forward depends on train/eval mode. A trace that runs through such a forward freezes the mode of
# the moment into the graph: torchvision's StochasticDepth and timm's DropPath traced in training mode dropped
# branches at random in eval mode, and timm's BatchNormAct2d normalised with batch statistics. As leaves of every
# trace, they keep reading their own ``training`` flag when the traced network runs.
MODE_DEPENDENT = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)
MODE_DEPENDENT_NAMES = frozenset({"StochasticDepth", "DropPath", "DropBlock2d", "DropBlock"})
# shape checks a library puts in its forward (timm's norm layers): no value of the network depends on them
ASSERTS = (torch._assert, torch._assert_async)


def mode_dependent(m: nn.Module) -> bool:
    """Whether ``m``'s forward reads its train/eval mode (norm layers, dropout, drop-path, stochastic depth)."""
    return isinstance(m, MODE_DEPENDENT) or any(c.__name__ in MODE_DEPENDENT_NAMES for c in type(m).__mro__)


class Tracer(fx.Tracer):
    """torch.fx tracer whose leaves are ``leaves`` (qualified names), the mode-dependent modules and torch.nn's."""

    def __init__(self, leaves: Iterable[str] = ()) -> None:
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or mode_dependent(m) or super().is_leaf_module(m, qualname)


def trace(module: nn.Module, leaves: Iterable[str] = ()) -> fx.GraphModule:
    """``module`` traced by torch.fx (:class:`Tracer`) in eval mode, without shape assertions.

    What still reads ``self.training`` outside a leaf (a functional dropout in a model's own forward) is frozen at
    its inference behaviour, never at its training one; every module's mode is restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        graph = Tracer(leaves).trace(module)
    finally:
        for m, mode in modes:
            m.training = mode
    for n in [n for n in graph.nodes if n.op == "call_function" and n.target in ASSERTS]:
        graph.erase_node(n)
    gm = fx.GraphModule(module, graph)
    gm.graph.eliminate_dead_code()  # the size reads that fed the assertions
    return gm


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def _sub(root: nn.Module, nodes: list[fx.Node], start: fx.Node, end: fx.Node) -> fx.GraphModule:
    """A GraphModule computing ``end`` from one input standing for ``start``, copying ``nodes`` in order."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: g.placeholder("x")}
    for n in nodes:
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(env[end])
    return fx.GraphModule(root, g)


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is a plain ReLU (module, function or method)."""
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))) is nn.ReLU
    if node.op == "call_function":
        return node.target in RELUS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def why_not_residual(module: nn.Module) -> str | ResidualSplit:
    """The split of ``module`` if it is a residual block with an identity shortcut, else the reason it is not."""
    try:
        gm = trace(module)
    except Exception as e:  # noqa: BLE001 - fx fails on data-dependent control flow in many ways
        return f"it cannot be traced ({type(e).__name__})"
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return f"its forward takes {len(inputs)} inputs, not one"
    x = inputs[0]
    out = next(n for n in nodes if n.op == "output")
    for add in (n for n in nodes if n.op == "call_function" and n.target in ADDS):
        if len(add.args) != 2 or add.kwargs or x not in add.args:
            continue
        other = add.args[1] if add.args[0] is x else add.args[0]
        if not isinstance(other, fx.Node) or other is x or x not in _ancestors(other):
            continue
        branch_nodes = [n for n in nodes if n in _ancestors(other) and n is not x]
        tail_nodes: list[fx.Node] = []
        cur = add
        ok = True
        while True:
            users = list(cur.users)
            if len(users) != 1:
                ok = False
                break
            nxt = users[0]
            if nxt is out:
                break
            if nxt.all_input_nodes != [cur] or nxt.op == "placeholder":
                ok = False
                break
            tail_nodes.append(nxt)
            cur = nxt
        rest = set(nodes) - set(branch_nodes) - set(tail_nodes) - {x, add, out}
        if not ok or any(n.op != "get_attr" for n in rest) or (out.args[0] is not cur):
            continue
        if any(u not in branch_nodes and u is not add for u in x.users):
            continue  # x feeds something besides the branch and the addition
        branch = _sub(module, branch_nodes, x, other)
        tail = _sub(module, tail_nodes, add, cur) if tail_nodes else None
        for m in tail.modules() if tail is not None else ():
            if getattr(m, "inplace", False):  # a skipped block runs tail(x): it must not overwrite x
                m.inplace = False
        relu = len(tail_nodes) == 1 and is_relu(gm, tail_nodes[0])
        return ResidualSplit(branch, tail, relu)
    return "it does not add its input to a branch computed from it (no identity shortcut)"


def find_blocks(model: nn.Module) -> list[str]:
    """Module paths of the residual blocks with an identity shortcut, outermost first, in module order."""
    found: list[str] = []
    for name, m in model.named_modules():
        if not name or type(m).__module__.startswith("torch.nn") or any(name.startswith(f + ".") for f in found):
            continue
        if isinstance(why_not_residual(m), ResidualSplit):
            found.append(name)
    return found


def select_blocks(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """The user's ``--blocks``: module paths or globs (``layer*.1``), each naming residual blocks with an identity
    shortcut; a clear error for a name that matches nothing or a module that is not such a block."""
    mods = dict(model.named_modules())
    chosen: list[str] = []
    for pat in patterns:
        names = [n for n in mods if n and fnmatchcase(n, pat)]
        if not names:
            raise EdgeskipError(f"--blocks {pat!r} names no module of this model")
        for n in names:
            r = why_not_residual(mods[n])
            if not isinstance(r, ResidualSplit):
                if pat == n:
                    raise EdgeskipError(f"--blocks {n!r} is not a residual block with an identity shortcut: {r}")
                continue  # a glob also matches the blocks' own submodules; those are simply not blocks
            if n not in chosen:
                chosen.append(n)
        if not any(fnmatchcase(c, pat) for c in chosen):
            raise EdgeskipError(f"--blocks {pat!r} matches no residual block with an identity shortcut")
    order = list(mods)
    return sorted(chosen, key=order.index)
