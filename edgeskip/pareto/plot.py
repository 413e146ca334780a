"""PNG plot of the design space: accuracy vs skipped blocks (per ranking) and vs cost."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgeskip.manifest import model_label  # noqa: E402
from edgeskip.utils.atomic import write_with  # noqa: E402


def plot_design_space(sensitivity: dict[str, Any], pareto: dict[str, Any], dest: str | os.PathLike) -> None:
    """Left: accuracy vs number of skipped blocks for each ranking. Right: accuracy vs cost, front marked."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"sensitivity": "-o", "weight_l2": "--s", "random": ":^", "beam": "-D", "exhaustive": "-*"}
    for kind, curve in sensitivity["curves"].items():
        n = [r["n_skipped"] for r in curve]
        ax1.plot(n, [r["val_accuracy"] for r in curve], styles.get(kind, "-"), ms=4, label=f"{kind} (val)")
    method = pareto.get("search", {}).get("method", "greedy")
    name = pareto["ranking"] if method == "greedy" else method
    main = sensitivity["curves"][name]
    ax1.plot(
        [r["n_skipped"] for r in main],
        [r["test_accuracy"] for r in main],
        "-x",
        color="k",
        ms=5,
        label=f"{name} (test)",
    )
    ax1.set_xlabel("skipped blocks")
    ax1.set_ylabel("top-1 accuracy")
    ax1.set_title(f"{sensitivity['dataset_id']}  {model_label(sensitivity['model'])}")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)

    cost_key = pareto["cost"]
    scale, unit = (1e3, "latency (ms, batch 1)") if cost_key == "latency_s" else (1e-6, "MMACs")
    cands = pareto["candidates"]
    front = pareto["configs"]
    ax2.plot(
        [r[cost_key] * scale for r in cands],
        [r["val_accuracy"] for r in cands],
        "o",
        color="0.6",
        label="candidates (val)",
    )
    ax2.plot(
        [r[cost_key] * scale for r in front],
        [r["val_accuracy"] for r in front],
        "-o",
        color="C3",
        label="Pareto front (val)",
    )
    for r in front:
        ax2.annotate(
            str(r["n_skipped"]),
            (r[cost_key] * scale, r["val_accuracy"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax2.set_xlabel(unit)
    ax2.set_ylabel("top-1 accuracy")
    ax2.set_title(f"accuracy vs {'latency' if cost_key == 'latency_s' else 'MACs'} (labels: skipped blocks)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    write_with(dest, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
