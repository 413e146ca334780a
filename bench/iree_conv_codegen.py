"""Minimal reproducers: IREE llvm-cpu convolution speed on an AVX2 CPU, written as an upstream report.

Plain MLIR (linalg on tensors), batch 1, float32, compiled with ``iree-compile`` for the host CPU and timed
with ``iree-benchmark-module`` (local-sync); onnxruntime 1 thread and numpy (OpenBLAS) on the same shapes for
reference. Cases:

1. 3x3 convolution, stride 1, pad 1, 16->16 channels on 32x32 (ResNet-20's first stage, 2.36 MMAC), NCHW/FCHW
   (what ONNX imports as) vs NHWC/HWCF, under the flags variants below; the same work as one matmul
   (1024x144 by 144x16) for the floor of IREE's own matmul code.
2. 1x1 convolution, stride 2, 16->32 channels (ResNet-20's projection shortcut), NCHW vs NHWC.
3. ``iree-preprocessing-convert-conv-to-channels-last`` on a 3x3 convolution whose NCHW input comes from outside
   (a function argument, or the region boundary of an ``scf.if``, as an ONNX ``If`` gate imports): the
   NCHW->NHWC transpose of the input is fused into the convolution's dispatch as its producer, and that
   dispatch is not vectorised. Inside a network the transposes cancel between convolutions; at ``If``
   boundaries they cannot, so every gated block would pay it.

    python bench/iree_conv_codegen.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeskip.utils.atomic import write_json

BASE = [
    "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu",
    "--iree-llvmcpu-target-cpu=host",
]
DT = [
    "--iree-dispatch-creation-data-tiling",
    "--iree-dispatch-creation-experimental-set-data-tiling-ops=matmul",
    "--iree-dispatch-creation-experimental-set-data-tiling-ops=convolution",
]
UK = ["--iree-llvmcpu-enable-ukernels=all"]
CL = ["--iree-preprocessing-pass-pipeline=builtin.module(util.func(iree-preprocessing-convert-conv-to-channels-last))"]
VARIANTS = {
    "default": [],
    "data tiling + ukernels (bundle flags)": DT + UK,
    "im2col": ["--iree-global-opt-use-im2col-for-convs"],
    "im2col + data tiling + ukernels": ["--iree-global-opt-use-im2col-for-convs", *DT, *UK],
    "winograd": [
        "--iree-preprocessing-pass-pipeline=builtin.module(util.func("
        "iree-linalg-ext-convert-conv2d-to-winograd{replace-all-convs}))"
    ],
    "vector width 64 B": ["--iree-llvmcpu-target-vector-width-in-bytes=64"],
}


def conv(layout: str, c: int, f: int, h: int, k: int, stride: int) -> tuple[str, list[tuple[int, ...]]]:
    """``func @main(x, w)``: a k x k convolution on an input already padded for 'same' output."""
    pad = h + k - 1 if stride == 1 else h
    o = h // stride
    if layout == "nchw":
        xs, ws, ys, op = (1, c, pad, pad), (f, c, k, k), (1, f, o, o), "conv_2d_nchw_fchw"
    else:
        xs, ws, ys, op = (1, pad, pad, c), (k, k, c, f), (1, o, o, f), "conv_2d_nhwc_hwcf"
    t = lambda s: "tensor<" + "x".join(map(str, s)) + "xf32>"  # noqa: E731
    text = f"""
func.func @main(%x: {t(xs)}, %w: {t(ws)}) -> {t(ys)} {{
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : {t(ys)}
  %f = linalg.fill ins(%z : f32) outs(%e : {t(ys)}) -> {t(ys)}
  %r = linalg.{op} {{dilations = dense<1> : tensor<2xi64>, strides = dense<{stride}> : tensor<2xi64>}}
      ins(%x, %w : {t(xs)}, {t(ws)}) outs(%f : {t(ys)}) -> {t(ys)}
  return %r : {t(ys)}
}}"""
    return text, [xs, ws]


def conv_param(c: int, h: int, gate: bool) -> tuple[str, list[tuple[int, ...]]]:
    """``func @main(x[, run])``: an NCHW 3x3 convolution whose filter is a parameter global (as in the bundles),
    at the function's top level or (``gate``) inside ``scf.if``, as an ONNX ``If`` gate imports."""
    y, x, w = f"tensor<1x{c}x{h}x{h}xf32>", f"tensor<1x{c}x{h + 2}x{h + 2}xf32>", f"tensor<{c}x{c}x3x3xf32>"
    body = f"""    %z = arith.constant 0.0 : f32
    %e = tensor.empty() : {y}
    %f = linalg.fill ins(%z : f32) outs(%e : {y}) -> {y}
    %c = linalg.conv_2d_nchw_fchw {{dilations = dense<1> : tensor<2xi64>, strides = dense<1> : tensor<2xi64>}}
        ins(%x, %w : {x}, {w}) outs(%f : {y}) -> {y}"""
    head = f'util.global private @w = #flow.parameter.named<"model"::"w"> : {w}\n'
    if not gate:
        return (
            head
            + f"func.func @main(%x: {x}) -> {y} {{\n  %w = util.global.load @w : {w}\n{body}\n  return %c : {y}\n}}",
            [(1, c, h + 2, h + 2)],
        )
    return (
        head
        + f"""func.func @main(%x: {x}, %run: tensor<i1>) -> {y} {{
  %w = util.global.load @w : {w}
  %b = tensor.extract %run[] : tensor<i1>
  %r = scf.if %b -> {y} {{
{body}
    scf.yield %c : {y}
  }} else {{
    %s = tensor.extract_slice %x[0, 0, 1, 1] [1, {c}, {h}, {h}] [1, 1, 1, 1] : {x} to {y}
    scf.yield %s : {y}
  }}
  return %r : {y}
}}""",
        [(1, c, h + 2, h + 2), ()],
    )


def iree_time(
    text: str, shapes, flags: list[str], work: Path, name: str, reps: int, params: Path | None = None
) -> float | str:
    """Median seconds per call, or the compiler's first error line."""
    src, vmfb = work / f"{name}.mlir", work / f"{name}.vmfb"
    src.write_text(text)
    exe = Path(sys.executable).parent
    proc = subprocess.run(
        [str(exe / "iree-compile"), str(src), *BASE, *flags, "-o", str(vmfb)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return next((l for l in proc.stderr.splitlines() if "error" in l), "compile failed")[:200]
    inputs = []
    for i, s in enumerate(shapes):
        p = work / f"{name}.in{i}.npy"
        np.save(p, np.ones(s, bool) if s == () else np.full(s, 0.5, np.float32))
        inputs.append(f"--input=@{p}")
    out = subprocess.run(
        [
            str(exe / "iree-benchmark-module"),
            "--device=local-sync",
            f"--module={vmfb}",
            "--function=main",
            *inputs,
            *([f"--parameters=model={params}"] if params else []),
            f"--benchmark_repetitions={reps}",
            "--benchmark_min_time=50x",
            "--benchmark_format=json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out[out.index("{") :])["benchmarks"]
    med = next(r for r in rows if r.get("aggregate_name") == "median")
    return med["real_time"] * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[med["time_unit"]]


def ort_conv(c: int, f: int, h: int, k: int, stride: int, rounds: int) -> float:
    import onnx
    import onnx.helper as oh
    import onnxruntime as ort

    pad = [k // 2] * 4 if stride == 1 else [0] * 4
    w = onnx.numpy_helper.from_array(np.full((f, c, k, k), 0.1, np.float32), "w")
    g = oh.make_graph(
        [oh.make_node("Conv", ["x", "w"], ["y"], pads=pad, strides=[stride, stride])],
        "conv",
        [oh.make_tensor_value_info("x", 1, [1, c, h, h])],
        [oh.make_tensor_value_info("y", 1, None)],
        [w],
    )
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    x = np.full((1, c, h, h), 0.5, np.float32)
    return _median(lambda: s.run(None, {"x": x}), rounds)


def _median(fn, rounds: int) -> float:
    for _ in range(20):
        fn()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    a = ap.parse_args()
    res: dict = {"cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mac = 16 * 16 * 9 * 32 * 32
        case = {"case": "3x3 conv 16->16, 32x32, stride 1", "macs": mac, "iree": {}}
        for layout in ("nchw", "nhwc"):
            text, shapes = conv(layout, 16, 16, 32, 3, 1)
            for v, flags in VARIANTS.items():
                case["iree"][f"{layout}, {v}"] = iree_time(
                    text, shapes, flags, work, f"c{layout}{len(case['iree'])}", a.reps
                )
        mm = """
func.func @main(%a: tensor<1024x144xf32>, %b: tensor<144x16xf32>) -> tensor<1024x16xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<1024x16xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<1024x16xf32>) -> tensor<1024x16xf32>
  %r = linalg.matmul ins(%a, %b : tensor<1024x144xf32>, tensor<144x16xf32>) outs(%f : tensor<1024x16xf32>)
      -> tensor<1024x16xf32>
  return %r : tensor<1024x16xf32>
}"""
        case["iree"]["same work as a matmul 1024x144x16"] = iree_time(
            mm, [(1024, 144), (144, 16)], [], work, "mm", a.reps
        )
        case["onnxruntime"] = ort_conv(16, 16, 32, 3, 1, a.rounds)
        am, bm = np.full((1024, 144), 0.5, np.float32), np.full((144, 16), 0.1, np.float32)
        case["numpy_matmul"] = _median(lambda: am @ bm, a.rounds)
        res["cases"].append(case)

        case = {
            "case": "1x1 conv 16->32, stride 2, 32x32 -> 16x16 (projection shortcut)",
            "macs": 16 * 32 * 16 * 16,
            "iree": {},
        }
        for layout in ("nchw", "nhwc"):
            text, shapes = conv(layout, 16, 32, 32, 1, 2)
            for v in ("default", "data tiling + ukernels (bundle flags)"):
                case["iree"][f"{layout}, {v}"] = iree_time(text, shapes, VARIANTS[v], work, f"s{layout}{v[:4]}", a.reps)
        case["onnxruntime"] = ort_conv(16, 32, 32, 1, 2, a.rounds)
        res["cases"].append(case)

        import iree.runtime as rt

        params = work / "w.irpa"
        idx = rt.ParameterIndex()
        idx.add_buffer("w", np.random.default_rng(0).standard_normal((64, 64, 3, 3)).astype(np.float32).tobytes())
        idx.create_archive_file(str(params))
        case = {"case": "3x3 conv 64->64 on 8x8, NCHW input, filter a parameter global", "macs": 64 * 64 * 9 * 64}
        top, shapes = conv_param(64, 8, gate=False)
        gated, gshapes = conv_param(64, 8, gate=True)
        case["iree"] = {
            "top level, default": iree_time(top, shapes, [], work, "p0", a.reps, params),
            "top level, channels-last pass": iree_time(top, shapes, CL, work, "p1", a.reps, params),
            "inside scf.if, default": iree_time(gated, gshapes, [], work, "p2", a.reps, params),
            "inside scf.if, channels-last pass": iree_time(gated, gshapes, CL, work, "p3", a.reps, params),
        }
        case["onnxruntime"] = ort_conv(64, 64, 8, 3, 1, a.rounds)
        res["cases"].append(case)
    import onnxruntime

    res["machine"] = {"cpu": platform.processor() or platform.machine(), "onnxruntime": onnxruntime.__version__}
    res["command"] = "python " + " ".join(shlex.quote(s) for s in sys.argv)
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "iree_conv_codegen.json", res)
    for c in res["cases"]:
        print(f"{c['case']} ({c['macs'] / 1e6:.2f} MMAC):")
        for k, v in c["iree"].items():
            print(
                f"  IREE {k}: "
                + (f"{v * 1e6:.0f} us ({c['macs'] / v / 1e9:.1f} GMAC/s)" if isinstance(v, float) else v)
            )
        print(f"  onnxruntime: {c['onnxruntime'] * 1e6:.0f} us ({c['macs'] / c['onnxruntime'] / 1e9:.1f} GMAC/s)")
        if "numpy_matmul" in c:
            print(f"  numpy matmul: {c['numpy_matmul'] * 1e6:.0f} us")


if __name__ == "__main__":
    main()
