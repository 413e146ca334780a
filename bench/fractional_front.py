"""Issue #15's goal: does the fractional front ({full, int8, skip} per gated block) dominate the skip-only front?

The design space of `edgeskip compile --int8` on a trained checkpoint, measured on onnxruntime (this host, one
thread, batch 1; int8 blocks run its VNNI int8 kernels): int8 variants calibrated on 512 training images, probe
configs timed to fit the latency model, the greedy path, the skip-only sensitivity candidates; every candidate's
validation and test accuracy and measured latency (one interleaved run); the two fronts (selected on validation
accuracy) and their comparison on test accuracy. Then the same per back end: IREE host latency of the full, the
all-int8 and the skip-only configs side by side (IREE's int8 path is slower than its float path on this CPU, so an
IREE target's front stays skip-only), and the int8 weights' memory cost.

    python bench/fractional_front.py --checkpoint bench/results/r20_sd.pt --out bench/results

Writes results/fractional_front.json and .png. Pause other work while it runs: it times.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeskip.export.latency import IreeLatency, OrtLatency
from edgeskip.models.quant import calibrate
from edgeskip.pareto.design import calibration_batches, design_space, fractional_space
from edgeskip.train import load_checkpoint
from edgeskip.utils.atomic import write_json


def plot(doc: dict, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["candidates"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, split in zip(axes, ("val", "test")):
        for src, style in (("probe", dict(c="0.75", s=12)), ("greedy", dict(c="tab:orange", s=18)),
                           ("skip-only", dict(c="tab:blue", s=18))):
            pts = [(r["latency_s"] * 1e6, r[f"{split}_accuracy"] * 100) for r in rows if r["source"] == src]
            ax.scatter(*zip(*pts), label=f"{src} candidates", **style)
        for key, label, color in (("skip_front", "skip-only front", "tab:blue"),
                                  ("front", "fractional front (full/int8/skip)", "tab:red")):
            pts = sorted((rows[i]["latency_s"] * 1e6, rows[i][f"{split}_accuracy"] * 100) for i in doc[key])
            ax.step(*zip(*pts), where="post", color=color, label=label)
        ax.set_xlabel("measured latency, onnxruntime, batch 1 (µs)")
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.set_title(f"{split}: fronts selected on validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(dest, dpi=120)


def iree_side_by_side(model, configs: list[tuple[int, ...]], work: Path, repeats: int) -> dict:
    """IREE host latency (shared-weight static modules, the bundle's flags) of ``configs``, one interleaved run."""
    lat = IreeLatency(model, work / "iree", work / "iree_work", repeats=repeats)
    t = lat.measure(configs)
    return {"".join(map(str, o)): s for o, s in zip(configs, t)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("bench/results/r20_sd.pt"))
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    ck = load_checkpoint(args.checkpoint)
    model = ck.model().eval()
    splits = ck.data.load()
    model.attach_int8(calibrate(model, calibration_batches(splits, args.calibration_images), model.cfg.gated_blocks))
    work = Path(tempfile.mkdtemp(prefix="fractional-"))
    _, pareto = design_space(model, splits, ck.dataset_id, latency=None)
    doc = fractional_space(model, splits, OrtLatency(model, work / "ort", repeats=args.repeats),
                           [c["skip"] for c in pareto["candidates"]])
    g = model.cfg.num_gates
    full, all8 = (1,) * g, (8,) * g
    skip_only = [tuple(c["skip"]) for c in pareto["candidates"]]
    iree = iree_side_by_side(model, [full, all8, *skip_only[1:]], work, args.repeats)
    from edgeskip.data.batches import iterate
    from edgeskip.export.onnx_export import verify_int8

    xb = next(iterate(splits.test, splits.norm, 256))[0]
    parity = verify_int8(model, xb, {all8: work / "ort" / f"static_{''.join(map(str, all8))}.onnx"}, tol=1.0)
    from edgeskip.backends.iree import parameter_index

    sizes = {"float": 0, "int8": 0}
    for name, entry in parameter_index(work / "iree" / "weights.irpa").items():
        sizes["int8" if name.split(".")[-1] in ("w1", "w2", "b1", "b2") else "float"] += int(entry.length)
    gated_float = sum(p.numel() * 4 for b in model.cfg.gated_blocks for p in model.blocks[str(b)].parameters()
                      if p.dim() == 4)
    doc.update({
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "checkpoint": str(args.checkpoint), "repeats": args.repeats, "calibration_images": args.calibration_images,
        "iree_host_latency_s": iree,
        "iree_int8_over_float": iree["".join(map(str, all8))] / iree["".join(map(str, full))],
        "int8_onnxruntime_vs_torch_relative": parity,
        "weight_archive_bytes": sizes, "gated_blocks_float_conv_weight_bytes": gated_float,
        "seconds": round(time.time() - t0, 1),
    })
    rows = doc["candidates"]
    for key in ("skip_front", "front"):
        print(key)
        for i in doc[key]:
            r = rows[i]
            print(f"  {''.join(map(str, r['options']))}  val {r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}  "
                  f"{r['latency_s'] * 1e6:7.0f} us  (model {r['latency_model_s'] * 1e6:5.0f})  {r['source']}")
    for split in ("val", "test"):
        c = doc["comparison"][split]
        print(f"{split}: best accuracy gain at no more latency {c['max_accuracy_gain'] * 100:+.2f} points; "
              f"least latency at no less accuracy {c['min_latency_ratio']:.2f}x")
    print(f"all-int8 graph, onnxruntime vs PyTorch on 256 test images: {parity:.2e} of the largest logit")
    print(f"latency model R^2 {doc['latency_model']['r2']:.3f} on {doc['latency_model']['probes']} probes")
    print("IREE host: " + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in iree.items())
          + f"; all-int8 / full {doc['iree_int8_over_float']:.2f}x")
    print(f"weights archive: {sizes['float']:,} float bytes + {sizes['int8']:,} int8 bytes "
          f"({sizes['int8'] / gated_float:.2f} of the gated blocks' float conv weights)")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "fractional_front.json", doc)
    plot(doc, args.out / "fractional_front.png")
    print(f"{doc['seconds']:.0f} s")


if __name__ == "__main__":
    main()
