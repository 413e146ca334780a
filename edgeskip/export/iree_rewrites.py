"""ONNX rewrites applied to graphs on their way into IREE only (onnxruntime runs the graphs as exported).

IREE 3.13 generates slow code for depthwise convolutions: on an AVX-512 host a 3x3 depthwise convolution over
96 channels of 8x8 takes 28 us, and onnxruntime's MLAS kernel about 3 us (bench/iree_depthwise.py, bench/README
section 14.5). Written as nine shifted, per-channel multiply-adds, the same stride-1 convolution is one fused
elementwise dispatch that IREE vectorises: 9 us. The products' sum differs from the convolution's only in rounding
order (~1e-7). Stride 2 gains nothing, so only stride-1 convolutions are rewritten. onnxruntime runs the rewritten
form 4-7x slower than its own kernel, which is why the rewrite happens on the way into IREE and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

INT_MAX = np.iinfo(np.int64).max


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _depthwise_3x3(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    """A stride-1, dilation-1, pad-1 3x3 convolution with one input channel per group (depthwise), weight
    an initializer [C, 1, 3, 3] with C groups."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    shape = list(weights[node.input[1]].dims)
    a = _attrs(node)
    return (
        len(shape) == 4
        and shape[1:] == [1, 3, 3]
        and a.get("group", 1) == shape[0] > 1
        and list(a.get("strides", [1, 1])) == [1, 1]
        and list(a.get("dilations", [1, 1])) == [1, 1]
        and list(a.get("pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
        and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )


def depthwise_as_shifts(model: onnx.ModelProto) -> int:
    """Rewrite every stride-1 3x3 depthwise convolution of ``model`` in place as Pad, then the sum of nine
    products of a shifted input and one tap of the weight per channel (sliced from the same initializer, so the
    weights keep their names and bytes), plus the bias; returns how many were rewritten."""
    g = model.graph
    weights = {t.name: t for t in g.initializer}
    nodes, done = [], 0
    for node in g.node:
        if not _depthwise_3x3(node, weights):
            nodes.append(node)
            continue
        k = f"{node.output[0]}__dw"
        consts = {
            f"{k}_pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
            f"{k}_axes": np.array([2, 3], np.int64),
            f"{k}_shape": np.array([1, -1, 1, 1], np.int64),
        }
        for i in range(3):
            for j in range(3):  # the input rows i..i+H-1 of the padded map (H+2 rows): ends -2, -1, then the end
                consts[f"{k}_xs{i}{j}"] = np.array([i, j], np.int64)
                consts[f"{k}_xe{i}{j}"] = np.array([i - 2 if i < 2 else INT_MAX, j - 2 if j < 2 else INT_MAX], np.int64)
                consts[f"{k}_ws{i}{j}"] = np.array([i, j], np.int64)
                consts[f"{k}_we{i}{j}"] = np.array([i + 1, j + 1], np.int64)
        g.initializer.extend(numpy_helper.from_array(v, n) for n, v in consts.items())
        x, w = node.input[0], node.input[1]
        nodes.append(helper.make_node("Pad", [x, f"{k}_pads"], [f"{k}_xp"], mode="constant"))
        terms = []
        for i in range(3):
            for j in range(3):
                t = f"{k}_{i}{j}"
                nodes += [
                    helper.make_node("Slice", [f"{k}_xp", f"{k}_xs{i}{j}", f"{k}_xe{i}{j}", f"{k}_axes"], [t + "_x"]),
                    helper.make_node("Slice", [w, f"{k}_ws{i}{j}", f"{k}_we{i}{j}", f"{k}_axes"], [t + "_w4"]),
                    helper.make_node("Reshape", [t + "_w4", f"{k}_shape"], [t + "_w"]),
                    helper.make_node("Mul", [t + "_x", t + "_w"], [t]),
                ]
                terms.append(t)
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Reshape", [node.input[2], f"{k}_shape"], [f"{k}_b"]))
            nodes.append(helper.make_node("Sum", [*terms, f"{k}_b"], [node.output[0]]))
        else:
            nodes.append(helper.make_node("Sum", terms, [node.output[0]]))
        done += 1
    if done:
        del g.node[:]
        g.node.extend(nodes)
    return done


def for_iree(onnx_path: str | os.PathLike, work: Path) -> Path:
    """``onnx_path`` as IREE should import it: the graph itself where no rewrite applies (most graphs: only
    its nodes are read to tell), else a rewritten copy in ``work`` with its weights inline. A file that is not
    an ONNX graph is passed on as it is, for the importer's own error."""
    try:
        head = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a readable graph: iree-import-onnx says why, in its one line
        return Path(onnx_path)
    if not any(n.op_type == "Conv" and _attrs(n).get("group", 1) > 1 for n in head.graph.node):
        return Path(onnx_path)
    model = onnx.load(str(onnx_path))
    if not depthwise_as_shifts(model):
        return Path(onnx_path)
    dest = work / (Path(onnx_path).stem + ".iree.onnx")
    onnx.save(model, str(dest))
    return dest
