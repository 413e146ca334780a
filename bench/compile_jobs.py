"""Compiling a bundle's candidate modules side by side: wall time with one compiler process vs one per core.

Builds the same shared-weight modules (``build_shared_modules``: the candidate configs a bundle measures) with
``EDGESKIP_COMPILE_JOBS=1`` and with the default (one per core), alternating A B A B, and prints the ratio per
pair. Model: an untrained CIFAR ResNet (the compile cost does not depend on the weights' values).

    python bench/compile_jobs.py --depth 20 --configs 8 --pairs 2 --out bench/results
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeskip.export.iree_compile import TARGETS, compile_jobs
from edgeskip.export.shared_weights import build_shared_modules
from edgeskip.models import ResNetConfig, build_model, skip_from_indices
from edgeskip.utils.atomic import write_json


def build_seconds(model, skips, jobs: str | None) -> float:
    if jobs is None:
        os.environ.pop("EDGESKIP_COMPILE_JOBS", None)
    else:
        os.environ["EDGESKIP_COMPILE_JOBS"] = jobs
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_shared_modules(model, skips, TARGETS["host"], Path(tmp) / "out", Path(tmp) / "work")
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(ResNetConfig(depth=args.depth)).eval()
    g = model.cfg.num_gates
    skips = [skip_from_indices(range(n), g) for n in range(min(args.configs, g + 1))]
    default_jobs = compile_jobs()
    pairs = []
    for _ in range(args.pairs):
        one = build_seconds(model, skips, "1")
        many = build_seconds(model, skips, None)
        pairs.append({"one_job_s": one, "default_jobs_s": many, "speedup": one / many})
        print(f"1 job {one:.1f} s, {default_jobs} jobs {many:.1f} s: {one / many:.2f}x")
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "host": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "default_jobs": default_jobs,
        "model": f"ResNet-{args.depth} (untrained, 32x32)",
        "configs": len(skips),
        "pairs": pairs,
        "median_speedup": statistics.median(p["speedup"] for p in pairs),
    }
    write_json(args.out / "compile_jobs.json", doc)
    print(f"median speed-up {doc['median_speedup']:.2f}x ({len(skips)} modules, {default_jobs} jobs)")


if __name__ == "__main__":
    main()
