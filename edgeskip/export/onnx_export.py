"""ONNX export (torch dynamo exporter) and parity checks against PyTorch with onnxruntime.

Graphs: inputs ``image`` float32 [N, C, H, W] (dynamic batch) and, for the gated graph, ``skip``
bool [B_s]; output ``logits`` [N, classes]. Weights are stored inside the .onnx file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeskip.backends.ort import ort_session
from edgeskip.errors import EdgeskipError
from edgeskip.export.graphs import VARIANTS, GatedGraph, OptionsGraph, StaticGraph
from edgeskip.models import BlockNet, normalize_skip
from edgeskip.skip import FULL, SKIP, gates_of, has_rest, normalize_options
from edgeskip.utils.atomic import atomic_path

OPSET = 20
TOLERANCE = 1e-4
# int8 graphs (QDQ): PyTorch simulates onnxruntime's integer kernels in float, so a value on a rounding boundary
# may land one quantisation step apart, and the step carries through the later blocks. Relative to the largest
# logit. Measured: tiny digits model 2e-7 (every value agrees), CIFAR ResNet-20 0.005 (bench/README §9). Through a
# deep int8 chain (the stem, entries and head in int8 too) the steps multiply: 6 values of 524,288 one step apart
# after the first int8 block grew to ~1% of the values by the head, and 2 of 32 images to 3.9% (config 188888+8);
# the 90th-percentile image stays at 0. A wrong graph or rewrite moves most images (onnxruntime's
# DoubleQDQPairsRemover: 1-2% on the 90th-percentile image; bench/README §10.3): see :func:`rounding_tolerated`.
INT8_TOLERANCE = 0.01
INT8_SHARE = 0.1  # of the images that may carry a rounding step past INT8_TOLERANCE (rounding_tolerated)


def rounding_tolerated(diffs: Sequence[float], flips: int, decisions: int, tol: float, share: float = 0.05) -> bool:
    """Two runs of one quantised graph agree up to rounding: at most max(1, ``share``) of the images' relative logit
    differences past ``tol``, none past 10 x ``tol`` (a wrong branch or scale is off by far more than a rounding
    step carried on, and on most images), and at most 1% of the (gate) decisions differing. ``share``: 5% for DFS's
    graphs; 10% (:data:`INT8_SHARE`) for edgeskip's int8 configs, whose chains run through every layer."""
    return (
        sum(d > tol for d in diffs) <= max(1, share * len(diffs))
        and all(d <= 10 * tol for d in diffs)
        and flips <= 0.01 * decisions
    )


@contextlib.contextmanager
def out_of_place(module: torch.nn.Module) -> Iterator[None]:
    """Every submodule with an ``inplace`` flag (ReLU, ReLU6, Hardswish, SiLU, dropout, ...) runs out of place for
    the block: the same numbers, and torch.export traces it without functionalising each in-place op (with a dynamic
    batch that took 2.2-2.7 s of a small MobileNet's 6 s export: bench/README section 12.11). Restored after."""
    flagged = [m for m in module.modules() if isinstance(getattr(m, "inplace", None), bool) and m.inplace]
    for m in flagged:
        m.inplace = False
    try:
        yield
    finally:
        for m in flagged:
            m.inplace = True


def export_graph(
    module: torch.nn.Module,
    args: tuple,
    names: list[str],
    dest: str | os.PathLike,
    outputs: list[str] | None = None,
    dynamic_batch: bool = True,
    edit: Callable[[Any], None] | None = None,
) -> Path:
    """Export ``module`` quietly to a single self-contained .onnx file, atomically.

    ``names`` are the input names; ``image`` gets a dynamic batch dimension unless ``dynamic_batch`` is off.
    ``edit(model_proto)`` may change the graph before it is checked and written.
    """
    import onnx

    dest = Path(dest)
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("N", min=1, max=4096)
        shapes = {n: ({0: batch} if n == "image" else None) for n in names}
    with atomic_path(dest, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes"):
            logging.getLogger(name).setLevel(logging.ERROR)  # a failing trace's warnings: the error says it
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), out_of_place(module):
            try:
                program = torch.onnx.export(
                    module,
                    args,
                    dynamo=True,
                    input_names=names,
                    output_names=outputs or ["logits"],
                    dynamic_shapes=shapes,
                    opset_version=OPSET,
                    optimize=True,
                )
            except Exception as e:  # noqa: BLE001 - the exporter's errors span torch's whole hierarchy
                raise EdgeskipError(f"ONNX export of {dest.name} failed: {_root_cause(e)}") from e
        model = program.model_proto
        iree_safe(model)
        if edit is not None:
            edit(model)
        onnx.checker.check_model(model)
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return dest


def _root_cause(e: BaseException) -> str:
    """The first line of the innermost exception of ``e``'s chain, or of the error it quotes (the exporter wraps
    the tracer's error, which wraps the failing op's: ``got RuntimeError("...")``)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e)
    quoted = re.search(r"got (\w+Error)\(\"(.+?)\"\)", text, re.S)
    line = (
        f"{quoted.group(1)}: {quoted.group(2)}"
        if quoted
        else next((l.strip() for l in text.splitlines() if l.strip()), type(e).__name__)
    )
    return " ".join(line.split())[:300]


def iree_safe(model) -> None:
    """The rewrites every exported graph gets where IREE 3.13 computes an op wrong or refuses it; each leaves the
    graph's result unchanged (onnxruntime and PyTorch agree before and after)."""
    crop_dead_taps(model)
    fix_average_pools(model)


def _known_shapes(model) -> dict[str, list[int | None]]:
    """Every tensor's inferred shape (``None`` for an unknown dimension), ``If`` branches included."""
    from onnx import shape_inference

    shapes: dict[str, list[int | None]] = {}
    for g in subgraphs(shape_inference.infer_shapes(model).graph):
        for vi in (*g.value_info, *g.input, *g.output):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return shapes


def _pool_out(size: int, k: int, s: int, lo: int, hi: int, ceil: bool) -> int:
    """Output length of a pool (ONNX and PyTorch): with ``ceil``, a last window must start inside the input or
    its leading padding."""
    span = size + lo + hi - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + lo:
        out -= 1
    return out


def fix_average_pools(model) -> int:
    """Rewrite ``AveragePool`` nodes with ``ceil_mode=1`` that IREE 3.13 computes wrong; returns how many changed.

    - Where ceil mode changes no output size (timm's ``avg_down`` shortcut pool on even maps), the flag is
      dropped: the same op. IREE divides by 1 instead of the window there when the batch is dynamic and
      ``count_include_pad=0`` (4x the right value for a 2x2 pool).
    - Where it adds a partial last window and ``count_include_pad=1``, IREE counts the overhang as padding.
      The end padding is made explicit (``ceil_mode=0``), and a ``Mul`` by a constant ``k*k / divisor`` restores
      ONNX's divisor, which counts the declared padding and not the overhang.

    ``bench/iree_pool_ceil.py`` is the reproducer (every case measured; the others IREE computes right)."""
    from onnx import helper, numpy_helper

    shapes = _known_shapes(model)
    changed = 0
    for g in subgraphs(model.graph):
        out_nodes = []
        for n in g.node:
            out_nodes.append(n)
            at = {a.name: a for a in n.attribute}
            x = shapes.get(n.input[0]) if n.op_type == "AveragePool" else None
            explicit = "auto_pad" not in at or at["auto_pad"].s in (b"", b"NOTSET")
            if not x or len(x) != 4 or None in x[2:] or "ceil_mode" not in at or not at["ceil_mode"].i or not explicit:
                continue
            k = list(at["kernel_shape"].ints)
            st = list(at["strides"].ints) if "strides" in at else [1, 1]
            p = list(at["pads"].ints) if "pads" in at else [0, 0, 0, 0]
            if "dilations" in at and list(at["dilations"].ints) != [1, 1]:
                continue
            size = [int(v) for v in x[2:]]  # type: ignore[arg-type]
            outs = [_pool_out(size[i], k[i], st[i], p[i], p[2 + i], True) for i in range(2)]
            if outs == [_pool_out(size[i], k[i], st[i], p[i], p[2 + i], False) for i in range(2)]:
                at["ceil_mode"].i = 0
                changed += 1
                continue
            if "count_include_pad" not in at or not at["count_include_pad"].i:
                continue  # IREE is right here
            ends = [max(p[2 + i], (outs[i] - 1) * st[i] + k[i] - size[i] - p[i]) for i in range(2)]
            divisor = np.ones(outs, np.float32)
            for i in range(2):
                starts = np.arange(outs[i]) * st[i] - p[i]
                count = np.minimum(starts + k[i], size[i] + p[2 + i]) - starts
                divisor *= count.astype(np.float32).reshape([-1, 1] if i == 0 else [1, -1])
            scale = f"{n.output[0]}__ceil_scale"
            model.graph.initializer.append(
                numpy_helper.from_array((k[0] * k[1] / divisor)[None, None].astype(np.float32), scale)
            )
            at["ceil_mode"].i = 0
            if "pads" in at:
                del at["pads"].ints[:]
                at["pads"].ints.extend([p[0], p[1], *ends])
            else:
                n.attribute.append(helper.make_attribute("pads", [p[0], p[1], *ends]))
            pooled = n.output[0]
            n.output[0] = pooled + "__sum"
            out_nodes.append(helper.make_node("Mul", [n.output[0], scale], [pooled]))
            changed += 1
        del g.node[:]
        g.node.extend(out_nodes)
    return changed


def crop_dead_taps(model) -> int:
    """Rewrite each convolution so that it reads no padding its output does not need; returns how many changed.

    Kernel taps that only ever meet padding (the outer taps of a 3x3 window over a 1x1 input) are cut from the
    weight (a cropped copy stored as ``<weight>__taps_...``, the same in every graph of a model), and, where the output is a single row or column, end
    padding no window reaches (a stride-2 3x3 convolution padded by 1 on a 2x2 input) is dropped. The results are identical; IREE 3.13 needs it: it
    rejects the second case ("inferred input/output operand #1 has shape's dimension #1 to be 4, but found 3")
    and computes the first wrong in context (NaN or garbage from a depthwise convolution behind a 1x1 one:
    MobileNetV2's last stages at small inputs). Walks ``If`` branches too; dilated convolutions are left alone.
    """
    from onnx import helper, numpy_helper

    shapes = _known_shapes(model)
    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for g in subgraphs(model.graph):
        nodes = list(g.node)
        out_nodes = []
        for n in nodes:
            at = {a.name: a for a in n.attribute}
            x = shapes.get(n.input[0]) if n.op_type == "Conv" else None
            explicit = "auto_pad" not in at or at["auto_pad"].s in (b"", b"NOTSET")
            ok = bool(x) and len(x) == 4 and None not in x[2:] and "kernel_shape" in at and explicit
            dil = list(at["dilations"].ints) if ok and "dilations" in at else [1, 1]
            if not ok or dil != [1, 1]:
                out_nodes.append(n)
                continue
            k = list(at["kernel_shape"].ints)
            p = list(at["pads"].ints) if "pads" in at else [0, 0, 0, 0]
            st = list(at["strides"].ints) if "strides" in at else [1, 1]
            lo, hi, pads, outs = [0, 0], [k[0], k[1]], [0, 0, 0, 0], [0, 0]
            for i in range(2):
                size = x[2 + i]
                out = outs[i] = (size + p[i] + p[2 + i] - k[i]) // st[i] + 1
                lo[i] = max(0, p[i] - (out - 1) * st[i])  # first tap some window puts on the input
                hi[i] = min(k[i], size + p[i])  # one past the last
                pads[i] = p[i] - lo[i]
                pads[2 + i] = max(0, (out - 1) * st[i] + hi[i] - lo[i] - size - pads[i])
            if (lo, hi) == ([0, 0], k) and (pads == p or 1 not in outs):  # only where IREE needs it
                out_nodes.append(n)
                continue
            if (lo, hi) != ([0, 0], k):
                w = inits.get(n.input[1])
                name = f"{n.input[1]}__taps_{lo[0]}_{hi[0]}_{lo[1]}_{hi[1]}"
                if w is not None:  # a stored weight: store the cropped copy beside it (every graph names it alike)
                    if name not in inits:
                        inits[name] = numpy_helper.from_array(
                            numpy_helper.to_array(w)[:, :, lo[0] : hi[0], lo[1] : hi[1]].copy(), name
                        )
                        model.graph.initializer.append(inits[name])
                else:  # a computed weight (dequantised int8): slice it in the graph
                    consts = {}
                    for key, vals in (("starts", lo), ("ends", hi), ("axes", [2, 3])):
                        consts[key] = f"{name}_{key}"
                        out_nodes.append(
                            helper.make_node(
                                "Constant",
                                [],
                                [consts[key]],
                                value=numpy_helper.from_array(np.array(vals, dtype=np.int64)),
                            )
                        )
                    out_nodes.append(
                        helper.make_node(
                            "Slice", [n.input[1], consts["starts"], consts["ends"], consts["axes"]], [name]
                        )
                    )
                n.input[1] = name
                del at["kernel_shape"].ints[:]
                at["kernel_shape"].ints.extend([hi[0] - lo[0], hi[1] - lo[1]])
            if "pads" in at:
                del at["pads"].ints[:]
                at["pads"].ints.extend(pads)
            else:
                n.attribute.append(helper.make_attribute("pads", pads))
            out_nodes.append(n)
            changed += 1
        del g.node[:]
        g.node.extend(out_nodes)
    if changed:
        drop_unread(model)  # a weight cropped everywhere it is read is stored cropped only
    return changed


def _drop_identities(g) -> None:
    """Remove the ``Identity`` nodes of a graph without control flow: their readers read the source instead."""
    outputs = {o.name for o in g.output}
    alias = {}
    kept = []
    for n in g.node:
        src = [alias.get(i, i) for i in n.input]
        del n.input[:]
        n.input.extend(src)
        if n.op_type == "Identity" and n.output[0] not in outputs:
            alias[n.output[0]] = src[0]
        else:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    infos = [vi for vi in g.value_info if vi.name not in alias]
    del g.value_info[:]
    g.value_info.extend(infos)


def subgraphs(g):
    """``g`` and every graph nested below it (``If`` branches; a graph-list attribute's graphs), depth first."""
    import onnx

    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from subgraphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from subgraphs(sub)


def drop_unread(model) -> None:
    """Remove the initializers no node reads (in any ``If`` branch either)."""
    read: set[str] = set()
    for g in subgraphs(model.graph):
        read.update(i for n in g.node for i in n.input)
        read.update(o.name for o in g.output)
    read.update(i.name for i in model.graph.input)  # an initializer that is also an input (a default) stays
    kept = [t for t in model.graph.initializer if t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def export_spliced(
    view: Any,
    args: tuple,
    names: list[str],
    dest: str | os.PathLike,
    outputs: list[str] | None = None,
    dynamic_batch: bool = True,
    edit: Callable[[Any], None] | None = None,
) -> Path:
    """Export a view with one switch per gate (:mod:`edgeskip.export.splice`) to one self-contained .onnx file,
    atomically: traced once with each gate marked (every option flat, a placeholder where the switch goes), then
    the switches spliced in. Arguments as :func:`export_graph`; ``edit`` applies to the spliced graph."""
    from edgeskip.export.splice import gate_order, splice

    outputs = outputs or ["logits"]
    switches = [view.switch(b) for b in gate_order(view)]
    marked = [f"switch/g{k}o{o}" for k, s in enumerate(switches) for o, m in enumerate(s.modules) if m is not None]

    def finish(model: Any) -> None:
        splice(model, switches, len(outputs))
        drop_unread(model)
        if edit is not None:
            edit(model)

    view.marks = []
    try:
        return export_graph(view, args, names, dest, [*outputs, *marked], dynamic_batch, edit=finish)
    finally:
        view.marks = None


def export_gated(model: BlockNet, dest: str | os.PathLike) -> Path:
    """Gated graph: one ONNX ``If`` per gate; any skip array is an input."""
    model.eval()
    cfg = model.cfg
    image = torch.zeros(2, cfg.in_channels, *cfg.input_size)
    skip = torch.ones(cfg.num_gates, dtype=torch.bool)
    return export_spliced(GatedGraph(model), (image, skip), ["image", "skip"], dest)


REST_MARK = "edgeskip.int8_rest"  # metadata of an option-array graph whose rest (stem, ungated blocks, head) is int8


def export_options(model: BlockNet, dest: str | os.PathLike, rest: bool = False) -> Path:
    """The option-array graph (:class:`~edgeskip.export.graphs.OptionsGraph`): input ``options`` int64 [B_s]; the
    int8 variants' weights named as a traced static graph names them (``blocks.<i>.w1``). Only ever specialised.
    ``rest``: the graph of the int8 rest (marked :data:`REST_MARK`), from which the arrays ending in REST8 are cut."""
    model.eval()
    cfg = model.cfg
    image = torch.zeros(2, cfg.in_channels, *cfg.input_size)
    options = torch.full((cfg.num_gates,), FULL, dtype=torch.int64)

    def edit(proto: Any) -> None:
        _variants_as_blocks(proto)
        if rest:
            proto.metadata_props.add(key=REST_MARK, value="1")

    return export_spliced(OptionsGraph(model, rest), (image, options), ["image", "options"], dest, edit=edit)


def is_rest_graph(graph: str | os.PathLike) -> bool:
    """Whether ``graph`` is an option-array graph of the int8 rest (:func:`export_options` with ``rest``)."""
    import onnx

    return any(p.key == REST_MARK for p in onnx.load(str(graph), load_external_data=False).metadata_props)


def _variants_as_blocks(model) -> None:
    """Rename ``variants.<i>.*`` initializers (and their readers, in every branch) to ``blocks.<i>.*``."""
    prefix = VARIANTS + "."
    renamed = {t.name: "blocks." + t.name[len(prefix) :] for t in model.graph.initializer if t.name.startswith(prefix)}
    for t in model.graph.initializer:
        t.name = renamed.get(t.name, t.name)
    for g in subgraphs(model.graph):
        for n in g.node:
            for i, name in enumerate(n.input):
                if name in renamed:
                    n.input[i] = renamed[name]


def export_static(
    model: BlockNet, skip: Sequence[object], dest: str | os.PathLike, gated: str | os.PathLike | None = None
) -> Path:
    """Static graph of one config: bypassed blocks removed, no control flow.

    ``gated``: the model's gated graph (:func:`export_gated`) or its option-array graph (:func:`export_options`).
    The config's graph is then cut from it (:func:`specialise`, milliseconds) instead of traced again (seconds: most
    of a compile's export time). An option array with int8 blocks is cut from the option-array graph only (one that
    ends in REST8 from the int8 rest's); from another graph it is traced."""
    model.eval()
    cfg = model.cfg
    s = normalize_options(skip, cfg.num_gates)
    if gated is not None and has_rest(s) == is_rest_graph(gated):
        if all(v in (SKIP, FULL) for v in s) or _switch_input(gated) == "options":
            return specialise(gated, gates_of(s), dest)
    image = torch.zeros(2, cfg.in_channels, *cfg.input_size)
    return export_graph(StaticGraph(model, skip), (image,), ["image"], dest)


def _switch_input(graph: str | os.PathLike) -> str | None:
    """``skip`` (a gated graph), ``options`` (an option-array graph) or None."""
    import onnx

    names = {i.name for i in onnx.load(str(graph), load_external_data=False).graph.input}
    return next((n for n in ("skip", "options") if n in names), None)


def specialise(gated: str | os.PathLike, skip: Sequence[object], dest: str | os.PathLike) -> Path:
    """The static graph of ``skip`` cut from a gated graph (or of an option array from an option-array graph),
    atomically: the array becomes a constant, every ``If`` folds to the branch it selects (onnxscript's optimizer,
    the pass the exporter itself runs), and weights no node reads any more are dropped. The same nodes and weight
    names as a traced static graph, in milliseconds."""
    import onnx
    import onnxscript
    from onnx import numpy_helper

    model = onnx.load(str(gated))
    inputs = [i for i in model.graph.input if i.name in ("skip", "options")]
    if not inputs:
        raise EdgeskipError(f"{gated} is not a gated graph: it has no 'skip' input")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if dims != [len(skip)]:
        raise EdgeskipError(
            f"{gated} gates {dims[0] if dims else '?'} blocks, the skip array has {len(skip)}: "
            "not this model's gated graph"
        )
    if inputs[0].name == "skip":
        if any(int(v) not in (SKIP, FULL) for v in skip):
            raise EdgeskipError(f"{gated} has no int8 variants: cannot cut option array {list(skip)} from it")
        value = np.array([bool(v) for v in skip], dtype=bool)
    else:
        value = np.array([int(v) for v in skip], dtype=np.int64)
    model.graph.input.remove(inputs[0])
    model.graph.initializer.append(numpy_helper.from_array(value, inputs[0].name))
    for prop in [p for p in model.metadata_props if p.key == REST_MARK]:
        model.metadata_props.remove(prop)  # a static graph, not an option-array graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnxscript.optimizer.optimize(model)
    if any(n.op_type == "If" for n in model.graph.node):
        raise EdgeskipError(f"cannot specialise {gated}: an If did not fold for skip array {list(skip)}")
    _drop_identities(model.graph)  # a skipped block's branch (a copy of its input)
    iree_safe(model)  # as export does: shapes are known everywhere now, without the Ifs
    drop_unread(model)
    onnx.checker.check_model(model)
    dest = Path(dest)
    with atomic_path(dest, suffix=".onnx") as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return dest


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def logit_diff(out: np.ndarray, ref: np.ndarray) -> float:
    """Largest difference of ``out`` from the reference logits ``ref``, relative to the largest reference logit
    (absolute below 1): float rounding grows with the logits' scale, so a ResNet-18's 30-unit logits may differ by
    2e-4 where a tiny model's differ by 1e-6."""
    return max_abs_diff(out, ref) / max(1.0, float(np.abs(np.asarray(ref)).max()))


def verify_onnx(
    model: BlockNet,
    images: torch.Tensor,
    gated: str | os.PathLike | None = None,
    skip_arrays: Sequence[object] = (),
    static: dict[tuple[bool, ...], str | os.PathLike] | None = None,
    tol: float = TOLERANCE,
) -> dict[str, float]:
    """onnxruntime vs PyTorch for each skip array (gated graph) and each static graph at its config.

    Also checks every static graph against the gated graph at its config. Returns the worst
    differences (:func:`logit_diff`); raises EdgeskipError if any exceeds ``tol``.
    """
    model.eval()
    worst = {"gated_vs_torch": 0.0, "static_vs_torch": 0.0, "static_vs_gated": 0.0}
    x = images.numpy().astype(np.float32)
    g_sess = ort_session(gated) if gated is not None else None
    gated_out: dict[tuple[bool, ...], np.ndarray] = {}
    with torch.no_grad():
        arrays = [normalize_skip(s, model.cfg.num_gates) for s in skip_arrays] + list((static or {}).keys())
        for s in dict.fromkeys(arrays):
            ref = model(images, s).numpy()
            if g_sess is not None:
                out = g_sess.run(None, {"image": x, "skip": np.array(s, dtype=bool)})[0]
                gated_out[s] = out
                worst["gated_vs_torch"] = max(worst["gated_vs_torch"], logit_diff(out, ref))
            if static and s in static:
                out = ort_session(static[s]).run(None, {"image": x})[0]
                worst["static_vs_torch"] = max(worst["static_vs_torch"], logit_diff(out, ref))
                if s in gated_out:
                    worst["static_vs_gated"] = max(worst["static_vs_gated"], logit_diff(out, gated_out[s]))
    bad = {k: v for k, v in worst.items() if v > tol}
    if bad:
        raise EdgeskipError(
            f"exported graph does not match PyTorch: {', '.join(f'{k} {v:.2e}' for k, v in bad.items())} > {tol:g}"
        )
    return worst


def verify_int8(
    model: BlockNet, images: torch.Tensor, graphs: dict[tuple[int, ...], str | os.PathLike], tol: float = INT8_TOLERANCE
) -> dict[str, float]:
    """onnxruntime's int8 kernels vs PyTorch's simulation of them, for each option array's static graph: per image,
    the largest logit difference relative to its largest logit, held to :func:`rounding_tolerated` with
    :data:`INT8_SHARE` (a one-line
    EdgeskipError naming the config). Returns the worst image (``relative``) and the most images past ``tol`` in one
    graph (``images_past_tolerance``, of ``images``)."""
    from edgeskip.skip import options_to_str

    worst = {"relative": 0.0, "images_past_tolerance": 0, "images": len(images)}
    x = images.numpy().astype(np.float32)
    with torch.no_grad():
        for options, path in graphs.items():
            ref = model(images, options).numpy()
            out = ort_session(path).run(None, {"image": x})[0]
            diffs = [logit_diff(o, r) for o, r in zip(out, ref)]
            over = sum(d > tol for d in diffs)
            if not rounding_tolerated(diffs, 0, 0, tol, INT8_SHARE):
                raise EdgeskipError(
                    f"int8 graph {options_to_str(options)} does not match PyTorch: {over} of {len(x)} images past "
                    f"the relative tolerance {tol:g} (max {max(diffs):.2e})"
                )
            worst["relative"] = max(worst["relative"], max(diffs))
            worst["images_past_tolerance"] = max(worst["images_past_tolerance"], over)
    return worst
