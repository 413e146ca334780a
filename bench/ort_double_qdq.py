"""Reproducer: onnxruntime's DoubleQDQPairsRemover changes the result of Q1 -> DQ1 -> Q2 -> DQ2 with different scales.

Where an int8 block's output reaches the next int8 block's input past a skipped block, the graph requantises:
``DQ2(Q2(DQ1(Q1(x; s1, z1)); s2, z2))``. ONNX defines that as two roundings. onnxruntime's basic-level rewrite
DoubleQDQPairsRemover drops the middle DQ1 -> Q2 pair and gives the outer pair recomputed parameters, which is one
rounding at another scale: different numbers wherever the two roundings disagree, so PyTorch's simulation of the
graph (which chose the configs on validation accuracy) and onnxruntime no longer agree. The rewrite can be turned
off per session (``disabled_optimizers=["DoubleQDQPairsRemover"]``), which edgeskip's sessions do
(``edgeskip.backends.ort.DISABLED_OPTIMIZERS``).

    python bench/ort_double_qdq.py [--out bench/results/ort_double_qdq.json]

The graph is the smallest form (uint8, per tensor, scales of two calibrations of neighbouring ResNet tensors); the
reference is numpy's two roundings (round half to even, as ONNX specifies). Also reports each session's time for a
ResNet-20-sized tensor (16x32x32), the rewrite's only purpose being to save one requantisation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

S1, Z1 = 0.0937, 0  # an int8 block's output (after a ReLU: zero point 0)
S2, Z2 = 0.1114, 0  # the next int8 block's input, calibrated on another tensor of the full network


def graph(shape: tuple[int, ...]) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(np.array(S1, np.float32), "s1"),
        numpy_helper.from_array(np.array(Z1, np.uint8), "z1"),
        numpy_helper.from_array(np.array(S2, np.float32), "s2"),
        numpy_helper.from_array(np.array(Z2, np.uint8), "z2"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["q1"]),
        helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]),
        helper.make_node("QuantizeLinear", ["d1", "s2", "z2"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "double_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def reference(x: np.ndarray) -> np.ndarray:
    q1 = np.clip(np.rint(x / np.float32(S1)) + Z1, 0, 255)
    d1 = ((q1 - Z1) * np.float32(S1)).astype(np.float32)
    q2 = np.clip(np.rint(d1 / np.float32(S2)) + Z2, 0, 255)
    return ((q2 - Z2) * np.float32(S2)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/ort_double_qdq.json")
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args()
    shape = (1, 16, 32, 32)
    model = graph(shape)
    x = np.random.default_rng(0).uniform(0, 20, shape).astype(np.float32)
    ref = reference(x)
    rows = {}
    for name, disabled in (("default", []), ("without DoubleQDQPairsRemover", ["DoubleQDQPairsRemover"])):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        s = ort.InferenceSession(
            model.SerializeToString(), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
        )
        y = s.run(None, {"x": x})[0]
        diff = np.abs(y - ref)
        for _ in range(50):
            s.run(None, {"x": x})
        t = time.perf_counter()
        for _ in range(args.repeats):
            s.run(None, {"x": x})
        rows[name] = {
            "values_differing_from_two_roundings": int((diff > 1e-6).sum()),
            "of": int(diff.size),
            "max_abs_diff": float(diff.max()),
            "max_diff_in_steps_of_s2": float(diff.max() / S2),
            "us_per_call": round((time.perf_counter() - t) / args.repeats * 1e6, 2),
        }
    doc = {
        "onnxruntime": ort.__version__,
        "graph": f"Q(s1={S1}) -> DQ -> Q(s2={S2}) -> DQ, uint8 per tensor, input uniform [0, 20), shape {list(shape)}",
        "sessions": rows,
        "command": "python bench/ort_double_qdq.py",
    }
    print(json.dumps(doc, indent=1))
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
