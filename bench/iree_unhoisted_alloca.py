"""Reproducer (issue #35): IREE llvm-cpu cannot build LayerNorm -> Transpose -> full-map Conv with a dynamic batch.

torchvision ``convnext_tiny`` at 32x32 inputs ends its stage 3 on a 2x2 map. Its last downsampling layer is
LayerNorm over channels (NHWC), a transpose back to NCHW and a 2x2 stride-2 convolution: the kernel covers the
whole map. ``iree-compile`` (3.13, the bundle's flags: data tiling on, ukernels) refuses the fused dispatch:

    error: 'memref.alloca' op all stack allocations need to be hoisted to the entry block of the function

Three ONNX nodes reproduce it (random convolution weights, the LayerNorm's scale 1 and shift 0 as torchvision
initialises them; opset 20, float32). The script compiles the graph and variants of it
for the host (and aarch64), each with the bundle's flags unless named, and for the variants that compile, compares
IREE's output with onnxruntime's on random inputs (batch 3):

- the batch dynamic or static (1);
- without the LayerNorm, without the transpose;
- a larger map (4x4, the kernel no longer covers it), small channel counts;
- the convolution rewritten as Reshape + MatMul (a full-map convolution is a dense layer);
- data tiling off (``--iree-dispatch-creation-data-tiling=false``): the workaround ``edgeskip compile`` ships.

    python bench/iree_unhoisted_alloca.py --out bench/results
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeskip.utils.atomic import write_json


def graph(
    batch: object, h: int, c: int, co: int, k: int, ln: bool = True, transpose: bool = True, matmul: bool = False
):
    """LayerNormalization (last axis) -> Transpose (NHWC -> NCHW) -> Conv k x k, stride k (or the same as MatMul)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((co, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, h, h, c] if transpose else [batch, c, h, h])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, co, h // k, h // k])
    inits = [
        numpy_helper.from_array(np.ones(c, np.float32), "gamma"),  # torchvision's initial LayerNorm
        numpy_helper.from_array(np.zeros(c, np.float32), "beta"),
        numpy_helper.from_array(bias, "bias"),
    ]
    nodes, src = [], "x"
    if ln:
        nodes.append(helper.make_node("LayerNormalization", [src, "gamma", "beta"], ["xn"], axis=-1, epsilon=1e-6))
        src = "xn"
    if transpose:
        nodes.append(helper.make_node("Transpose", [src], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    if matmul:
        inits += [
            numpy_helper.from_array(w.reshape(co, -1).T.copy(), "w"),
            numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
            numpy_helper.from_array(np.array([0, co, 1, 1], np.int64), "nchw"),
        ]
        nodes += [
            helper.make_node("Reshape", [src, "flat"], ["xf"]),
            helper.make_node("MatMul", ["xf", "w"], ["ym"]),
            helper.make_node("Add", ["ym", "bias"], ["yb"]),
            helper.make_node("Reshape", ["yb", "nchw"], ["y"]),
        ]
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node("Conv", [src, "w", "bias"], ["y"], kernel_shape=[k, k], strides=[k, k]))
    g = helper.make_graph(nodes, "repro", [x], [y], inits)
    return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()

    import onnx

    from edgeskip.backends.iree import IreeModule
    from edgeskip.backends.ort import ort_session
    from edgeskip.errors import EdgeskipError
    from edgeskip.export.iree_compile import NO_DATA_TILING, TARGETS, _compile_layouts, import_onnx

    cases = [  # (name, graph arguments, target, extra flags)
        ("as exported: 2x2 map, 384 -> 768, dynamic batch", ("N", 2, 384, 768, 2), "host", []),
        ("static batch 1", (1, 2, 384, 768, 2), "host", []),
        ("without the LayerNorm", ("N", 2, 384, 768, 2, False), "host", []),
        ("without LayerNorm and transpose (NCHW input)", ("N", 2, 384, 768, 2, False, False), "host", []),
        ("4x4 map (kernel 2 no longer covers it), 192 -> 384", ("N", 4, 192, 384, 2), "host", []),
        ("small: 2x2 map, 16 -> 32", ("N", 2, 16, 32, 2), "host", []),
        ("the convolution as Reshape + MatMul", ("N", 2, 384, 768, 2, True, True, True), "host", []),
        ("aarch64", ("N", 2, 384, 768, 2), "aarch64", []),
        ("data tiling off (shipped)", ("N", 2, 384, 768, 2), "host", [NO_DATA_TILING]),
        ("data tiling off, aarch64", ("N", 2, 384, 768, 2), "aarch64", [NO_DATA_TILING]),
    ]
    x = np.random.default_rng(1).standard_normal((3, 2, 2, 384)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for k, (name, gargs, target, extra) in enumerate(cases):
            path = work / f"case{k}.onnx"
            onnx.save(graph(*gargs), str(path))  # type: ignore[arg-type]
            mlir = import_onnx(path, work / f"case{k}.mlir")
            t = TARGETS[target]
            if extra:
                t = t.without_data_tiling()
            t0 = time.perf_counter()
            row: dict = {"case": name, "target": target, "graph": list(map(str, gargs)), "flags": extra}
            try:
                vmfb = _compile_layouts(mlir, t, work / f"case{k}.vmfb", [], ()).path
                row.update(compiled=True, compile_s=round(time.perf_counter() - t0, 1))
            except EdgeskipError as e:
                row.update(compiled=False, error=str(e).split("error: ")[-1][:160])
            if row["compiled"] and target == "host" and gargs[1:] == (2, 384, 768, 2) and gargs[0] == "N":
                ref = ort_session(path).run(None, {"x": x})[0]
                out = np.asarray(IreeModule(vmfb, function="repro")(x))
                row["iree_vs_onnxruntime"] = float(np.abs(out - ref).max() / max(1.0, float(np.abs(ref).max())))
            print(row, flush=True)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "rows": rows}
    write_json(args.out / "iree_unhoisted_alloca.json", doc)


if __name__ == "__main__":
    main()
