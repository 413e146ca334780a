"""Figure 1 of the paper: test accuracy vs number of skipped blocks, stochastic depth vs conventional.

For each model the blocks are ranked on *validation* data (sensitivity: each block skipped alone),
config N skips the N least important blocks, and test accuracy is recorded. Writes
``cifar10_r20_sd_vs_plain.{json,png}`` and slim copies of both checkpoints into ``--out``.

    python bench/sd_vs_plain.py --sd bench/work/r20_sd.pt --plain bench/work/r20_plain.pt --out bench/results
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from edgeskip import __version__  # noqa: E402
from edgeskip.pareto.design import design_space  # noqa: E402
from edgeskip.pareto.latency import TorchLatency  # noqa: E402
from edgeskip.train import load_checkpoint  # noqa: E402
from edgeskip.utils.atomic import write_json, write_with  # noqa: E402


def summarize(path: Path, splits_cache: dict) -> dict:
    ck = load_checkpoint(path)
    model = ck.model()
    key = (ck.data.name, ck.data.data_dir, ck.data.val_fraction, ck.data.seed)
    if key not in splits_cache:
        splits_cache[key] = ck.data.load()
    splits = splits_cache[key]
    splits.norm = ck.norm
    t0 = time.time()
    sens, front = design_space(model, splits, ck.dataset_id, latency=TorchLatency(model, repeats=50, threads=1))
    curve = sens["curves"]["sensitivity"]
    return {
        "checkpoint": str(path), "stochastic_depth": ck.model_cfg.sd_mode != "none", "model": ck.model_cfg.to_dict(),
        "train": ck.train_cfg.to_dict(), "epochs_done": ck.epoch,
        "train_hours": sum(h["seconds"] for h in ck.history) / 3600, "final_val_accuracy": sens["full_val_accuracy"],
        "full_test_accuracy": sens["full_test_accuracy"], "ranking": sens["rankings"]["sensitivity"],
        "blocks": sens["blocks"], "curve": curve, "curves_other_rankings": {k: v for k, v in sens["curves"].items() if k != "sensitivity"},
        "pareto": front["configs"], "latency_source": front["latency_source"], "analysis_seconds": time.time() - t0,
    }, ck


def plot(results: dict, dest: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in results.items():
        n = [c["n_skipped"] for c in r["curve"]]
        ax1.plot(n, [100 * c["test_accuracy"] for c in r["curve"]], "-o", label=f"{name} (test)")
        ax1.plot(n, [100 * c["val_accuracy"] for c in r["curve"]], ":", color=ax1.lines[-1].get_color(), alpha=0.6,
                 label=f"{name} (val)")
        ax2.plot([c["macs"] / 1e6 for c in r["curve"]], [100 * c["test_accuracy"] for c in r["curve"]], "-o", label=name)
    ax1.set_xlabel("skipped blocks (least sensitive first, ranked on validation data)")
    ax1.set_ylabel("top-1 accuracy (%)")
    ax1.set_title("ResNet-20, CIFAR-10 (JPEG copy)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("MMACs per image")
    ax2.set_ylabel("test top-1 accuracy (%)")
    ax2.set_title("accuracy vs compute")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    write_with(dest, lambda p: fig.savefig(p, dpi=110, format="png"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd", type=Path, required=True, help="checkpoint trained with stochastic depth")
    ap.add_argument("--plain", type=Path, required=True, help="checkpoint trained without")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--name", default="cifar10_r20_sd_vs_plain")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    cache: dict = {}
    results, cks = {}, {}
    for name, path in (("stochastic depth", args.sd), ("conventional", args.plain)):
        results[name], cks[name] = summarize(path, cache)
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "edgeskip_version": __version__, "torch": torch.__version__, "host": platform.processor() or platform.machine(),
        "data_note": "CIFAR-10 JPEG re-encoding (../shared/datasets/cifar10-jpeg); figures can differ slightly from "
                     "ones published on the original pickled batches",
        "selection_split": "val", "results": results,
    }
    write_json(args.out / f"{args.name}.json", doc)
    plot(results, args.out / f"{args.name}.png")
    for name, ck in cks.items():
        ck.save(args.out / ("r20_sd.pt" if name == "stochastic depth" else "r20_plain.pt"), slim=True)
    for name, r in results.items():
        accs = " ".join(f"{100 * c['test_accuracy']:.1f}" for c in r["curve"])
        print(f"{name:>17}: full test {100 * r['full_test_accuracy']:.2f}%  by skipped blocks 0..{len(r['curve']) - 1}: {accs}")


if __name__ == "__main__":
    main()
