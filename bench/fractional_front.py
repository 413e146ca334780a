"""Issue #15's goal: does the fractional front ({full, int8, skip} per gated block) dominate the skip-only front?

The design space of `edgeskip compile --int8` on a trained checkpoint, measured on onnxruntime (this host, one
thread, batch 1; int8 blocks run its VNNI int8 kernels): int8 variants calibrated on 512 training images, probe
configs timed to fit the latency model, the greedy path, the skip-only sensitivity candidates; every candidate's
validation and test accuracy and measured latency (one interleaved run); the two fronts (selected on validation
accuracy) and their comparison on test accuracy. Then IREE host: the full and the all-int8 network compiled alone
with the bundle's flags (where iree-compile fails, the failure is recorded and a relaxed flag set is tried), timed
side by side; onnxruntime vs PyTorch parity of the int8 graph on 256 test images; the int8 weights' memory cost.

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

import numpy as np
import torch

from edgeskip.export.latency import OrtLatency
from edgeskip.models.quant import calibrate
from edgeskip.pareto.design import calibration_batches, design_space, fractional_space
from edgeskip.pareto.search import GREEDY
from edgeskip.train import load_checkpoint
from edgeskip.utils.atomic import write_json


def plot(doc: dict, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["candidates"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, split in zip(axes, ("val", "test")):
        for src, style in (
            ("probe", dict(c="0.75", s=12)),
            ("greedy", dict(c="tab:orange", s=18)),
            ("int8-twin", dict(c="tab:green", s=18)),
            ("skip-only", dict(c="tab:blue", s=18)),
        ):
            pts = [
                (r["latency_s"] * 1e6, r[f"{split}_accuracy"] * 100)
                for r in rows
                if r["source"] == src and r[f"{split}_accuracy"] is not None  # test: the fronts' configs only
            ]
            if not pts:
                continue
            ax.scatter(*zip(*pts), label=f"{src} candidates", **style)
        for key, label, color in (
            ("skip_front", "skip-only front", "tab:blue"),
            ("front", "fractional front (full/int8/skip)", "tab:red"),
        ):
            pts = sorted((rows[i]["latency_s"] * 1e6, rows[i][f"{split}_accuracy"] * 100) for i in doc[key])
            ax.step(*zip(*pts), where="post", color=color, label=label)
        ax.set_xlabel("measured latency, onnxruntime, batch 1 (µs)")
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.set_title(f"{split}: fronts selected on validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(dest, dpi=120)


# what compiles an int8 ResNet-20 here: IREE's defaults (no data tiling, no micro-kernels), the stack check off
RELAXED = [
    "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu",
    "--iree-llvmcpu-target-cpu=host",
    "--iree-llvmcpu-fail-on-out-of-bounds-stack-allocation=false",
]


def iree_host(model, configs: dict[str, tuple[int, ...]], work: Path, repeats: int) -> dict:
    """IREE host latency of each named config's static graph compiled alone with the bundle's flags, and, where
    those fail, the failure and the relaxed flags' module instead; timed interleaved."""
    import subprocess

    from edgeskip.backends.iree import IreeModule
    from edgeskip.errors import EdgeskipError
    from edgeskip.export.iree_compile import TARGETS, compile_mlir, compiler_binary, import_onnx
    from edgeskip.export.onnx_export import export_static
    from edgeskip.pareto.latency import interleaved_median

    out: dict = {"flags": TARGETS["host"].flags(), "relaxed_flags": RELAXED}
    mods = {}
    for name, o in configs.items():
        mlir = import_onnx(export_static(model, o, work / f"iree_{name}.onnx"), work / f"iree_{name}.mlir")
        try:
            mods[name] = IreeModule(compile_mlir(mlir, TARGETS["host"], work / f"iree_{name}.vmfb"))
        except EdgeskipError as e:
            out[f"{name}_error"] = str(e).splitlines()[0][:300]
            vmfb = work / f"iree_{name}_relaxed.vmfb"
            proc = subprocess.run(
                [compiler_binary(), str(mlir), *RELAXED, "-o", str(vmfb)], capture_output=True, text=True
            )
            if proc.returncode == 0:
                mods[f"{name} (relaxed flags)"] = IreeModule(vmfb)
            else:
                out[f"{name}_relaxed_error"] = (proc.stderr.strip().splitlines() or ["?"])[0][:300]
    x = np.random.default_rng(0).standard_normal((1, model.cfg.in_channels, *model.cfg.input_size), np.float32)
    med = interleaved_median([lambda m=m: m(x) for m in mods.values()], repeats, 10)
    out["latency_s"] = dict(zip(mods, med))
    return out


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
    _, pareto = design_space(model, splits, ck.dataset_id, latency=None, search=GREEDY)
    doc = fractional_space(
        model, splits, OrtLatency(model, work / "ort", repeats=args.repeats), [c["skip"] for c in pareto["candidates"]]
    )
    g = model.cfg.num_gates
    full, all8 = (1,) * g, (8,) * g
    doc.update(
        {
            "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
            "checkpoint": str(args.checkpoint),
            "repeats": args.repeats,
            "calibration_images": args.calibration_images,
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "fractional_front.json", doc)  # the onnxruntime results first: the IREE part may fail
    plot(doc, args.out / "fractional_front.png")
    iree = iree_host(model, {"full": full, "all-int8": all8}, work, args.repeats)
    from edgeskip.data.batches import iterate
    from edgeskip.export.onnx_export import verify_int8

    xb = next(iterate(splits.test, splits.norm, 256))[0]
    parity = verify_int8(model, xb, {all8: work / "ort" / f"static_{''.join(map(str, all8))}.onnx"}, tol=1.0)
    from edgeskip.export.bundle import int8_weight_bytes

    sizes = int8_weight_bytes(model)
    doc.update(
        {
            "iree_host": iree,
            "int8_onnxruntime_vs_torch_relative": parity,
            "int8_weight_bytes": sizes,
            "seconds": round(time.time() - t0, 1),
        }
    )
    rows = doc["candidates"]
    for key in ("skip_front", "front"):
        print(key)
        for i in doc[key]:
            r = rows[i]
            print(
                f"  {''.join(map(str, r['options']))}  val {r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}  "
                f"{r['latency_s'] * 1e6:7.0f} us  (model {r['latency_model_s'] * 1e6:5.0f})  {r['source']}"
            )
    for split in ("val", "test"):
        c = doc["comparison"][split]
        print(
            f"{split}: best accuracy gain at no more latency {c['max_accuracy_gain'] * 100:+.2f} points; "
            f"least latency at no less accuracy {c['min_latency_ratio']:.2f}x"
        )
    print(f"all-int8 graph, onnxruntime vs PyTorch on 256 test images: {parity:.2e} of the largest logit")
    print(f"latency model R^2 {doc['latency_model']['r2']:.3f} on {doc['latency_model']['probes']} probes")
    print(
        "IREE host: "
        + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in iree["latency_s"].items())
        + "".join(f"\n  {k}: {v}" for k, v in iree.items() if k.endswith("error"))
    )
    print(
        f"int8 variants: {sizes['int8']:,} bytes beside {sizes['float']:,} bytes of the gated blocks' float conv "
        f"weights ({sizes['int8'] / sizes['float']:.3f})"
    )
    write_json(args.out / "fractional_front.json", doc)
    plot(doc, args.out / "fractional_front.png")
    print(f"{doc['seconds']:.0f} s")


if __name__ == "__main__":
    main()
