"""IREE on MobileNetV2's depthwise convolutions, one at a time, against onnxruntime (issue #30 part 3).

    python bench/iree_depthwise.py [--reps 5] [--blocks 3] [--out bench/results/iree_depthwise.json]

torchvision MobileNetV2 (width 0.5, 32x32 input, batch 1, the network of bench/README section 14) runs 1.7x slower
on IREE than on onnxruntime. This walks the network once and collects every convolution with its input shape. Each
distinct layer (depthwise 3x3, expanding 1x1, projecting 1x1, the stem) becomes a graph of its own: Conv + bias,
static batch 1, random weights. Each is compiled for the host in the builds `compile` chooses between:
- channels-last with data tiling;
- channels-last without (the per-function hint);
- NCHW with data tiling;
- and, as `compile` imports graphs now, with stride-1 3x3 depthwise convolutions written as nine shifted
  multiply-adds (``edgeskip.export.iree_rewrites``), untiled.
Each is timed by ``iree-benchmark-module``, with onnxruntime (1 thread) on the same graph in the same blocks. Per
layer kind, the sums over the network (each layer times how often it occurs) say where IREE loses its time.
Outputs are checked against onnxruntime (max |diff|).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import benchmark_module  # noqa: E402

from edgeskip.backends.iree import SharedIreeExecutor  # noqa: E402
from edgeskip.backends.ort import ort_session  # noqa: E402
from edgeskip.export.iree_compile import TARGETS, compile_mlir, import_onnx  # noqa: E402
from edgeskip.pareto.latency import interleaved_median  # noqa: E402
from edgeskip.utils.atomic import write_json  # noqa: E402

HOST = TARGETS["host"]
BUILDS = {  # name: (target, channels-last functions, the depthwise rewrite of edgeskip.export.iree_rewrites)
    "channels-last, tiled": (dataclasses.replace(HOST, static_data_tiling=True), ("main_graph",), False),
    "channels-last, untiled": (dataclasses.replace(HOST, static_data_tiling=False), ("main_graph",), False),
    "NCHW, tiled": (dataclasses.replace(HOST, static_data_tiling=True), (), False),
    "shifts, untiled": (dataclasses.replace(HOST, static_data_tiling=False), ("main_graph",), True),
}


def layers() -> Counter:
    """(kind, in_channels, out_channels, kernel, stride, groups, H, W) of every convolution of MobileNetV2 0.5
    at 32x32, with how often each occurs."""
    import torch

    from edgeskip.models.zoo import import_torchvision

    net = import_torchvision().models.mobilenet_v2(width_mult=0.5, num_classes=10).eval()
    seen: Counter = Counter()

    def hook(mod, inp, _out):
        _, c, h, w = inp[0].shape
        kind = "depthwise" if mod.groups == c and c > 1 else ("1x1" if mod.kernel_size == (1, 1) else "full")
        seen[(kind, c, mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.groups, h, w)] += 1

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    return seen


def one_conv(spec: tuple, path: Path) -> np.ndarray:
    import torch

    from edgeskip.export.onnx_export import export_graph

    _, c, o, k, s, g, h, w = spec
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c, o, k, stride=s, padding=k // 2, groups=g).eval()
    x = torch.randn(1, c, h, w)
    export_graph(conv, (x,), ["image"], path, dynamic_batch=False)
    return x.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--out", default="bench/results/iree_depthwise.json")
    args = ap.parse_args()
    specs = layers()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n, (spec, count) in enumerate(sorted(specs.items())):
            onnx_path = work / f"c{n}.onnx"
            x = one_conv(spec, onnx_path)
            np.save(work / f"x{n}.npy", x)
            weights = work / f"c{n}.irpa"
            mlirs = {rw: import_onnx(onnx_path, work / f"c{n}_{rw}.mlir", params=weights, rewrite=rw)
                     for rw in (False, True)}  # fmt: skip
            sess = ort_session(onnx_path, threads=1)
            ref = sess.run(None, {"image": x})[0]
            vmfbs = {b: compile_mlir(mlirs[rw], t, work / f"c{n}_{i}.vmfb", channels_last=cl)
                     for i, (b, (t, cl, rw)) in enumerate(BUILDS.items())}  # fmt: skip
            diff = max(float(np.abs(SharedIreeExecutor(weights, [v]).run(0, x) - ref).max()) for v in vmfbs.values())
            times: dict[str, list[float]] = {b: [] for b in [*vmfbs, "onnxruntime"]}
            for _ in range(args.blocks):
                times["onnxruntime"].append(
                    interleaved_median([lambda s=sess, x=x: s.run(None, {"image": x})], 300, warmup=20)[0]
                )
                for b, v in vmfbs.items():
                    times[b].append(benchmark_module(v, weights, "main_graph", [work / f"x{n}.npy"], args.reps))
            med = {b: float(np.median(t)) for b, t in times.items()}
            kind, c, o, k, s, g, h, w = spec
            rows.append({"kind": kind, "in": c, "out": o, "kernel": k, "stride": s, "hw": h, "count": count,
                         "seconds": med, "max_abs_diff": diff})  # fmt: skip
            best = min(med[b] for b in vmfbs)
            print(f"{kind:9s} {c:3d}->{o:3d} k{k} s{s} {h:2d}x{w:<2d} x{count}: "
                  + "  ".join(f"{b} {t * 1e6:6.1f} us" for b, t in med.items())
                  + f"  best IREE / onnxruntime {best / med['onnxruntime']:.2f}  (|diff| {diff:.1e})", flush=True)  # fmt: skip
    totals: dict[str, dict[str, float]] = {}
    for r in rows:
        t = totals.setdefault(r["kind"], {b: 0.0 for b in r["seconds"]})
        for b, v in r["seconds"].items():
            t[b] += v * r["count"]
    for kind, t in totals.items():
        best = min(v for b, v in t.items() if b != "onnxruntime")
        print(f"{kind:9s} over the network: " + "  ".join(f"{b} {v * 1e6:.0f} us" for b, v in t.items())
              + f"  best IREE / onnxruntime {best / t['onnxruntime']:.2f}")  # fmt: skip
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    write_json(Path(args.out), {"cpu": cpu, "rows": rows, "totals": totals,
                                "command": "python bench/iree_depthwise.py " + " ".join(sys.argv[1:])})  # fmt: skip
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
