"""Table I over several fronts of one model in one run (issue #34 part 5): float, int8 blocks, int8 everywhere.

The paper's workload at each load (x the original's capacity) and seed is replayed, in-process, against every
run label of every bundle on the same arrivals (bundles in turn, rotated per seed); each row is a processed-
inferences ratio and an expected-accuracy change (the processed requests' configs' test accuracy) against the
original (the first bundle's config 0, the float network, which every front starts from).

    python bench/table1_fronts.py --fronts float=bench/work/r20,int8=bench/work/r20_int8_norest,\\
        rest=bench/work/r20_int8_rest --backend onnxruntime --loads 0.5,0.75,1,1.25,1.5,2,2.5,3 --seeds 3 \\
        --count 2000 --min-acc 0.7862 --out bench/results/table1_fronts

Writes ``table1_fronts.json`` (rows per seed, the table, each front's configs with the latency measured here)
and ``table1_fronts.png``; prints the table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from edgeskip.bench.report import format_sweep, plot_sweep
from edgeskip.bench.run import run_front_sweep
from edgeskip.utils.atomic import write_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fronts", required=True, help="NAME=BUNDLE,... (the first one's original is the reference)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--runs", default="original,paper,rate,mix,mix+q4")
    ap.add_argument("--loads", default="0.5,0.75,1,1.25,1.5,2,2.5,3")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--min-acc", type=float, default=0.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/table1_fronts"))
    args = ap.parse_args(argv)
    fronts = dict(item.split("=", 1) for item in args.fronts.split(","))
    t0 = time.time()
    doc = run_front_sweep(
        fronts,
        [float(x) for x in args.loads.split(",")],
        seeds=args.seeds,
        runs=args.runs,
        count=args.count,
        min_acc=args.min_acc,
        backend=args.backend,
    )
    doc["seconds"] = round(time.time() - t0, 1)
    doc["command"] = "python bench/table1_fronts.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_sweep(doc["table"], args.out / "table1_fronts.png", f"paper workload, {args.seeds} seeds, in-process")
    write_json(args.out / "table1_fronts.json", doc)
    print(format_sweep(doc["table"]))
    for name, configs in doc["fronts"].items():
        print(
            f"{name}: "
            + ", ".join(
                f"{c['module'][7:]} {c['val_accuracy']:.4f} {c['latency_measured_s'] * 1e6:.0f}us" for c in configs
            )
        )


if __name__ == "__main__":
    main()
