"""Reproducer: IREE llvm-cpu runs a QDQ int8 convolution 2-5x slower than the float one on an x86 VNNI CPU.

Written as an upstream report (issue #30 part 3). One ResNet-20 residual block (16 -> 16 channels, 3x3, 32x32,
batch 1) exported to ONNX twice from the same weights: float, and as QDQ int8 (uint8 activations per tensor, int8
weights per tensor, int32 biases: onnxruntime's format, which its CPU provider fuses into QLinearConv/QLinearAdd).
Both go through ``iree-import-onnx`` and ``iree-compile`` for this host under several flag sets, and are timed
side by side in one process (interleaved medians) with onnxruntime on the same graphs.

What IREE makes of the QDQ graph (``--compile-to=flow``): each Dequantize -> Conv -> Quantize becomes one
dispatch computing an i8 x i8 -> i32 convolution as a ``linalg.generic`` (dispatch names
``..._conv_16x32x32x16x3x3_i8xi8xi32``), not a named convolution, so the bundle's data tiling and micro-kernels
never apply to it; ``--iree-global-opt-use-im2col-for-convs`` turns it into a matmul-like contraction and cuts the
time by more than half, which still leaves it slower than the float block. The int8 results are exact (equal to
onnxruntime's integer kernels). So an IREE target gains nothing from int8 today: edgeskip compiles float
functions for IREE targets and runs int8 configs on onnxruntime only (``manifest.int8.iree``).

    python bench/iree_int8_conv.py [--rounds 300] [--out bench/results/iree_int8_conv.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgeskip.backends.iree import IreeModule
from edgeskip.backends.ort import ort_session
from edgeskip.export.iree_compile import TARGETS, compile_mlir, compiler_binary, import_onnx
from edgeskip.export.onnx_export import export_graph
from edgeskip.models.quant import BlockQuant, Int8Block, TensorQuant
from edgeskip.models.resnet import BasicBlock
from edgeskip.pareto.latency import interleaved_median
from edgeskip.utils.atomic import write_json

VARIANTS = {
    "bundle flags": [],
    "data tiling off": ["--iree-dispatch-creation-data-tiling=false"],
    "im2col": ["--iree-global-opt-use-im2col-for-convs"],
    "im2col, data tiling off": ["--iree-global-opt-use-im2col-for-convs", "--iree-dispatch-creation-data-tiling=false"],
}


class _Graph(torch.nn.Module):
    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.block(image)


def blocks() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """A randomly initialised block (BatchNorm with running statistics), its int8 variant calibrated min/max on
    64 random non-negative inputs (what a ReLU hands it), and one input."""
    torch.manual_seed(0)
    block = BasicBlock(16, 16, 1, "pad", 1.0, "none")
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    block.eval()
    x = torch.relu(torch.randn(64, 16, 32, 32))
    with torch.no_grad():
        h = torch.relu(block.bn1(block.conv1(x)))
        c = block.bn2(block.conv2(h))
        y = block(x)
    q = BlockQuant(*(TensorQuant.from_range(float(t.min()), float(t.max())) for t in (x, h, c, y)))
    return block, Int8Block(block, q).eval(), x[:1].contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--out", default="bench/results/iree_int8_conv.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fp32, int8, x = blocks()
    xn = x.numpy()
    rows: dict[str, dict] = {}
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind, module in (("float", fp32), ("int8", int8)):
            onnx_path = export_graph(_Graph(module), (x,), ["image"], work / f"{kind}.onnx", ["out"], False)
            sess = ort_session(onnx_path, 1)
            ref = sess.run(None, {"image": xn})[0]
            fns[f"onnxruntime {kind}"] = lambda s=sess: s.run(None, {"image": xn})
            mlir = import_onnx(onnx_path, work / f"{kind}.mlir")
            if kind == "int8":  # what the dispatches compute
                flow = work / "int8_flow.mlir"
                subprocess.run(
                    [compiler_binary(), str(mlir), *TARGETS["host"].flags(), "--compile-to=flow", "-o", str(flow)],
                    check=True,
                    capture_output=True,
                )
                rows["int8 dispatches"] = sorted(set(re.findall(r"dispatch_\d+_(\w+?)(?:\s|\()", flow.read_text())))
            for name, flags in VARIANTS.items():
                key = f"iree {kind}, {name}"
                try:
                    mod = IreeModule(compile_mlir(mlir, TARGETS["host"], work / f"{kind}_{len(fns)}.vmfb", extra=flags))
                except Exception as e:  # noqa: BLE001 - a flag set IREE rejects is a result
                    rows[key] = {"error": str(e).splitlines()[0][:200]}
                    continue
                rows[key] = {"max_abs_diff_vs_onnxruntime": float(np.abs(np.asarray(mod(xn)) - ref).max())}
                fns[key] = lambda m=mod: m(xn)
        times = interleaved_median(list(fns.values()), args.rounds, 20)
    for key, t in zip(fns, times):
        rows.setdefault(key, {})["us"] = round(t * 1e6, 1)
    for name in VARIANTS:
        r8, rf = rows.get(f"iree int8, {name}", {}), rows.get(f"iree float, {name}", {})
        if "us" in r8 and "us" in rf:
            r8["int8_over_float_same_flags"] = round(r8["us"] / rf["us"], 2)
    best_float = min(rows[k]["us"] for k in rows if k.startswith("iree float") and "us" in rows[k])
    for k in rows:
        if k.startswith("iree int8") and "us" in rows[k]:
            rows[k]["int8_over_fastest_float"] = round(rows[k]["us"] / best_float, 2)
    doc = {
        "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"),
        "vnni": "avx512_vnni" in open("/proc/cpuinfo").read(),
        "machine": platform.machine(),
        "case": "ResNet-20 block 16->16 ch, 3x3, 32x32, batch 1; int8: QDQ, uint8 activations, int8 weights",
        "rows": rows,
        "command": "python bench/iree_int8_conv.py " + shlex.join(sys.argv[1:]),
    }
    print(json.dumps(doc, indent=1))
    write_json(Path(args.out), doc)


if __name__ == "__main__":
    main()
