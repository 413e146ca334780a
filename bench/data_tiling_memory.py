"""Memory vs speed of the shared weight archive: separate modules with and without IREE data tiling,
and all configs as functions of one merged module (what bundles ship).

Builds the same configs of ResNet-110 (untrained; N least-L2 blocks skipped) as static modules over one
weight archive, once with edgeskip's default flags (data tiling + micro-kernels) and once without data
tiling, and merges the default-flag configs into one module. Measures batch-1 latency (round-robin
medians, merged functions interleaved with the separate modules) and the resident-memory growth of
fresh processes loading and running one config vs all of them.

    python bench/data_tiling_memory.py --out bench/results
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zero_overhead import rss_delta_kib  # noqa: E402

from edgeskip.backends.iree import SharedIreeExecutor  # noqa: E402
from edgeskip.export import iree_compile  # noqa: E402
from edgeskip.export.shared_weights import build_shared_modules, merge_modules, module_name  # noqa: E402
from edgeskip.models import ResNetConfig, build_model, skip_from_indices  # noqa: E402
from edgeskip.pareto.latency import interleaved_median  # noqa: E402
from edgeskip.pareto.ranking import rank_blocks  # noqa: E402
from edgeskip.utils.atomic import write_json  # noqa: E402

DATA_TILING = {
    "--iree-dispatch-creation-data-tiling",
    "--iree-dispatch-creation-experimental-set-data-tiling-ops=matmul",
    "--iree-dispatch-creation-experimental-set-data-tiling-ops=convolution",
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=110)
    ap.add_argument("--counts", default="0,10,20,30,40,51")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(ResNetConfig(depth=args.depth)).eval()
    g = model.cfg.num_gates
    order = rank_blocks("weight_l2", model)
    counts = [int(c) for c in args.counts.split(",") if int(c) <= g]
    skips = [skip_from_indices(order[:n], g) for n in counts]
    shape = (1, 3, 32, 32)
    x = np.zeros(shape, np.float32)
    default_flags = iree_compile.COMMON_FLAGS
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in (
            ("data tiling (default)", default_flags),
            ("no data tiling", tuple(f for f in default_flags if f not in DATA_TILING)),
        ):
            iree_compile.COMMON_FLAGS = flags
            try:
                w = Path(tmp) / name.replace(" ", "_")
                sm = build_shared_modules(model, skips, iree_compile.TARGETS["host"], w / "out", w / "work")
            finally:
                iree_compile.COMMON_FLAGS = default_flags
            ex = SharedIreeExecutor(sm.weights, sm.modules)
            lat = interleaved_median([lambda k=k, ex=ex: ex.run(k, x) for k in range(len(ex))], args.repeats, 3)
            results[name] = {
                "flags": list(flags),
                "latency_s": dict(zip(map(str, counts), lat)),
                "rss_delta_kib_one_config": rss_delta_kib("shared", sm.weights, [sm.modules[0]], shape),
                "rss_delta_kib_all_configs": rss_delta_kib("shared", sm.weights, list(sm.modules), shape),
                "weights_bytes": sm.weights.stat().st_size,
            }
            r = results[name]
            print(
                f"{name}: no-skip {1e3 * lat[0]:.3f} ms, all-skip {1e3 * lat[-1]:.3f} ms; RSS growth one config "
                f"{r['rss_delta_kib_one_config']} KiB, all {len(skips)} configs {r['rss_delta_kib_all_configs']} KiB "
                f"(weights {r['weights_bytes'] // 1024} KiB)"
            )
            if name == "data tiling (default)":
                names = [module_name(s) for s in skips]
                merged = merge_modules(dict(zip(names, sm.mlir)), w / "merged.mlir")
                vmfb = iree_compile.compile_mlir(merged, iree_compile.TARGETS["host"], w / "merged.vmfb")
                mex = SharedIreeExecutor(sm.weights, [vmfb], functions=names)
                n = len(names)
                both = interleaved_median(
                    [lambda k=k, mex=mex: mex.run(k, x) for k in range(n)]
                    + [lambda k=k, ex=ex: ex.run(k, x) for k in range(n)],
                    args.repeats,
                    3,
                )
                results["merged module (data tiling)"] = {
                    "flags": list(flags),
                    "latency_s": dict(zip(map(str, counts), both[:n])),
                    "latency_s_separate_same_run": dict(zip(map(str, counts), both[n:])),
                    "merged_over_separate": dict(zip(map(str, counts), [a / b for a, b in zip(both[:n], both[n:])])),
                    "rss_delta_kib_one_config": rss_delta_kib("merged", sm.weights, [vmfb, names[0]], shape),
                    "rss_delta_kib_all_configs": rss_delta_kib("merged", sm.weights, [vmfb, *names], shape),
                    "weights_bytes": sm.weights.stat().st_size,
                }
                r = results["merged module (data tiling)"]
                print(
                    f"merged module: latency / separate modules {min(r['merged_over_separate'].values()):.3f}-"
                    f"{max(r['merged_over_separate'].values()):.3f}; RSS growth one config "
                    f"{r['rss_delta_kib_one_config']} KiB, all {n} configs {r['rss_delta_kib_all_configs']} KiB"
                )
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "depth": args.depth,
        "skipped_counts": counts,
        "results": results,
    }
    write_json(args.out / "data_tiling_memory.json", doc)


if __name__ == "__main__":
    main()
