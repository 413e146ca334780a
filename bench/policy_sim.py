"""Policy study in the simulator: processed-inferences ratio and accuracy change vs offered load.

The configs (validation/test accuracy, latency) come from a bundle's manifest; the executor is simulated
(service time = the config's latency x lognormal jitter of ``--jitter``), so every policy meets exactly the
same arrivals and service times, and hundreds of runs take seconds. Accuracy is the expected one: the mean
test accuracy of the configs that processed the requests. The same Dispatcher as the daemon decides.

    python bench/policy_sim.py bench/work/bundle_r20_sd --out bench/results
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from edgeskip.bench.report import format_sweep, sweep_table
from edgeskip.bench.simulate import simulate
from edgeskip.bench.sweep import parse_runs
from edgeskip.bench.workload import arrivals
from edgeskip.manifest import load_manifest
from edgeskip.utils.atomic import write_json

PATTERNS = ("paper", "poisson", "onoff", "ramp")
LOADS = (0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


def one(pattern: str, load: float, seed: int, spec, val_acc, test_acc, lat, min_acc, count, jitter) -> dict:
    s0 = lat[0]
    arr = arrivals(pattern, count, s0 / load, seed)
    rng = np.random.default_rng(1000 + seed)
    noise = rng.lognormal(0.0, jitter, count * 2)
    k = iter(range(10**9))
    service = lambda c: lat[c] * noise[next(k) % len(noise)]  # noqa: E731
    policy, depth, deadline = spec.build(val_acc, min_acc, lat, delta_req=s0, s0=s0)
    out = simulate(arr, service, policy, depth, deadline, prior=lat)
    done = [o for o in out if not o.dropped]
    lat_e2e = np.array([o.finish - o.arrival for o in done]) if done else np.array([np.nan])
    acc = float(np.mean([test_acc[o.config] for o in done])) if done else None
    return {
        "processed": len(done),
        "accuracy": acc,
        "expected_accuracy": acc,
        "p99_ms": float(np.percentile(lat_e2e, 99) * 1e3),
        "per_config": np.bincount([o.config for o in done], minlength=len(lat)).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="a bundle, or a bench.json whose configs to use")
    ap.add_argument("--runs", default="original,paper,rate,mix,rate+q4,mix+q4")
    ap.add_argument("--loads", default=",".join(map(str, LOADS)))
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--jitter", type=float, default=0.05, help="lognormal sigma of service times")
    ap.add_argument("--min-acc-drop", type=float, default=0.10, help="min-acc = original's val accuracy - this")
    ap.add_argument("--target-util", type=float, default=None, help="rate/mix target utilisation [policy default]")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    a = ap.parse_args()
    if a.bundle.is_file():  # a bench.json: the configs it recorded
        configs = json.loads(a.bundle.read_text())["configs"]
        val, test, lat = ([c[k] for c in configs] for k in ("val_accuracy", "test_accuracy", "latency_s"))
    else:
        m = load_manifest(a.bundle)
        val, test, lat = ([getattr(c, k) for c in m.configs] for k in ("val_accuracy", "test_accuracy", "latency_s"))
    min_acc = val[0] - a.min_acc_drop
    specs = parse_runs(a.runs, {"target_util": a.target_util} if a.target_util else None)
    loads = [float(x) for x in a.loads.split(",")]
    t0 = time.time()
    results: dict = {}
    for pattern in a.patterns.split(","):
        for load in loads:
            for spec in specs:
                rows = [
                    one(pattern, load, seed, spec, val, test, lat, min_acc, a.count, a.jitter)
                    for seed in range(a.seeds)
                ]
                results.setdefault(pattern, {}).setdefault(str(load), {})[spec.label] = rows
    tables = {pattern: sweep_table(by_load) for pattern, by_load in results.items()}
    summary = {pattern: {str(r["load"]): {} for r in table} for pattern, table in tables.items()}
    for pattern, table in tables.items():
        for r in table:
            summary[pattern][str(r["load"])][r["run"]] = r
    doc = {
        "command": "python " + " ".join(shlex.quote(x) for x in sys.argv),
        "bundle": str(a.bundle),
        "min_acc": min_acc,
        "configs": [{"val_accuracy": v, "test_accuracy": t, "latency_s": s} for v, t, s in zip(val, test, lat)],
        "runs": {s.label: s.describe() for s in specs},
        "seeds": a.seeds,
        "count": a.count,
        "jitter": a.jitter,
        "seconds": time.time() - t0,
        "tables": tables,
        "results": results,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "policy_sim.json", doc)
    plot(summary, loads, [s.label for s in specs], a.out / "policy_sim.png")
    for pattern, table in tables.items():
        print(f"\n{pattern} arrivals, {a.seeds} seeds (simulated accuracy is the expected one)")
        print(format_sweep(table))
    print(f"\n{time.time() - t0:.1f} s; wrote {a.out / 'policy_sim.json'}, {a.out / 'policy_sim.png'}")


def plot(summary: dict, loads: list[float], labels: list[str], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pats = list(summary)
    fig, axes = plt.subplots(2, len(pats), figsize=(4.2 * len(pats), 6.4), squeeze=False)
    for j, p in enumerate(pats):
        for k, label in enumerate(labels):
            rows = [summary[p][str(l)][label] for l in loads]
            for i, key in enumerate(("ratio", "dacc_pp")):
                ax = axes[i][j]
                mean = [r[f"{key}_mean"] for r in rows]
                ax.plot(loads, mean, "o-", ms=3, color=f"C{k}", label=label)
                ax.fill_between(
                    loads, [r[f"{key}_min"] for r in rows], [r[f"{key}_max"] for r in rows], color=f"C{k}", alpha=0.15
                )
        axes[0][j].set_title(f"{p} arrivals")
        axes[0][j].set_ylabel("processed ÷ original")
        axes[1][j].set_ylabel("accuracy change (pp)")
        axes[1][j].set_xlabel("offered load (× original's capacity)")
        for i in range(2):
            axes[i][j].grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Adaptation policies in the simulator (band: min-max over seeds)")
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
