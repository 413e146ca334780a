"""Summaries of workload runs: the paper's Table I columns, latency percentiles, a config timeline."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Sequence

import numpy as np

from edgeskip.bench.drivers import Record


def summarize(records: Sequence[Record]) -> dict[str, Any]:
    """Counts, accuracy of processed requests, latency percentiles, requests per config."""
    done = [r for r in records if r.outcome == "processed"]
    lat = np.array([r.latency_s for r in done], float)
    pct = {f"p{q}": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 90, 99)}
    return {
        "sent": len(records), "processed": len(done), "dropped": sum(r.outcome == "dropped" for r in records),
        "errors": sum(r.outcome == "error" for r in records),
        "accuracy": float(np.mean([r.correct for r in done])) if done else None,
        "latency_s": pct, "per_config": dict(sorted(Counter(r.config for r in done).items())),
        "mean_skipped": float(np.mean([r.skipped for r in done])) if done and all(r.skipped is not None for r in done) else None,
        "latency_max_over_min": float(lat.max() / lat.min()) if len(lat) else None,
    }


def table_rows(summaries: dict[str, dict[str, Any]], reference: str = "original") -> list[dict[str, Any]]:
    """Table I: accuracy change (percentage points) and processed-inferences ratio vs ``reference``."""
    ref = summaries[reference]
    rows = []
    for name, s in summaries.items():
        rows.append({
            "mode": name, "processed": s["processed"], "dropped": s["dropped"], "accuracy": s["accuracy"],
            "accuracy_change_pp": None if s["accuracy"] is None or ref["accuracy"] is None
            else 100 * (s["accuracy"] - ref["accuracy"]),
            "processed_ratio": s["processed"] / ref["processed"] if ref["processed"] else None,
            "p50_ms": None if s["latency_s"]["p50"] is None else 1e3 * s["latency_s"]["p50"],
            "p99_ms": None if s["latency_s"]["p99"] is None else 1e3 * s["latency_s"]["p99"],
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [f"{'mode':<12} {'processed':>9} {'dropped':>8} {'accuracy':>8} {'Δacc pp':>8} {'proc ×':>7} {'p50 ms':>8} {'p99 ms':>8}"]
    for r in rows:
        lines.append(f"{r['mode']:<12} {r['processed']:>9} {r['dropped']:>8} {f(r['accuracy'], '.4f'):>8} "
                     f"{f(r['accuracy_change_pp'], '+.2f'):>8} {f(r['processed_ratio'], '.3f'):>7} "
                     f"{f(r['p50_ms'], '.3f'):>8} {f(r['p99_ms'], '.3f'):>8}")
    return "\n".join(lines)


def plot_timeline(records: Sequence[Record], dest: str | os.PathLike, title: str) -> bool:
    """Config in use over time (processed requests) with drops marked; False (nothing written) where
    matplotlib is not installed (a runtime-only install)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeskip.utils.atomic import write_with

    fig, ax = plt.subplots(figsize=(10, 3.2))
    done = [r for r in records if r.outcome == "processed"]
    drops = [r for r in records if r.outcome == "dropped"]
    ax.step([r.sent for r in done], [r.config for r in done], where="post", lw=1, label="config of processed requests")
    ax.plot([r.sent for r in drops], [r.config for r in drops], "x", ms=3, color="C3", alpha=0.5, label="dropped")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Pareto config (0 = no skipping)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    write_with(dest, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return True
