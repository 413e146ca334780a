"""Data tiling per function in one IREE module (issue #30): IREE's flag is module-wide, a hint is not.

    python bench/iree_data_tiling_per_function.py BUNDLE [--reps 5] [--blocks 3]
        [--out bench/results/iree_data_tiling_per_function.json]

A bundle's module holds channels-last static functions (one per front config) and the NCHW gated function (one
``If`` per gate). On x86 with AVX-512 the static functions run faster without data tiling, the gated function 2.2x
slower (bench/README section 14.2), and ``--iree-dispatch-creation-data-tiling`` applies to the whole module. IREE's
annotation pass (``AnnotateDataTilingHints``) skips a function in which any operation already carries the hint
``iree.opt.data_tiling``; a hint on the function itself is enough, and since no linalg op carries it, nothing in
that function is encoded. ``compile`` sets it on the static functions (``Target.static_data_tiling``).

Three builds of the same merged module (the bundle's full-depth and all-skipped static graphs and its gated graph,
one weight archive), timed by ``iree-benchmark-module`` (local-sync, batch 1) round-robin in ``--blocks`` blocks,
onnxruntime (1 thread) on the same graphs in the same blocks:
- ``tiled``: data tiling module-wide (bundles before section 14.4);
- ``per-function``: data tiling off in the static functions only, by the hint (what ``compile`` ships on x86);
- ``untiled``: ``--iree-dispatch-creation-data-tiling=false`` module-wide.
The gated function runs with every other block skipped. Logits of every build against onnxruntime's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import blocks_with_onnxruntime, front_ends_and_gated  # noqa: E402

from edgeskip.backends.iree import SharedIreeExecutor  # noqa: E402
from edgeskip.export.iree_compile import TARGETS, compile_mlir  # noqa: E402
from edgeskip.utils.atomic import write_json  # noqa: E402

HOST = TARGETS["host"]
BUILDS = {
    "tiled": dataclasses.replace(HOST, static_data_tiling=True),
    "per-function": dataclasses.replace(HOST, static_data_tiling=False),
    "untiled": HOST.without_data_tiling(),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--out", default="bench/results/iree_data_tiling_per_function.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = front_ends_and_gated(Path(args.bundle), Path(tmp))
        configs, x, skip, arch = r.configs, r.x, r.skip, r.arch
        vmfbs, info = {}, {}
        for name, target in BUILDS.items():
            t0 = time.perf_counter()
            vmfbs[name] = compile_mlir(r.mlir, target, Path(tmp) / f"{name}.vmfb", channels_last=tuple(configs[:2]))
            ex = SharedIreeExecutor(arch, [vmfbs[name]], functions=configs)
            outs = [ex.run(0, x), ex.run(1, x), ex.run(2, x, skip)]
            info[name] = {
                "flags": target.flags(),
                "static_data_tiling": target.static_data_tiling,
                "compile_s": time.perf_counter() - t0,
                "vmfb_bytes": vmfbs[name].stat().st_size,
                "max_abs_diff_vs_onnxruntime": max(float(np.abs(o - r.refs[c]).max()) for o, c in zip(outs, configs)),
            }
            print(f"{name}: {json.dumps(info[name])}")
        meds = blocks_with_onnxruntime(vmfbs, arch, configs, r.files, r.sessions, r.feeds, args.blocks, args.reps)
    rows = []
    for c in configs:
        med = meds[c]
        for name in vmfbs:
            rows.append(
                {
                    "config": c,
                    "build": name,
                    "benchmark_s": med[name],
                    "over_tiled": med[name] / med["tiled"],
                    "over_onnxruntime": med[name] / med["onnxruntime"],
                    "onnxruntime_s": med["onnxruntime"],
                }
            )
            print(f"{c:16s} {name:13s} {med[name] * 1e3:7.3f} ms  x{rows[-1]['over_tiled']:.3f} of tiled"
                  f"  x{rows[-1]['over_onnxruntime']:.3f} of onnxruntime ({med['onnxruntime'] * 1e3:.3f} ms)")  # fmt: skip
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    write_json(
        Path(args.out),
        {
            "bundle": args.bundle,
            "cpu": cpu,
            "builds": info,
            "rows": rows,
            "command": "python bench/iree_data_tiling_per_function.py " + " ".join(sys.argv[1:]),
        },
    )
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
