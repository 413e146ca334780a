"""Zero-overhead switching: the runtime's config executable vs a separately built static network.

For each config (skip array) of a model, measured side by side in one process, batch 1, round-robin
(median of ``--repeats``):
- runtime:  the config's static module in the shared-weights VmContext (what the runtime runs; its graph cut
            from the gated graph, as `compile` makes it),
- separate: a static network with exactly those blocks removed, traced from the model, built and loaded on
            its own (weights inline, own context) -- the physical limit,
- gated:    the gated module (one If per gate) at that skip array,
- ort:      onnxruntime on the config's static graph (1 thread).
Also: linear fit of latency vs skipped blocks (R^2), all-skip speed-up over the ungated original, and
resident memory with every config loaded vs one (fresh subprocesses).

    python bench/zero_overhead.py --checkpoint bench/results/r20_sd.pt --depth 110 --out bench/results
    python bench/zero_overhead.py --model torchvision:resnet18 --model 'torchvision:mobilenet_v2{"width_mult": 0.5}'
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgeskip.backends.iree import IreeModule, SharedIreeExecutor  # noqa: E402
from edgeskip.export.iree_compile import TARGETS, compile_mlir, import_onnx  # noqa: E402
from edgeskip.export.latency import ort_static_latency  # noqa: E402
from edgeskip.export.onnx_export import export_gated, export_static  # noqa: E402
from edgeskip.export.shared_weights import build_shared_modules, import_shared, module_name  # noqa: E402
from edgeskip.manifest import model_label  # noqa: E402
from edgeskip.models import NetConfig, ResNetConfig, build_model, skip_from_indices  # noqa: E402
from edgeskip.pareto.latency import interleaved_median  # noqa: E402
from edgeskip.pareto.ranking import rank_blocks  # noqa: E402
from edgeskip.pareto.search import GREEDY  # noqa: E402
from edgeskip.train import load_checkpoint  # noqa: E402
from edgeskip.utils.atomic import write_json, write_with  # noqa: E402

RSS_PROBE = """
import sys, numpy as np
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
import iree.runtime  # imports first, so the delta below is what loading and running the modules costs
from edgeskip.backends.iree import IreeModule, SharedIreeExecutor
mode, weights, *mods = sys.argv[1:]
x = np.zeros({shape}, np.float32)
before = rss()
if mode == "merged":  # mods = [one merged module, function names...]
    ex = SharedIreeExecutor(weights, mods[:1], functions=mods[1:])
    for k in range(len(ex)):
        ex.run(k, x)
elif mode == "shared":
    ex = SharedIreeExecutor(weights, mods)
    for k in range(len(ex)):
        ex.run(k, x)
else:
    ms = [IreeModule(m) for m in mods]
    for m in ms:
        m(x)
print(rss() - before)
"""


def rss_delta_kib(mode: str, weights: Path | None, modules: list[Path], shape: tuple) -> int:
    """Resident-memory growth (KiB) of a fresh process from loading and running ``modules`` once each."""
    code = RSS_PROBE.format(shape=shape)
    out = subprocess.run(
        [sys.executable, "-c", code, mode, str(weights), *map(str, modules)], capture_output=True, text=True, check=True
    ).stdout
    return int(out.strip().splitlines()[-1])


def configs_for(model, checkpoint_ck, counts: list[int] | None) -> tuple[list[tuple[bool, ...]], str]:
    """Skip arrays: the Pareto configs of a trained checkpoint, or N-skipped configs by weight-L2 order."""
    g = model.cfg.num_gates
    if checkpoint_ck is not None and counts is None:
        from edgeskip.pareto.design import design_space

        splits = checkpoint_ck.data.load()
        splits.norm = checkpoint_ck.norm
        _, front = design_space(model, splits, checkpoint_ck.dataset_id, rankings=("sensitivity",), search=GREEDY)
        return [
            tuple(bool(v) for v in c["skip"]) for c in front["configs"]
        ], "pareto front (validation accuracy vs MACs)"
    order = rank_blocks("weight_l2", model)
    counts = counts or list(range(g + 1))
    return [skip_from_indices(order[:n], g) for n in counts], "N least-L2-norm blocks skipped (untrained weights)"


def bench_model(label: str, model, ck, counts, repeats: int, work: Path) -> dict:
    cfg = model.cfg
    skips, how = configs_for(model, ck, counts)
    t0 = time.time()
    # the runtime as a bundle ships it: static graphs cut from the gated graph, one shared weight archive ...
    gated_onnx = export_gated(model, work / "gated.onnx")
    shared = build_shared_modules(model, skips, TARGETS["host"], work / "shared", work / "shared_work", gated_onnx)
    gated_mlir = import_shared(gated_onnx, shared.weights, work / "shared_work", "gated")
    gated_vmfb = compile_mlir(gated_mlir, TARGETS["host"], work / "gated.vmfb")
    runtime = SharedIreeExecutor(shared.weights, [gated_vmfb, *shared.modules])
    separate, separate_paths = [], []
    for s in skips:  # ... against each config built on its own: traced from the model, its own weights
        onnx_path = export_static(model, s, work / f"sep_{module_name(s)}.onnx")
        mlir = import_onnx(onnx_path, work / f"sep_{module_name(s)}.mlir")
        separate_paths.append(compile_mlir(mlir, TARGETS["host"], work / f"sep_{module_name(s)}.vmfb"))
        separate.append(IreeModule(separate_paths[-1]))
    full_onnx = export_static(model, [1] * cfg.num_gates, work / "original.onnx")
    original = IreeModule(
        compile_mlir(import_onnx(full_onnx, work / "original.mlir"), TARGETS["host"], work / "original.vmfb")
    )
    build_s = time.time() - t0
    x = np.random.default_rng(0).standard_normal((1, cfg.in_channels, *cfg.input_size), np.float32)
    runners = [lambda: original(x)]
    for k, s in enumerate(skips):
        skip = np.array(s, dtype=bool)
        runners += [
            lambda k=k: runtime.run(k + 1, x),
            lambda k=k: separate[k](x),
            lambda skip=skip: runtime.run(0, x, skip),
        ]
    med = interleaved_median(runners, repeats, warmup=5)
    ort = ort_static_latency(model, skips, work / "shared_work", repeats=repeats)
    rows = []
    for k, s in enumerate(skips):
        rt_, sep, gat = med[1 + 3 * k : 4 + 3 * k]
        rows.append(
            {
                "n_skipped": s.count(False),
                "skip": [int(v) for v in s],
                "runtime_s": rt_,
                "separate_s": sep,
                "gated_s": gat,
                "onnxruntime_s": ort[k],
                "runtime_over_separate": rt_ / sep,
                "gated_over_separate": gat / sep,
                "iree_over_onnxruntime": sep / ort[k],
            }
        )
    n = np.array([r["n_skipped"] for r in rows], float)
    lat = np.array([r["runtime_s"] for r in rows])
    fit = {"slope_s_per_block": None, "intercept_s": None, "r2": None}
    if len(set(n)) > 1:
        slope, icpt = np.polyfit(n, lat, 1)
        pred = slope * n + icpt
        fit = {
            "slope_s_per_block": float(slope),
            "intercept_s": float(icpt),
            "r2": float(1 - ((lat - pred) ** 2).sum() / ((lat - lat.mean()) ** 2).sum()),
        }
    most = max(rows, key=lambda r: r["n_skipped"])
    shape = (1, cfg.in_channels, *cfg.input_size)
    mem = {
        "rss_delta_kib_shared_one_config": rss_delta_kib("shared", shared.weights, [shared.modules[0]], shape),
        "rss_delta_kib_shared_all_configs": rss_delta_kib("shared", shared.weights, list(shared.modules), shape),
        "rss_delta_kib_separate_all_configs": rss_delta_kib("separate", None, separate_paths, shape),
        "weights_bytes": shared.weights.stat().st_size,
        "configs": len(skips),
    }
    return {
        "label": label,
        "model": model_label(cfg.to_dict()),
        "input_size": list(cfg.input_size),
        "num_gates": cfg.num_gates,
        "configs_from": how,
        "repeats": repeats,
        "build_seconds": build_s,
        "original_s": med[0],
        "rows": rows,
        "fit": fit,
        "max_skip_speedup_over_original": med[0] / most["runtime_s"],
        "max_skip_n": most["n_skipped"],
        "runtime_over_separate_max": max(r["runtime_over_separate"] for r in rows),
        "gated_over_separate_range": [
            min(r["gated_over_separate"] for r in rows),
            max(r["gated_over_separate"] for r in rows),
        ],
        "memory": mem,
    }


def _name(r: dict) -> str:
    return r.get("model") or f"ResNet-{r['depth']}"


def plot(results: list[dict], dest: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        n = [row["n_skipped"] for row in r["rows"]]
        for key, style, lab in (
            ("separate_s", "-o", "separate static (limit)"),
            ("runtime_s", "--x", "runtime (shared weights)"),
            ("gated_s", ":s", "gated (If per gate)"),
            ("onnxruntime_s", "-.^", "onnxruntime static (1 thread)"),
        ):
            ax.plot(n, [1e3 * row[key] for row in r["rows"]], style, ms=4, label=lab)
        ax.set_title(f"{_name(r)}: batch-1 latency, IREE local-sync")
        ax.set_xlabel("skipped blocks")
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_with(dest, lambda p: fig.savefig(p, dpi=110, format="png"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="trained checkpoint (its Pareto configs are used)")
    ap.add_argument(
        "--depth", type=int, action="append", default=[], help="also an untrained CIFAR ResNet of this depth"
    )
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="SPEC[JSON]",
        help='also an untrained library model, e.g. torchvision:resnet18 or timm:resnet34{"channels": [16,32,64,128]}',
    )
    ap.add_argument("--input-size", type=int, default=32, help="image size of the --model networks (square)")
    ap.add_argument("--counts", default=None, help="skipped-block counts for untrained models, e.g. 0,10,20,30,40,51")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--name", default="zero_overhead")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            ck = load_checkpoint(args.checkpoint)
            results.append(
                bench_model(f"{ck.dataset_id} checkpoint", ck.model(), ck, None, args.repeats, Path(tmp) / "ck")
            )
        for d in args.depth:
            torch.manual_seed(0)
            model = build_model(ResNetConfig(depth=d)).eval()
            counts = [int(c) for c in args.counts.split(",")] if args.counts else None
            counts = [c for c in counts if c <= model.cfg.num_gates] if counts else None
            results.append(bench_model(f"untrained ResNet-{d}", model, None, counts, args.repeats, Path(tmp) / f"d{d}"))
        for k, spec in enumerate(args.model):
            name, _, kw = spec.partition("{")
            torch.manual_seed(0)
            cfg = NetConfig(
                name, input_size=(args.input_size, args.input_size), kwargs=json.loads("{" + kw) if kw else {}
            )
            model = build_model(cfg).eval()
            results.append(bench_model(f"untrained {spec}", model, None, None, args.repeats, Path(tmp) / f"m{k}"))
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "host": platform.processor() or platform.machine(),
        "driver": "local-sync",
        "results": results,
    }
    write_json(args.out / f"{args.name}.json", doc)
    plot(results, args.out / f"{args.name}.png")
    for r in results:
        print(
            f"{_name(r)} ({r['label']}): runtime/separate max {r['runtime_over_separate_max']:.3f}, "
            f"gated/separate {r['gated_over_separate_range'][0]:.2f}-{r['gated_over_separate_range'][1]:.2f}, "
            f"fit R^2 {r['fit']['r2']:.3f}, {r['max_skip_n']}-skip speed-up {r['max_skip_speedup_over_original']:.2f}x, "
            f"RSS growth (KiB): shared one {r['memory']['rss_delta_kib_shared_one_config']}, shared all "
            f"{r['memory']['rss_delta_kib_shared_all_configs']}, separate all {r['memory']['rss_delta_kib_separate_all_configs']} "
            f"(weights {r['memory']['weights_bytes'] // 1024} KiB)"
        )
        for row in r["rows"]:
            print(
                f"  N={row['n_skipped']:>3}  runtime {1e3 * row['runtime_s']:.3f} ms  separate {1e3 * row['separate_s']:.3f}  "
                f"ratio {row['runtime_over_separate']:.3f}  gated {row['gated_over_separate']:.2f}x  "
                f"iree/ort {row['iree_over_onnxruntime']:.2f}"
            )


if __name__ == "__main__":
    main()
