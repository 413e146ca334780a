"""Design-time flow on a trained model: sensitivity list, rankings, candidates, Pareto front.

Selection (rankings and the front) uses validation data only; test accuracy is reported alongside.
Output schemas: docs/formats.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip import __version__
from edgeskip.data.dataset import Splits
from edgeskip.errors import EdgeskipError
from edgeskip.models import BlockNet, macs
from edgeskip.models.cost import breakdown
from edgeskip.pareto.evaluate import evaluate_skip_arrays
from edgeskip.pareto.front import Point, candidates_from_order, front_with_anchor, non_dominated
from edgeskip.pareto.latency import LatencySource
from edgeskip.pareto.plot import plot_design_space
from edgeskip.pareto.ranking import RANKINGS, block_weight_l2, rank_blocks, single_skip_arrays
from edgeskip.pareto.search import DEFAULT, SearchResult, SearchSpec, beam_search, exhaustive_search
from edgeskip.utils.atomic import write_json
from edgeskip.utils.table import format_pareto_table

SENSITIVITY_FORMAT = "edgeskip-sensitivity"
PARETO_FORMAT = "edgeskip-pareto"
SCHEMA_VERSION = 1


def _skip_list(skip: Sequence[bool]) -> list[int]:
    return [int(s) for s in skip]


def design_space(
    model: BlockNet,
    splits: Splits,
    dataset_id: str,
    use: str = "sensitivity",
    rankings: Sequence[str] = RANKINGS,
    latency: LatencySource | None = None,
    seed: int = 0,
    batch_size: int = 500,
    search: SearchSpec = DEFAULT,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (sensitivity document, pareto document) for ``model``.

    ``search``: where the candidates come from. ``greedy``: config N skips the first N blocks of the ``use``
    ranking. ``beam`` / ``exhaustive`` (:mod:`edgeskip.pareto.search`): the front of validation accuracy vs MACs
    over every skip array the search evaluated."""
    if use not in rankings:
        raise EdgeskipError(f"ranking {use!r} must be one of the computed rankings {list(rankings)}")
    model.eval()
    cfg = model.cfg
    g = cfg.num_gates
    if g == 0:
        raise EdgeskipError(
            f"{cfg.name} has no skippable blocks" + (" (use depth >= 14)" if hasattr(cfg, "depth") else "")
        )
    search.check(g)
    full = tuple([True] * g)
    singles = single_skip_arrays(g)
    acc = evaluate_skip_arrays(model, splits.val, splits.norm, [full, *singles], batch_size)
    full_val, alone = acc[0], acc[1:]
    orders = {k: rank_blocks(k, model, alone, seed) for k in rankings}
    cands = {k: candidates_from_order(orders[k], g) for k in rankings}

    def mac_cost(s: tuple[bool, ...]) -> float:
        return float(macs(cfg, s))

    known = dict(zip([full, *singles], acc))
    found = _search(model, splits, search, known, mac_cost, batch_size)
    best = [] if found is None else found.best_per_n(mac_cost)
    searched = [] if found is None else [*found.candidates(mac_cost), *best]
    distinct = sorted({s for cs in cands.values() for s in cs} | set(searched))
    val = {**known, **(found.accuracy if found is not None else {})}
    todo = [s for s in distinct if s not in val]  # what neither the sensitivity list nor the search evaluated
    val.update(zip(todo, evaluate_skip_arrays(model, splits.val, splits.norm, todo, batch_size)))
    test = dict(zip(distinct, evaluate_skip_arrays(model, splits.test, splits.norm, distinct, batch_size)))
    cost = {s: macs(cfg, s) for s in distinct}

    bd = breakdown(cfg)
    l2 = block_weight_l2(model)
    blocks = [
        {
            "gate": k,
            "block": b,
            "module": cfg.gated_names[k],
            "accuracy_when_skipped": alone[k],
            "drop": full_val - alone[k],
            "weight_l2": l2[k],
            "macs": bd.blocks[b],
        }
        for k, b in enumerate(cfg.gated_blocks)
    ]
    curves = {
        kind: [
            {
                "n_skipped": i,
                "skipped_gates": orders[kind][:i],
                "val_accuracy": val[s],
                "test_accuracy": test[s],
                "macs": cost[s],
            }
            for i, s in enumerate(cands[kind])
        ]
        for kind in rankings
    }
    if found is not None:  # the search's best array at each N, beside the rankings
        curves[found.method] = [
            {
                "n_skipped": s.count(False),
                "skipped_gates": _skipped(s),
                "val_accuracy": val[s],
                "test_accuracy": test[s],
                "macs": cost[s],
            }
            for s in best
        ]
    common = {
        "edgeskip_version": __version__,
        "model": cfg.to_dict(),
        "dataset_id": dataset_id,
        "num_gates": g,
        "gated_blocks": list(cfg.gated_blocks),
    }
    sensitivity = {
        "format": SENSITIVITY_FORMAT,
        "version": SCHEMA_VERSION,
        **common,
        "selection_split": "val",
        "num_val": len(splits.val),
        "num_test": len(splits.test),
        "full_val_accuracy": full_val,
        "full_test_accuracy": test[full],
        "blocks": blocks,
        "rankings": orders,
        "random_seed": seed,
        "curves": curves,
    }

    chosen = cands[use] if found is None else found.candidates(mac_cost)
    lat = latency.measure(chosen) if latency is not None else None
    rows = []
    for i, s in enumerate(chosen):
        skipped = orders[use][:i] if found is None else _skipped(s)
        rows.append(
            {
                "n_skipped": len(skipped),
                "skip": _skip_list(s),
                "skipped_gates": skipped,
                "skipped_blocks": [cfg.gated_blocks[k] for k in skipped],
                "val_accuracy": val[s],
                "test_accuracy": test[s],
                "macs": cost[s],
                "latency_s": lat[i] if lat else None,
            }
        )
    cost_key = "latency_s" if lat else "macs"
    search_doc = search.to_dict()
    if found is not None:
        search_doc |= {
            "evaluated": found.evaluated,
            "evaluate_calls": found.evaluate_calls,
            "truncated_levels": found.truncated_levels,
            "screened": found.screened,
            "screened_on_images": search.screen_for(len(splits.val)),
            "seconds": found.seconds,
        }
    points = [Point(r["val_accuracy"], r[cost_key], r["n_skipped"]) for r in rows]
    strict = set(non_dominated(points))
    front = front_with_anchor(points)
    for i, r in enumerate(rows):
        r["pareto"] = i in strict  # strictly non-dominated; row 0 is in `configs` regardless (anchor)
    configs = [{"index": j, **rows[i]} for j, i in enumerate(front)]
    pareto = {
        "format": PARETO_FORMAT,
        "version": SCHEMA_VERSION,
        **common,
        "ranking": use,
        "search": search_doc,
        "cost": cost_key,
        "latency_source": latency.name if latency is not None else None,
        "full_macs": macs(cfg),
        "candidates": rows,
        "configs": configs,
    }
    return sensitivity, pareto


def _skipped(s: Sequence[bool]) -> list[int]:
    return [k for k, v in enumerate(s) if not v]


def _screen(model: BlockNet, splits: Splits, images: int, batch_size: int) -> Callable[[list], list[float]] | None:
    """Accuracy of skip or option arrays on ``images`` seeded-random validation images (None, no screening, unless
    0 < ``images`` < the split's size)."""
    if not 0 < images < len(splits.val):
        return None
    subset = splits.val.subset(np.sort(np.random.default_rng(0).choice(len(splits.val), images, replace=False)))
    return lambda arrays: evaluate_skip_arrays(model, subset, splits.norm, arrays, batch_size)


def _search(
    model: BlockNet,
    splits: Splits,
    search: SearchSpec,
    known: dict[tuple[bool, ...], float],
    cost: Callable[[tuple[bool, ...]], float],
    batch_size: int,
) -> SearchResult | None:
    """Run ``search`` on validation accuracy (``greedy``: nothing to search, None)."""
    if search.method == "greedy":
        return None
    g = model.cfg.num_gates

    def evaluate(arrays: list[tuple[bool, ...]]) -> list[float]:
        return evaluate_skip_arrays(model, splits.val, splits.norm, arrays, batch_size)

    screen = _screen(model, splits, search.screen_for(len(splits.val)), batch_size)

    t0 = time.perf_counter()
    if search.method == "beam":
        found = beam_search(g, evaluate, search.beam_width, search.budget, cost, known, screen)
    else:
        found = exhaustive_search(g, evaluate, search.budget, known)
    return found.timed(time.perf_counter() - t0)


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


FRACTIONAL_FORMAT = "edgeskip-fractional"


def calibration_batches(splits: Splits, images: int = 512, seed: int = 12345, batch_size: int = 64) -> list:
    """A seeded random subset of the *training* split (normalised, not augmented): int8 calibration data."""
    from edgeskip.data.batches import iterate

    if len(splits.train) == 0:
        raise EdgeskipError("int8 calibration needs training images; the training split is empty")
    out = []
    for xb, _ in iterate(splits.train, splits.norm, batch_size, shuffle=True, seed=seed):
        out.append(xb[: images - batch_size * len(out)])
        if batch_size * len(out) >= images:
            break
    return out


def fractional_space(
    model: BlockNet,
    splits: Splits,
    latency: LatencySource,
    skip_candidates: Sequence[Sequence[object]],
    seed: int = 0,
    batch_size: int = 500,
    screen_images: int = 0,
) -> dict[str, Any]:
    """The design space over {full, int8, skip} per gated block (``model`` must carry int8 variants:
    :meth:`CifarResNet.attach_int8`): probe configs measured to fit the latency model, the greedy path, the
    skip-only ``skip_candidates``; every candidate's validation accuracy and *measured* latency, interleaved in
    one run; the skip-only front and the fractional front (over all candidates), both selected on validation
    accuracy; the test accuracy of those fronts' configs, and their comparison. ``screen_images``: the walk screens each step's moves on that many validation
    images and evaluates the best :data:`~edgeskip.pareto.fractional.SCREEN_KEEP` on the whole split (0: all)."""
    from edgeskip.pareto.fractional import compare_fronts, fit_latency_model, greedy_walk, int8_twins, probe_configs
    from edgeskip.skip import INT8, REST8, SKIP, gates_of, has_rest, normalize_options, options_to_str

    cfg, g = model.cfg, model.cfg.num_gates
    missing = [b for b in cfg.gated_blocks if b not in model.int8]
    if missing:
        raise EdgeskipError(f"blocks {missing} have no int8 variant: calibrate the model first")
    rest = model.rest_modules() is not None  # the int8 rest (issue #34): one more axis
    model.eval()
    clock, seconds = time.perf_counter(), {}

    def lap(name: str) -> None:  # where the design space's time went (fractional.json "seconds")
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 1)
        clock = now

    probes = probe_configs(g, seed, rest=rest)
    fit = fit_latency_model(list(zip(probes, latency.measure(probes))), cfg.gated_blocks)
    lap("probes_latency")

    counts = {"evaluated": 0, "screened": 0}

    def val_acc(opts: list) -> list[float]:
        counts["evaluated"] += len(opts)
        return evaluate_skip_arrays(model, splits.val, splits.norm, opts, batch_size)

    rough = _screen(model, splits, screen_images, batch_size)
    screen = None
    if rough is not None:

        def screen(opts: list) -> list[float]:
            counts["screened"] += len(opts)
            return rough(opts)

    path = greedy_walk(g, val_acc, fit.predict, screen, rest=rest)
    lap("walk")
    walk = {**counts, "screen_images": screen_images if rough else 0, "seconds": seconds["walk"]}
    skip_only = [normalize_options(s, g) for s in skip_candidates]
    twins = int8_twins(skip_only, rest)
    cands = list(dict.fromkeys([*skip_only, *twins, *(s.options for s in path), *probes]))
    known = {s.options: s.val_accuracy for s in path}
    todo = [o for o in cands if o not in known]
    known.update(zip(todo, val_acc(todo)))
    val = [known[o] for o in cands]
    lap("candidates_val")
    lat = latency.measure(cands)
    lap("candidates_latency")
    bd = breakdown(cfg)
    rest_macs = bd.stem + bd.head + sum(bd.blocks[b] for b in model.block_ids if b not in set(cfg.gated_blocks))
    rows = []
    for i, o in enumerate(cands):
        rows.append(
            {
                "options": list(gates_of(o)),
                "int8_rest": has_rest(o),
                "n_skipped": o.count(SKIP),
                "n_int8": o.count(INT8),
                "skip_only": INT8 not in o and not has_rest(o),
                "source": "skip-only"
                if o in skip_only
                else "greedy"
                if any(s.options == o for s in path)
                else ("int8-twin" if o in twins else "probe"),
                "val_accuracy": val[i],
                "test_accuracy": None,  # below, after the fronts are chosen
                "macs": macs(cfg, o),
                "int8_macs": sum(bd.blocks[b] for b, v in zip(cfg.gated_blocks, o) if v == INT8)
                + (rest_macs if has_rest(o) else 0),
                "latency_s": lat[i],
                "latency_model_s": fit.predict(o),
            }
        )
    pts = [Point(r["val_accuracy"], r["latency_s"], r["n_skipped"]) for r in rows]
    full = cands.index((1,) * g)
    alone = {o: i for i, o in enumerate(cands)}
    blocks = []  # each gated block's options alone (the probes include them): the int8 sensitivity list
    for k, b in enumerate(cfg.gated_blocks):
        one = {name: alone[(1,) * k + (v,) + (1,) * (g - k - 1)] for name, v in (("int8", INT8), ("skip", SKIP))}
        blocks.append(
            {
                "gate": k,
                "block": b,
                **{f"val_accuracy_{n}": rows[i]["val_accuracy"] for n, i in one.items()},
                **{f"latency_s_{n}": rows[i]["latency_s"] for n, i in one.items()},
            }
        )
    skip_idx = [i for i, r in enumerate(rows) if r["skip_only"]]
    skip_front = [skip_idx[j] for j in front_with_anchor([pts[i] for i in skip_idx], skip_idx.index(full))]
    frac_front = front_with_anchor(pts, full)
    # test accuracy is reported, never used to choose: measured for every candidate, since the bundle carries them
    # all and a board's own front (edgeskip profile) may step through any of them (bench's expected accuracy)
    for row, acc in zip(rows, evaluate_skip_arrays(model, splits.test, splits.norm, cands, batch_size)):
        row["test_accuracy"] = acc
    lap("candidates_test")
    return {
        "format": FRACTIONAL_FORMAT,
        "version": SCHEMA_VERSION,
        "edgeskip_version": __version__,
        "model": cfg.to_dict(),
        "num_gates": g,
        "gated_blocks": list(cfg.gated_blocks),
        "options": {"0": "skip", "1": "full", "8": "int8"},
        "int8_rest": rest,  # the stem, ungated blocks and head are an int8 option too (each row's "int8_rest")
        "selection_split": "val",
        "latency_source": latency.name,
        "latency_model": {"coef": list(fit.coef), "r2": fit.r2, "probes": len(probes)},
        "full_val_accuracy": rows[full]["val_accuracy"],
        "full_latency_s": rows[full]["latency_s"],
        "blocks": blocks,
        "rest": None  # the rest in int8 alone
        if not rest
        else {k: rows[alone[(1,) * g + (REST8,)]][k] for k in ("val_accuracy", "latency_s")},
        "greedy_path": [options_to_str(s.options) for s in path],
        "walk": walk,
        "seconds": seconds,
        "candidates": rows,
        "skip_front": skip_front,
        "front": frac_front,
        "comparison": {
            split: compare_fronts(
                [(rows[i][f"{split}_accuracy"], rows[i]["latency_s"]) for i in skip_front],
                [(rows[i][f"{split}_accuracy"], rows[i]["latency_s"]) for i in frac_front],
            )
            for split in ("val", "test")
        },
    }
