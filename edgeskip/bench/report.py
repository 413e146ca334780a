"""Summaries of workload runs: the paper's Table I columns, latency percentiles, a config timeline."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeskip.bench.drivers import Record
from edgeskip.runtime.power import Energy


def summarize(
    records: Sequence[Record], test_accuracy: Sequence[float] | None = None, energy: Energy | None = None
) -> dict[str, Any]:
    """Counts, accuracy of processed requests, latency percentiles, requests per config; with ``energy`` (the
    run's, from a power source) joules per processed inference and inferences per joule (= per watt-second:
    the paper's Inf/W).

    With ``test_accuracy`` (per config, on the whole test split), also ``expected_accuracy``: the mean over
    processed requests of their config's test accuracy. Measured accuracy on ~1,000 requests carries ~1.3
    points of sampling noise (which images a run happened to process); the expected one does not, so
    policies are compared on it."""
    done = [r for r in records if r.outcome == "processed"]
    lat = np.array([r.latency_s for r in done], float)
    pct = {f"p{q}": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 90, 99)}
    e2e = np.array([r.e2e_s for r in done if r.e2e_s is not None], float)
    e2e_pct = {f"p{q}": float(np.percentile(e2e, q)) if len(e2e) else None for q in (50, 99)}
    return {
        "sent": len(records),
        "processed": len(done),
        "dropped": sum(r.outcome == "dropped" for r in records),
        "errors": sum(r.outcome == "error" for r in records),
        "accuracy": float(np.mean([r.correct for r in done])) if done else None,
        "expected_accuracy": float(np.mean([test_accuracy[r.config] for r in done]))
        if done and test_accuracy is not None and all(r.config is not None for r in done)
        else None,
        "latency_s": pct,
        "e2e_s": e2e_pct,
        "drop_reasons": dict(sorted(Counter(r.reason for r in records if r.outcome == "dropped").items())),
        "per_config": dict(sorted(Counter(r.config for r in done).items())),
        "mean_skipped": float(np.mean([r.skipped for r in done]))
        if done and all(r.skipped is not None for r in done)
        else None,
        "latency_max_over_min": float(lat.max() / lat.min()) if len(lat) else None,
        **energy_fields(energy, len(done)),
    }


def energy_fields(energy: Energy | None, processed: int) -> dict[str, Any]:
    """A run's energy and what it is per processed inference (nothing without a power source)."""
    if energy is None:
        return {}
    above = energy.joules_above_idle
    return {
        "energy": energy.to_dict(),
        "joules_per_inference": energy.joules / processed if processed else None,
        "inferences_per_joule": processed / energy.joules if energy.joules > 0 else None,
        "inferences_per_joule_above_idle": processed / above if above is not None and above > 0 else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def table_rows(summaries: dict[str, dict[str, Any]], reference: str = "original") -> list[dict[str, Any]]:
    """Table I: accuracy change (percentage points) and processed-inferences ratio vs ``reference``."""
    ref = summaries[reference]
    rows = []
    for name, s in summaries.items():
        rows.append(
            {
                "mode": name,
                "processed": s["processed"],
                "dropped": s["dropped"],
                "accuracy": s["accuracy"],
                "accuracy_change_pp": None
                if s["accuracy"] is None or ref["accuracy"] is None
                else 100 * (s["accuracy"] - ref["accuracy"]),
                "expected_accuracy_change_pp": None
                if s.get("expected_accuracy") is None or ref.get("expected_accuracy") is None
                else 100 * (s["expected_accuracy"] - ref["expected_accuracy"]),
                "processed_ratio": s["processed"] / ref["processed"] if ref["processed"] else None,
                "p50_ms": None if s["latency_s"]["p50"] is None else 1e3 * s["latency_s"]["p50"],
                "p99_ms": None if s["latency_s"]["p99"] is None else 1e3 * s["latency_s"]["p99"],
            }
        )
        if "energy" in s:  # Table I's third column: inferences per watt(-second) relative to the reference
            rows[-1] |= {
                "mj_per_inference": None if s["joules_per_inference"] is None else 1e3 * s["joules_per_inference"],
                "inf_per_j": s["inferences_per_joule"],
                "inf_per_w_ratio": ratio(s["inferences_per_joule"], ref.get("inferences_per_joule")),
                "inf_per_w_ratio_above_idle": ratio(
                    s["inferences_per_joule_above_idle"], ref.get("inferences_per_joule_above_idle")
                ),
            }
    return rows


def sweep_table(rows: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Per load and run: processed ratio and accuracy change (pp) vs "original" on the same arrivals (mean,
    min, max over seeds)."""
    table = []
    for load, by_run in rows.items():
        ref = by_run["original"]
        for label, runs in by_run.items():
            ratio = [r["processed"] / o["processed"] for r, o in zip(runs, ref) if o["processed"]]
            dacc = [
                100 * (r["accuracy"] - o["accuracy"])
                for r, o in zip(runs, ref)
                if r["accuracy"] is not None and o["accuracy"] is not None
            ]
            dexp = [
                100 * (r["expected_accuracy"] - o["expected_accuracy"])
                for r, o in zip(runs, ref)
                if r.get("expected_accuracy") is not None and o.get("expected_accuracy") is not None
            ]
            table.append(
                {
                    "load": float(load),
                    "run": label,
                    "seeds": len(runs),
                    **{
                        f"ratio_{k}": f(ratio) if ratio else None
                        for k, f in (("mean", np.mean), ("min", np.min), ("max", np.max))
                    },
                    **{
                        f"dacc_pp_{k}": f(dacc) if dacc else None
                        for k, f in (("mean", np.mean), ("min", np.min), ("max", np.max))
                    },
                    **{
                        f"dexp_pp_{k}": f(dexp) if dexp else None
                        for k, f in (("mean", np.mean), ("min", np.min), ("max", np.max))
                    },
                    "accuracy_mean": float(np.mean([r["accuracy"] for r in runs if r["accuracy"] is not None]))
                    if any(r["accuracy"] is not None for r in runs)
                    else None,
                }
            )
            per_j = [
                r["inferences_per_joule"] / o["inferences_per_joule"]
                for r, o in zip(runs, ref)
                if r.get("inferences_per_joule") and o.get("inferences_per_joule")
            ]
            if per_j:  # Inf/W relative to the original on the same arrivals
                table[-1] |= {
                    f"inf_per_w_ratio_{k}": f(per_j) for k, f in (("mean", np.mean), ("min", np.min), ("max", np.max))
                }
    for row in table:
        for k, v in row.items():
            if isinstance(v, np.floating):
                row[k] = float(v)
    return table


def format_sweep(table: list[dict[str, Any]]) -> str:
    runs = list(dict.fromkeys(r["run"] for r in table))
    loads = list(dict.fromkeys(r["load"] for r in table))
    cell = {(r["load"], r["run"]): r for r in table}
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    key = "dexp_pp_mean" if all(r.get("dexp_pp_mean") is not None for r in table) else "dacc_pp_mean"
    what = "expected (configs' test accuracy)" if key == "dexp_pp_mean" else "measured"
    lines = [
        f"processed ratio / {what} accuracy change (pp) vs original, mean over seeds",
        f"{'load':>5} " + "".join(f"{r:>18}" for r in runs),
    ]
    for load in loads:
        lines.append(
            f"{load:>5g} "
            + "".join(f"{f(cell[load, r]['ratio_mean'], '.2f'):>9}/{f(cell[load, r][key], '+.2f'):<8}" for r in runs)
        )
    if any("inf_per_w_ratio_mean" in r for r in table):
        lines.append("inferences per joule (Inf/W) relative to original, mean over seeds")
        for load in loads:
            lines.append(
                f"{load:>5g} " + "".join(f"{f(cell[load, r].get('inf_per_w_ratio_mean'), '.3f'):>18}" for r in runs)
            )
    return "\n".join(lines)


def plot_sweep(table: list[dict[str, Any]], dest: str | os.PathLike, title: str) -> bool:
    """Processed ratio and accuracy change vs load, one line per run with its min-max band over seeds; False
    (nothing written) without matplotlib."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeskip.utils.atomic import write_with

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, run in enumerate(dict.fromkeys(r["run"] for r in table)):
        rows = sorted((r for r in table if r["run"] == run), key=lambda r: r["load"])
        x = [r["load"] for r in rows]
        acc_key = "dexp_pp" if all(r.get("dexp_pp_mean") is not None for r in rows) else "dacc_pp"
        for ax, key in zip(axes, ("ratio", acc_key)):
            ax.plot(x, [r[f"{key}_mean"] for r in rows], "o-", ms=3, color=f"C{k % 10}", label=run)
            ax.fill_between(
                x, [r[f"{key}_min"] for r in rows], [r[f"{key}_max"] for r in rows], color=f"C{k % 10}", alpha=0.15
            )
    axes[0].set_ylabel("processed inferences ÷ original")
    axes[1].set_ylabel("accuracy change vs original (pp; expected where known)")
    for ax in axes:
        ax.set_xlabel("offered load (× the original's capacity)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    write_with(dest, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return True


def format_table(rows: list[dict[str, Any]]) -> str:
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    energy = any("inf_per_j" in r for r in rows)
    lines = [
        f"{'mode':<12} {'processed':>9} {'dropped':>8} {'accuracy':>8} {'Δacc pp':>8} {'Δexp pp':>8} "
        f"{'proc ×':>7} {'p50 ms':>8} {'p99 ms':>8}" + (f" {'mJ/inf':>8} {'Inf/J':>8} {'Inf/W ×':>8}" if energy else "")
    ]
    for r in rows:
        lines.append(
            f"{r['mode']:<12} {r['processed']:>9} {r['dropped']:>8} {f(r['accuracy'], '.4f'):>8} "
            f"{f(r['accuracy_change_pp'], '+.2f'):>8} {f(r.get('expected_accuracy_change_pp'), '+.2f'):>8} "
            f"{f(r['processed_ratio'], '.3f'):>7} {f(r['p50_ms'], '.3f'):>8} {f(r['p99_ms'], '.3f'):>8}"
            + (
                f" {f(r.get('mj_per_inference'), '.3f'):>8} {f(r.get('inf_per_j'), '.1f'):>8} "
                f"{f(r.get('inf_per_w_ratio'), '.3f'):>8}"
                if energy
                else ""
            )
        )
    if energy:
        lines.append(
            "Inf/W ×: inferences per joule (per watt-second) relative to the reference run: the paper's Table I "
            "third column; energy of the whole machine the source measures, over each run"
        )
    lines.append(
        "Δexp: change of the expected accuracy (each processed request's config at its whole-test-split "
        "accuracy; free of which images a run happened to process)"
    )
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
