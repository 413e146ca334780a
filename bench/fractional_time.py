"""Issue #34 part 4: the time of the fractional design space, with and without screening the greedy walk.

The fractional design space ({full, int8, skip} per gated block, what `edgeskip compile --int8` builds) walks
greedily from the full network: each step evaluates every move (a block full -> int8, int8 -> skip, full -> skip)
on the whole validation split. With ``--screen-images K`` the walk ranks each step's moves on K seeded-random
validation images first and evaluates only the best 3 on the whole split (the beam search's screening, §1.3).

This runs the same design space once per ``--screen-images`` value, in one process, one after the other, on one
model calibrated once (onnxruntime latency, one thread): each variant's seconds (whole design space and the walk
alone), evaluations, greedy path, and its fractional front on validation and test accuracy, side by side.

    python bench/fractional_time.py --checkpoint bench/checkpoints/r20_sd.pt --screen-images 0,1000 \
        --out bench/results

Writes results/fractional_time.json. Pause other work while it runs: it times.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeskip.export.latency import OrtLatency
from edgeskip.models.quant import calibrate
from edgeskip.pareto.design import calibration_batches, design_space, fractional_space
from edgeskip.pareto.search import GREEDY
from edgeskip.train import load_checkpoint
from edgeskip.utils.atomic import write_json


def front_rows(doc: dict) -> list[dict]:
    rows = doc["candidates"]
    return [
        {k: rows[i][k] for k in ("options", "val_accuracy", "test_accuracy", "latency_s")}
        for i in sorted(doc["front"], key=lambda i: rows[i]["latency_s"])
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("bench/checkpoints/r20_sd.pt"))
    ap.add_argument("--screen-images", default="0,1000", help="comma-separated; 0: the walk unscreened")
    ap.add_argument("--repeats", type=int, default=30, help="latency repeats per config (compile's default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.checkpoint)
    model = ck.model().eval()
    splits = ck.data.load()
    model.attach_int8(calibrate(model, calibration_batches(splits), model.cfg.gated_blocks))
    _, pareto = design_space(model, splits, ck.dataset_id, latency=None, search=GREEDY)
    skip = [c["skip"] for c in pareto["candidates"]]
    runs = []
    for n in [int(v) for v in args.screen_images.split(",")]:
        with tempfile.TemporaryDirectory() as work:
            t0 = time.perf_counter()
            doc = fractional_space(
                model, splits, OrtLatency(model, Path(work), repeats=args.repeats), skip, screen_images=n
            )
            seconds = time.perf_counter() - t0
        runs.append(
            {
                "screen_images": n,
                "seconds": round(seconds, 1),
                "walk": doc["walk"],
                "phases_s": doc["seconds"],
                "greedy_path": doc["greedy_path"],
                "front": front_rows(doc),
                "comparison_test": {
                    k: doc["comparison"]["test"][k] for k in ("max_accuracy_gain", "min_latency_ratio")
                },
            }
        )
        r = runs[-1]
        print(
            f"screen {n}: {r['seconds']:.0f} s (walk {r['walk']['seconds']:.0f} s, {r['walk']['evaluated']} evaluated, "
            f"{r['walk']['screened']} screened), path of {len(r['greedy_path'])}, front of {len(r['front'])}; "
            f"test gain over skip-only {r['comparison_test']['max_accuracy_gain']}",
            flush=True,
        )
    base = runs[0]
    for r in runs:
        r["seconds_vs_first"] = round(r["seconds"] / base["seconds"], 3)
        r["same_path_as_first"] = r["greedy_path"] == base["greedy_path"]
    out = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "checkpoint": str(args.checkpoint),
        "num_val": len(splits.val),
        "threads": args.threads,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "fractional_time.json", out)


if __name__ == "__main__":
    main()
