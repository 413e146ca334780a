"""IREE compiler flags on the whole ResNet-20, measured: the bundle's flags against single changes to them.

    python bench/iree_flags_sweep.py BUNDLE [--reps 5] [--blocks 3] [--out bench/results/iree_flags_sweep.json]

The bundle's full-depth and all-skipped static graphs (its IREE front's first and last configs), imported over
one weight archive and compiled as `compile` does (channels-last static functions, host CPU) with the bundle's
flags plus one variant flag each; then timed by ``iree-benchmark-module`` (the compiled code alone, local-sync,
batch 1), variants round-robin in ``--blocks`` blocks, with onnxruntime (one thread) on the same graphs in the same
blocks as the reference. Ratios are the result: each variant over the bundle's flags, and over onnxruntime.
Numerics: every variant's logits against onnxruntime's.
"""

from __future__ import annotations

import argparse
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

VARIANTS: dict[str, list[str]] = {
    "bundle": [],
    "opt-level O3": ["--iree-opt-level=O3"],
    "aggressive fusion": ["--iree-dispatch-creation-enable-aggressive-fusion"],
    "no data tiling": ["--iree-dispatch-creation-data-tiling=false"],
    "no ukernels": ["--iree-llvmcpu-enable-ukernels=none"],
    "mmt4d intrinsics": ["--iree-codegen-mmt4d-use-intrinsics"],
    "propagate transposes": ["--iree-opt-aggressively-propagate-transposes"],
    "horizontal fusion": ["--iree-dispatch-creation-enable-fuse-horizontal-contractions"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    ap.add_argument("--out", default="bench/results/iree_flags_sweep.json")
    args = ap.parse_args()
    bundle = Path(args.bundle)
    names = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        r = front_ends_and_gated(bundle, work)
        configs, x, skip, arch, mlir, refs = r.configs, r.x, r.skip, r.arch, r.mlir, r.refs
        vmfbs, compile_s, diffs = {}, {}, {}
        for v in names:
            t0 = time.perf_counter()
            try:
                vmfbs[v] = compile_mlir(
                    mlir, TARGETS["host"], work / f"{len(vmfbs)}.vmfb", VARIANTS[v], tuple(configs[:2])
                )
            except Exception as e:  # noqa: BLE001 - a variant that does not compile is a result too
                print(f"{v}: does not compile ({str(e)[-160:]})")
                continue
            compile_s[v] = time.perf_counter() - t0
            ex = SharedIreeExecutor(arch, [vmfbs[v]], functions=configs)
            outs = [ex.run(0, x), ex.run(1, x), ex.run(2, x, skip)]
            diffs[v] = max(float(np.abs(o - refs[c]).max()) for o, c in zip(outs, configs))
            print(f"{v}: compiled in {compile_s[v]:.1f} s, max |IREE - onnxruntime| {diffs[v]:.1e}")
        meds = blocks_with_onnxruntime(vmfbs, arch, configs, r.files, r.sessions, r.feeds, args.blocks, args.reps)
    rows = []
    for c in configs:
        med = meds[c]
        for v in vmfbs:
            rows.append(
                {
                    "config": c,
                    "variant": v,
                    "flags": VARIANTS[v],
                    "benchmark_s": med[v],
                    "over_bundle_flags": med[v] / med["bundle"] if "bundle" in med else None,
                    "over_onnxruntime": med[v] / med["onnxruntime"],
                    "max_abs_diff_vs_onnxruntime": diffs[v],
                    "compile_s": compile_s[v],
                }
            )
            print(f"{c:16s} {v:22s} {med[v] * 1e3:7.3f} ms  x{rows[-1]['over_bundle_flags'] or 0:.3f} of the bundle's"
                  f"  x{rows[-1]['over_onnxruntime']:.3f} of onnxruntime ({med['onnxruntime'] * 1e3:.3f} ms)")  # fmt: skip
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    doc = {
        "bundle": str(bundle),
        "cpu": cpu,
        "rows": rows,
        "command": "python bench/iree_flags_sweep.py " + " ".join(sys.argv[1:]),
    }
    write_json(Path(args.out), doc)
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
