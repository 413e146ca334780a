"""Design-time flow on a trained model: sensitivity list, rankings, candidates, Pareto front.

Selection (rankings and the front) uses validation data only; test accuracy is reported alongside.
Output schemas: docs/formats.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from edgeskip import __version__
from edgeskip.data.dataset import Splits
from edgeskip.errors import EdgeskipError
from edgeskip.models import CifarResNet, macs
from edgeskip.models.cost import breakdown
from edgeskip.pareto.evaluate import evaluate_skip_arrays
from edgeskip.pareto.front import Point, candidates_from_order, front_with_anchor, non_dominated
from edgeskip.pareto.latency import LatencySource
from edgeskip.pareto.plot import plot_design_space
from edgeskip.pareto.ranking import RANKINGS, block_weight_l2, rank_blocks, single_skip_arrays
from edgeskip.utils.atomic import write_json
from edgeskip.utils.table import format_pareto_table

SENSITIVITY_FORMAT = "edgeskip-sensitivity"
PARETO_FORMAT = "edgeskip-pareto"
SCHEMA_VERSION = 1


def _skip_list(skip: Sequence[bool]) -> list[int]:
    return [int(s) for s in skip]


def design_space(
    model: CifarResNet,
    splits: Splits,
    dataset_id: str,
    use: str = "sensitivity",
    rankings: Sequence[str] = RANKINGS,
    latency: LatencySource | None = None,
    seed: int = 0,
    batch_size: int = 500,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (sensitivity document, pareto document) for ``model``."""
    if use not in rankings:
        raise EdgeskipError(f"ranking {use!r} must be one of the computed rankings {list(rankings)}")
    model.eval()
    cfg = model.cfg
    g = cfg.num_gates
    if g == 0:
        raise EdgeskipError(f"ResNet-{cfg.depth} has no skippable blocks (use depth >= 14)")
    full = tuple([True] * g)
    singles = single_skip_arrays(g)
    acc = evaluate_skip_arrays(model, splits.val, splits.norm, [full, *singles], batch_size)
    full_val, alone = acc[0], acc[1:]
    orders = {k: rank_blocks(k, model, alone, seed) for k in rankings}
    cands = {k: candidates_from_order(orders[k], g) for k in rankings}

    distinct = sorted({s for cs in cands.values() for s in cs})
    val = dict(zip(distinct, evaluate_skip_arrays(model, splits.val, splits.norm, distinct, batch_size)))
    test = dict(zip(distinct, evaluate_skip_arrays(model, splits.test, splits.norm, distinct, batch_size)))
    cost = {s: macs(cfg, s) for s in distinct}

    bd = breakdown(cfg)
    l2 = block_weight_l2(model)
    n = cfg.blocks_per_stage
    blocks = [
        {"gate": k, "block": b, "stage": b // n, "accuracy_when_skipped": alone[k], "drop": full_val - alone[k],
         "weight_l2": l2[k], "macs": bd.blocks[b]}
        for k, b in enumerate(cfg.gated_blocks)
    ]
    curves = {
        kind: [{"n_skipped": i, "skipped_gates": orders[kind][:i], "val_accuracy": val[s], "test_accuracy": test[s],
                "macs": cost[s]} for i, s in enumerate(cands[kind])]
        for kind in rankings
    }
    common = {"edgeskip_version": __version__, "model": cfg.to_dict(), "dataset_id": dataset_id,
              "num_gates": g, "gated_blocks": list(cfg.gated_blocks)}
    sensitivity = {
        "format": SENSITIVITY_FORMAT, "version": SCHEMA_VERSION, **common,
        "selection_split": "val", "num_val": len(splits.val), "num_test": len(splits.test),
        "full_val_accuracy": full_val, "full_test_accuracy": test[full], "blocks": blocks,
        "rankings": orders, "random_seed": seed, "curves": curves,
    }

    chosen = cands[use]
    lat = latency.measure(chosen) if latency is not None else None
    rows = []
    for i, s in enumerate(chosen):
        skipped = orders[use][:i]
        rows.append({
            "n_skipped": i, "skip": _skip_list(s), "skipped_gates": skipped,
            "skipped_blocks": [cfg.gated_blocks[k] for k in skipped], "val_accuracy": val[s],
            "test_accuracy": test[s], "macs": cost[s], "latency_s": lat[i] if lat else None,
        })
    cost_key = "latency_s" if lat else "macs"
    points = [Point(r["val_accuracy"], r[cost_key], r["n_skipped"]) for r in rows]
    strict = set(non_dominated(points))
    front = front_with_anchor(points)
    for i, r in enumerate(rows):
        r["pareto"] = i in strict  # strictly non-dominated; row 0 is in `configs` regardless (anchor)
    configs = [{"index": j, **rows[i]} for j, i in enumerate(front)]
    pareto = {
        "format": PARETO_FORMAT, "version": SCHEMA_VERSION, **common, "ranking": use, "cost": cost_key,
        "latency_source": latency.name if latency is not None else None, "full_macs": macs(cfg),
        "candidates": rows, "configs": configs,
    }
    return sensitivity, pareto


def write_design(out_dir: str | os.PathLike, sensitivity: dict[str, Any], pareto: dict[str, Any]) -> list[Path]:
    """Write sensitivity.json, pareto.json and pareto.png into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    paths = [out / "sensitivity.json", out / "pareto.json", out / "pareto.png"]
    plot_design_space(sensitivity, pareto, paths[2])
    write_json(paths[0], sensitivity)
    write_json(paths[1], pareto)
    return paths


def format_table(pareto: dict[str, Any]) -> str:
    """Human-readable table of the Pareto configs."""
    return format_pareto_table(pareto["configs"], pareto["num_gates"], pareto["cost"] == "latency_s")
