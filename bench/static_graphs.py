"""Static graphs cut from the gated graph vs traced one by one: export time and equality, side by side.

`compile` needs one static ONNX graph per candidate config (and one of the full network for the weight archive).
Tracing each with torch's exporter costs seconds; cutting it from the gated graph (``export_static(...,
gated=...)``: the skip array made a constant, every ``If`` folded) costs milliseconds. For each model and config
this times both in one process, alternating, and checks that the two graphs are the same network: the same
multiset of operators, the same initializer names (the shared weight archive depends on them) and onnxruntime
outputs equal on random images. Models are untrained (export time does not depend on the weights' values).

    python bench/static_graphs.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from edgeskip.backends.ort import ort_session
from edgeskip.export.onnx_export import export_gated, export_static, max_abs_diff
from edgeskip.models import ResNetConfig, build_model, skip_from_indices
from edgeskip.models.config import NetConfig
from edgeskip.utils.atomic import write_json

MODELS = {
    "edgeskip:resnet20": lambda: ResNetConfig(depth=20),
    "edgeskip:resnet56": lambda: ResNetConfig(depth=56),
    "torchvision:mobilenet_v2 (width 0.5)": lambda: NetConfig("torchvision:mobilenet_v2", kwargs={"width_mult": 0.5}),
    "timm:resnet34 (channels 16-128)": lambda: NetConfig(
        "timm:resnet34", kwargs={"channels": [16, 32, 64, 128], "stem_width": 16}
    ),
}


def graph_facts(path: Path) -> tuple[Counter, set[str]]:
    import onnx

    g = onnx.load(str(path)).graph
    return Counter(n.op_type for n in g.node), {t.name for t in g.initializer if "." in t.name}


def bench_model(label: str, cfg, configs: int, work: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = model.cfg.num_gates
    t0 = time.perf_counter()
    gated = export_gated(model, work / "gated.onnx")
    gated_s = time.perf_counter() - t0
    counts = sorted({round(i * g / (configs - 1)) for i in range(configs)}) if configs > 1 else [0]
    x = np.random.default_rng(0).standard_normal((4, model.cfg.in_channels, *model.cfg.input_size), np.float32)
    rows = []
    for n in counts:
        skip = skip_from_indices(range(g - n, g), g)  # the last n gated blocks skipped
        t0 = time.perf_counter()
        traced = export_static(model, skip, work / f"traced_{n}.onnx")
        traced_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cut = export_static(model, skip, work / f"cut_{n}.onnx", gated)
        cut_s = time.perf_counter() - t0
        (ops_t, names_t), (ops_c, names_c) = graph_facts(traced), graph_facts(cut)
        diff = max_abs_diff(ort_session(traced).run(None, {"image": x})[0], ort_session(cut).run(None, {"image": x})[0])
        rows.append(
            {
                "n_skipped": n,
                "traced_s": traced_s,
                "cut_s": cut_s,
                "speedup": traced_s / cut_s,
                "same_operators": ops_t == ops_c,
                "same_weight_names": names_t == names_c,
                "max_abs_diff": diff,
            }
        )
        print(
            f"{label:40s} {n:2d}/{g} skipped: traced {traced_s:6.2f} s, cut {cut_s * 1e3:6.1f} ms "
            f"({traced_s / cut_s:5.0f}x)  same ops {ops_t == ops_c}, same weights {names_t == names_c}, "
            f"max |diff| {diff:.1e}"
        )
    # `compile` exports the gated graph either way (the bundle ships it): before, every static graph was traced
    # beside it; now they are cut from it
    return {
        "model": label,
        "gates": g,
        "gated_export_s": gated_s,
        "rows": rows,
        "median_speedup": statistics.median(r["speedup"] for r in rows),
        "gated_plus_traced_s": gated_s + sum(r["traced_s"] for r in rows),
        "gated_plus_cut_s": gated_s + sum(r["cut_s"] for r in rows),
    }


def plot(doc: dict, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [m["model"] for m in doc["models"]]
    y = np.arange(len(labels))
    ax.barh(y + 0.2, [m["gated_plus_traced_s"] for m in doc["models"]], 0.4, label="gated + each static traced")
    ax.barh(y - 0.2, [m["gated_plus_cut_s"] for m in doc["models"]], 0.4, label="gated traced, statics cut from it")
    ax.set_yticks(y, labels)
    ax.set_xlabel(f"export seconds: the gated graph + {doc['configs']} static graphs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    ap.add_argument("--configs", type=int, default=5, help="configs per model (0 ... all gated blocks skipped)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODELS]
    if unknown:
        sys.exit(f"error: unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    models = []
    for label in chosen:
        with tempfile.TemporaryDirectory() as tmp:
            models.append(bench_model(label, MODELS[label](), args.configs, Path(tmp)))
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "host": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": 1,
        "configs": args.configs,
        "models": models,
    }
    write_json(args.out / "static_graphs.json", doc)
    plot(doc, args.out / "static_graphs.png")
    for m in models:
        print(
            f"{m['model']}: gated + {args.configs} static graphs {m['gated_plus_traced_s']:.1f} s traced, "
            f"{m['gated_plus_cut_s']:.1f} s cut ({m['gated_plus_traced_s'] / m['gated_plus_cut_s']:.1f}x); "
            f"per static graph median {m['median_speedup']:.0f}x (gated export {m['gated_export_s']:.1f} s)"
        )
    print(json.dumps({m["model"]: round(m["median_speedup"]) for m in models}))


if __name__ == "__main__":
    main()
