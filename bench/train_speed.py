"""Images/s of the training step on this CPU: precision, torch.compile, batch size, threads, processes.

Every variant runs the engine's own step (``edgeskip.train.loop.train_step``) on real CIFAR-10 batches
(crop+flip, normalised) in a fresh process with its own thread count; variants are timed round-robin
(``--rounds``) so machine noise hits all alike, and the median is reported as a ratio to today's
default (fp32, 2 threads, batch 128). Data-parallel variants run under torchrun (gloo), one thread per
process. The data pipeline (batch assembly + augmentation) is timed on its own.

    python bench/train_speed.py --out bench/results/train_speed      (run on an otherwise idle machine)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = "../shared/datasets/cifar10-jpeg"
# name: (processes, threads per process, amp, compile, global batch, sd_mode[, memory format])
VARIANTS = {
    "fp32 2thr bs128 (before)": (1, 2, "fp32", False, 128, "none"),
    "fp32 1thr bs128": (1, 1, "fp32", False, 128, "none"),
    "bf16 2thr bs128": (1, 2, "bf16", False, 128, "none"),
    "bf16 2thr bs128 NCHW": (1, 2, "bf16", False, 128, "none", "nchw"),
    "bf16+compile 2thr bs128": (1, 2, "bf16", True, 128, "none"),
    "bf16 2thr bs256": (1, 2, "bf16", False, 256, "none"),
    "fp32 DDP 2x1thr bs128": (2, 1, "fp32", False, 128, "none"),
    "bf16 DDP 2x1thr bs128": (2, 1, "bf16", False, 128, "none"),
    "SD: fp32 2thr bs128": (1, 2, "fp32", False, 128, "batch"),
    "SD: bf16 DDP 2x1thr bs128": (2, 1, "bf16", False, 128, "batch"),
}


def worker(args: argparse.Namespace) -> None:
    """Time ``--seconds`` of training steps; rank 0 prints one JSON line."""
    import torch

    from edgeskip.data.batches import iterate
    from edgeskip.models import ResNetConfig, build_model
    from edgeskip.train import DataSpec, TrainConfig
    from edgeskip.train.distributed import from_environment
    from edgeskip.train.loop import make_optimizer, train_step, training_forward

    torch.set_num_threads(args.threads)
    ddp = from_environment()
    splits = DataSpec("imagefolder", args.data).load()
    cfg = TrainConfig(batch_size=args.batch, amp=args.amp, compile=args.compile, epochs=1)
    torch.manual_seed(0)
    fmt = torch.contiguous_format if args.nchw else torch.channels_last
    model = build_model(ResNetConfig(sd_mode=args.sd)).to(memory_format=fmt)
    forward = training_forward(model, cfg, ddp)
    opt, sched = make_optimizer(model, cfg, 10_000)
    batches = list(
        iterate(
            splits.train.subset(torch.arange(args.batch * 24).numpy()),
            splits.norm,
            args.batch,
            shuffle=True,
            augment=True,
            drop_last=True,
            shard=(ddp.rank, ddp.world_size),
        )
    )
    batches = [(x.contiguous(memory_format=fmt), y) for x, y in batches]
    for x, y in batches[:8]:  # warm-up (and compilation)
        train_step(forward, opt, sched, x, y, cfg)
    ddp.barrier()
    steps, t0 = 0, time.perf_counter()
    while True:
        x, y = batches[steps % len(batches)]
        train_step(forward, opt, sched, x, y, cfg)
        steps += 1
        done = time.perf_counter() - t0 >= args.seconds
        if ddp.active:  # every rank stops at the same step
            done = ddp.sum(float(done))[0] > 0
        if done:
            break
    dt = time.perf_counter() - t0
    if ddp.is_main:
        print(json.dumps({"images_per_s": steps * args.batch / dt, "steps": steps}))
    ddp.close()


def pipeline(data: str, batch: int, seconds: float) -> float:
    """Images/s of batch assembly + crop/flip + normalisation alone (one thread)."""
    import torch

    from edgeskip.data.batches import iterate
    from edgeskip.train import DataSpec

    torch.set_num_threads(1)
    splits = DataSpec("imagefolder", data).load()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x, _ in iterate(splits.train, splits.norm, batch, shuffle=True, augment=True, drop_last=True, seed=n):
            n += len(x)
            if time.perf_counter() - t0 >= seconds:
                break
    return n / (time.perf_counter() - t0)


def run_variant(spec: tuple, data: str, seconds: float) -> float:
    procs, threads, amp, compile_, batch, sd = spec[:6]
    args = (
        [
            __file__,
            "--worker",
            "--data",
            data,
            "--threads",
            str(threads),
            "--amp",
            amp,
            "--batch",
            str(batch),
            "--sd",
            sd,
            "--seconds",
            str(seconds),
        ]
        + (["--compile"] if compile_ else [])
        + (["--nchw"] if spec[6:] else [])
    )
    cmd = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", "29533"]
        if procs > 1
        else [sys.executable]
    ) + args
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        raise SystemExit(f"variant {spec} failed:\n{res.stderr[-2000:]}")
    return json.loads(lines[-1])["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amp", default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--nchw", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sd", default="none")
    ap.add_argument("--seconds", type=float, default=15.0, help="Timed seconds per variant and round.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/train_speed"))
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from edgeskip import __version__
    from edgeskip.utils.atomic import write_json, write_with

    runs: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for r in range(args.rounds):
        for name, spec in VARIANTS.items():
            runs[name].append(run_variant(spec, args.data, args.seconds))
            print(f"round {r + 1}: {name:28s} {runs[name][-1]:7.0f} img/s", flush=True)
    pipe = pipeline(args.data, 128, args.seconds)
    base = statistics.median(runs["fp32 2thr bs128 (before)"])
    rows = [
        {
            "variant": k,
            "processes": VARIANTS[k][0],
            "threads": VARIANTS[k][1],
            "amp": VARIANTS[k][2],
            "compile": VARIANTS[k][3],
            "batch": VARIANTS[k][4],
            "sd_mode": VARIANTS[k][5],
            "memory_format": (VARIANTS[k][6:] or ("channels_last",))[0],
            "images_per_s": v,
            "median": statistics.median(v),
            "ratio_to_before": statistics.median(v) / base,
        }
        for k, v in runs.items()
    ]
    for row in rows:
        print(f"{row['variant']:28s} {row['median']:7.0f} img/s  x{row['ratio_to_before']:.2f}")
    print(f"data pipeline alone (1 thread): {pipe:.0f} img/s")
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "edgeskip_version": __version__,
        "torch": torch.__version__,
        "host": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "model": "ResNet-20 (CIFAR-10, 32x32), conventional unless marked SD (batch mode, p_L 0.5)",
        "seconds_per_variant_and_round": args.seconds,
        "rounds": args.rounds,
        "pipeline_images_per_s_1thread": pipe,
        "variants": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), doc)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.barh([r["variant"] for r in rows][::-1], [r["median"] for r in rows][::-1], color="tab:blue")
    for i, r in enumerate(rows[::-1]):
        ax.text(r["median"], i, f" x{r['ratio_to_before']:.2f}", va="center", fontsize=8)
    ax.set(xlabel="training images/s (median of rounds)", title="ResNet-20 training step on this CPU")
    fig.tight_layout()
    write_with(args.out.with_suffix(".png"), lambda p: fig.savefig(p, dpi=120, format="png"))


if __name__ == "__main__":
    main()
