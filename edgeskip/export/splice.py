"""Switches assembled in ONNX: every gated graph is traced once, flat, and its ``If``s are spliced in (issue #36).

A gated graph switches each gated block between options with ``torch.cond`` (one ONNX ``If`` per remaining
option). torch's dynamo exporter re-traces every branch at every level of nesting, and spends about a second on
each ``torch.cond`` whatever it holds (``bench/export_cond_cost.py``). So a view is traced with each gate's step
replaced by :func:`mark`: every option of the gate computed on the gate's input as an extra output, and a cheap
placeholder (``Where(cond, h, Neg(h))``) where the switch goes. :func:`splice` then replaces each placeholder by
the switch, its branches copies of the nodes that compute the marked outputs, and drops those outputs. The result
is the graph nested ``torch.cond`` traces to: the same ``If`` nesting, ops and weight names (the view's:
``blocks.4.conv1.weight``), for about the cost of one flat trace.

A view taking part (:class:`~edgeskip.export.graphs.GatedGraph`, ``OptionsGraph``, the SkipNet and DFS graphs)
has ``marks`` (None, or a list while it is traced for splicing) that its gate steps and its forward honour
(:func:`mark`, :func:`with_marks`), and a ``switch(b)`` method: gated block ``b``'s options in nesting order
(:class:`Switch`); :func:`~edgeskip.export.onnx_export.export_spliced` exports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from edgeskip.errors import EdgeskipError
from edgeskip.models.blocknet import Walk


@dataclass
class Switch:
    """One gate's options, outermost first: ``modules[0]`` runs where the placeholder's traced condition holds,
    ``modules[i]`` (0 < i < last) where the selector equals ``values[i]``, the last one otherwise. None is the
    identity (a skipped block that reduces to nothing). ``values[0]`` is not read; with more than two options the
    placeholder's condition must be ``selector == values[0]`` (the selector is found there)."""

    modules: list[nn.Module | None]
    values: list[int]


class Spliceable(Protocol):
    marks: list[torch.Tensor] | None

    def switch(self, b: int) -> Switch: ...


def mark(view: Spliceable, b: int, cond: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A gate's step while its view is exported spliced (``view.marks`` a list): each option of gated block ``b``
    computed on ``h`` joins ``view.marks`` (extra outputs, the source of the switch's branches) and the placeholder
    ``Where(cond, h, Neg(h))`` stands where the switch will be (not a ``torch.cond``: the exporter spends ~1 s on
    each one, whatever its branches hold). Every option has the shape of ``h``: the blocks have identity
    shortcuts."""
    assert view.marks is not None
    view.marks.extend(m(h) for m in view.switch(b).modules if m is not None)
    return torch.where(cond, h, h.neg())


def with_marks(view: Spliceable, out: Any) -> Any:
    """A view's outputs, followed by the marked options while it is exported spliced."""
    if view.marks is None:
        return out
    marks, view.marks = view.marks, []
    return (*(out if isinstance(out, tuple) else (out,)), *marks)


def gate_order(view: Walk) -> list[int]:
    """The gated blocks in the order the walk meets them: the order of their placeholders in the graph."""
    return [b for b in view.walk_order if b in view.walk_gated]


def _branch(
    g, producer: dict, infos: dict, k: int, o: int, source: str | None, h: str, out: str, value_type: Callable
) -> Any:
    """The ``If`` branch computing option ``o`` of gate ``k`` on ``h`` into ``out``: a copy of the nodes of ``g``
    that compute ``source`` from ``h`` (None: the identity), names prefixed so that no branch redefines another's,
    with their traced types (``infos``, ``g``'s value_info by name). ``producer``: ``g``'s node of each tensor.
    Weights and other tensors of ``g`` are read from the outer scope."""
    from onnx import helper

    if source is None or source == h:  # the identity (or an option that traced to it)
        return helper.make_graph([helper.make_node("Identity", [h], [out])], f"gate{k}_o{o}", [], [value_type(out)])
    need, stack = set(), [source]
    while stack:  # the nodes ``source`` depends on, back to ``h``, the weights and the graph's inputs
        n = producer.get(stack.pop())
        if n is not None and id(n) not in need:
            need.add(id(n))
            stack.extend(i for i in n.input if i and i != h)
    prefix = f"switch/g{k}o{o}/"
    local = {t for n in g.node if id(n) in need for t in n.output}

    def name(t: str) -> str:
        if t == source:
            return out
        return prefix + t if t in local else t

    nodes = []
    for n in g.node:
        if id(n) in need:
            c = type(n)()
            c.CopyFrom(n)
            c.name = prefix + n.name
            c.input[:] = [name(i) for i in n.input]
            c.output[:] = [name(i) for i in n.output]
            nodes.append(c)
    typed = []  # the traced types of the branch's own tensors (an importer reads an untyped one as a scalar)
    for t in sorted(local - {source}):
        if t in infos:
            c = type(infos[t])()
            c.CopyFrom(infos[t])
            c.name = name(t)
            typed.append(c)
    return helper.make_graph(nodes, f"gate{k}_o{o}", [], [value_type(out)], value_info=typed)


def _prune(g) -> None:
    """Remove the nodes of ``g`` whose outputs nothing reads (no node, no branch, no graph output), repeatedly."""
    from edgeskip.export.onnx_export import subgraphs

    while True:
        read = {o.name for o in g.output}
        for sub in subgraphs(g):
            read.update(i for n in sub.node for i in n.input)
        kept = [n for n in g.node if any(o in read for o in n.output)]
        if len(kept) == len(g.node):
            return
        del g.node[:]
        g.node.extend(kept)


def splice(model, switches: Sequence[Switch], outputs: int) -> None:
    """Replace each placeholder of ``model`` (in node order, one per gate: :func:`mark`) by its gate's switch, an
    ``If``: option 0 under the placeholder's condition, else a nested ``If`` on ``selector == values[1]``, and so
    on. Each branch is a copy of the nodes that compute its option's marked output (the graph's outputs after the
    first ``outputs``, in gate and option order) from the gate's input; those outputs are then dropped, with every
    node only they read."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    marks = [
        n
        for n in g.node
        if n.op_type == "Where"
        and n.input[2] in producer
        and producer[n.input[2]].op_type == "Neg"
        and list(producer[n.input[2]].input) == [n.input[1]]
    ]
    sources = [o.name for o in g.output[outputs:]]
    if len(marks) != len(switches) or len(sources) != sum(m is not None for s in switches for m in s.modules):
        raise EdgeskipError(
            f"gated export: {len(marks)} placeholders and {len(sources)} marked options traced for {len(switches)} gates"
        )
    types = {o.name: o.type for o in g.output}
    infos = {vi.name: vi for vi in g.value_info}
    shapes = {
        name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]
        for name, vi in infos.items()
    }
    values = sorted({v for s in switches for v in s.values[1:-1]})
    for v in values:
        g.initializer.append(numpy_helper.from_array(np.array(v, dtype=np.int64), f"switch/value{v}"))
    constants = {t.name for t in g.initializer}

    def constant(name: str) -> bool:
        return name in constants or (name in producer and producer[name].op_type == "Constant")

    marked = iter(sources)
    replaced = {}
    for k, (node, sw) in enumerate(zip(marks, switches)):
        h = node.input[1]
        source = {o: (None if m is None else next(marked)) for o, m in enumerate(sw.modules)}
        selector = None
        if len(sw.modules) > 2:
            eq = producer.get(node.input[0])
            if eq is not None and eq.op_type == "Equal":
                selector = next((i for i in eq.input if not constant(i)), None)
            if selector is None:
                raise EdgeskipError(f"gated export: switch {k}'s condition is not an Equal on its selector")
        like = next(s for s in source.values() if s is not None)  # a switch holds its block at least
        cond_shape = shapes.get(node.input[0], [])  # a nested condition is shaped as the traced one

        def value_type(name: str, like: str = like) -> Any:
            vi = helper.make_empty_tensor_value_info(name)
            vi.type.CopyFrom(types[like])
            return vi

        def branch(o: int, into: str, k: int = k, h: str = h, source: dict = source, vt: Any = value_type) -> Any:
            return _branch(g, producer, infos, k, o, source[o], h, into, vt)

        def rest(
            i: int,
            into: str,
            k: int = k,
            sw: Switch = sw,
            sel: Any = selector,
            vt: Any = value_type,
            cs: Any = cond_shape,
        ) -> Any:
            """The else-branch below option ``i - 1``: option ``i`` alone if it is the last, else a nested ``If``."""
            if i == len(sw.modules) - 1:
                return branch(i, into)
            cond = f"switch/g{k}/is{i}"
            nodes = [
                helper.make_node("Equal", [sel, f"switch/value{sw.values[i]}"], [cond], name=cond),
                helper.make_node(
                    "If",
                    [cond],
                    [into],
                    name=f"switch/g{k}/if{i}",
                    then_branch=branch(i, into + f"/{i}"),
                    else_branch=rest(i + 1, into + f"/not{i}"),
                ),
            ]
            typed = [helper.make_tensor_value_info(cond, TensorProto.BOOL, cs)]
            return helper.make_graph(nodes, f"gate{k}_not{i - 1}", [], [vt(into)], value_info=typed)

        out = node.output[0]
        replaced[id(node)] = helper.make_node(
            "If",
            [node.input[0]],
            [out],
            name=f"switch/g{k}",
            then_branch=branch(0, out + "/0"),
            else_branch=rest(1, out + "/not0"),
        )
    nodes = [replaced.get(id(n), n) for n in g.node]
    del g.node[:]
    g.node.extend(nodes)
    del g.output[outputs:]
    _prune(g)
