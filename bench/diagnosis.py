"""Tabulate the recipe diagnosis runs (bench/train_diagnosis.sh): one change each against the baseline.

For every run: the change, final train/validation accuracy, test accuracy (reported only; the
decision uses validation), seconds per epoch, and the validation curve. Writes ``OUT.json`` and
``OUT.png``.

    python bench/diagnosis.py --dir bench/work/diag --out bench/results/train_diagnosis
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from edgeskip import __version__  # noqa: E402
from edgeskip.train import evaluate, load_checkpoint  # noqa: E402
from edgeskip.utils.atomic import write_json, write_with  # noqa: E402


def changes(base: dict, other: dict) -> dict:
    """Settings of ``other`` that differ from ``base`` (model and training)."""
    return {k: other[k] for k in other if k not in ("extra", "world_size") and other[k] != base.get(k)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("bench/work/diag"))
    ap.add_argument("--order", default="", help="Run names in table order (default: all, base first).")
    ap.add_argument("--out", type=Path, default=Path("bench/results/train_diagnosis"))
    ap.add_argument(
        "--made-by",
        default="EPOCHS=10 bash bench/train_diagnosis.sh",
        help="The command that trained the runs (recorded in the JSON).",
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    names = args.order.split() or sorted((p.stem for p in args.dir.glob("*.pt")), key=lambda n: (n != "base", n))
    cks = {n: load_checkpoint(args.dir / f"{n}.pt") for n in names if (args.dir / f"{n}.pt").is_file()}
    if "base" not in cks:
        sys.exit("error: no base run in " + str(args.dir))
    splits = cks["base"].data.load()
    flat = {n: {**ck.model_cfg.to_dict(), **ck.train_cfg.to_dict()} for n, ck in cks.items()}
    rows = []
    for n, ck in cks.items():
        h = ck.history
        test = evaluate(ck.model(), splits.test, ck.norm)
        rows.append(
            {
                "run": n,
                "change": changes(flat["base"], flat[n]),
                "epochs_done": ck.epoch,
                "epochs": ck.train_cfg.epochs,
                "train_acc": h[-1]["train_acc"],
                "val_acc": h[-1]["val_acc"],
                "test_acc": test,
                "seconds_per_epoch": sum(r["seconds"] for r in h) / len(h),
                "val_curve": [r["val_acc"] for r in h],
                "train_curve": [r["train_acc"] for r in h],
            }
        )
        print(
            f"{n:14s} epochs {ck.epoch:3d}  train {h[-1]['train_acc']:.4f}  val {h[-1]['val_acc']:.4f}  "
            f"test {test:.4f}  {rows[-1]['seconds_per_epoch']:.0f} s/epoch  {rows[-1]['change']}"
        )
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "runs_made_by": args.made_by + " (see the script's header for the baseline and the changes)",
        "edgeskip_version": __version__,
        "torch": torch.__version__,
        "host": platform.processor() or platform.machine(),
        "data_note": "CIFAR-10 JPEG re-encoding (../shared/datasets/cifar10-jpeg); 45k/5k train/val split; "
        "test = the official 10k test images, reported only",
        "baseline": flat["base"],
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), doc)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        style = "--" if r["run"].startswith("sd") else "-"
        ep = range(1, len(r["val_curve"]) + 1)
        ax1.plot(ep, [100 * v for v in r["val_curve"]], style, label=r["run"])
        ax2.plot(ep, [100 * v for v in r["train_curve"]], style, label=r["run"])
    ax1.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Recipe diagnosis: validation")
    ax2.set(xlabel="epoch", ylabel="training accuracy (%)", title="training (augmented, SD active)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    write_with(args.out.with_suffix(".png"), lambda p: fig.savefig(p, dpi=120, format="png"))


if __name__ == "__main__":
    main()
