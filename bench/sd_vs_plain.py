"""Figure 1 of the paper: test accuracy vs number of skipped blocks, stochastic depth vs conventional.

For each model the blocks are ranked on *validation* data (sensitivity: each block skipped alone),
config N skips the N least important blocks, and test accuracy is recorded. Beside it, the
distribution over random skip configurations with N blocks skipped (``--random-configs`` distinct
arrays per N, or all of them where fewer exist; mean and min-max band, the paper's shaded area) and
the weight-L2 / random rankings. Writes ``NAME.{json,png}`` and slim copies of both checkpoints.

    python bench/sd_vs_plain.py --sd bench/work/r20_sd.pt --plain bench/work/r20_plain.pt --out bench/results

The band is the expensive part for deep models (ResNet-56, 500 arrays per N over 500 test images: 54 min on one
thread beside a training run, 32 min on 2 threads alone); the rankings are then re-measured on the same subset
(``curves_on_band_images``) to compare with the band like for like. ``--band-cache DIR`` keeps it per checkpoint, written
after every N, so an interrupted run continues;
``--only sd`` computes one model's band into the cache while the other model is still training:

    python bench/sd_vs_plain.py --only sd --sd bench/checkpoints/r56_sd.pt --band-cache bench/checkpoints \
        --band-images 500 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from edgeskip import __version__  # noqa: E402
from edgeskip.pareto.design import design_space  # noqa: E402
from edgeskip.pareto.evaluate import evaluate_skip_arrays  # noqa: E402
from edgeskip.pareto.front import candidates_from_order  # noqa: E402
from edgeskip.pareto.latency import TorchLatency  # noqa: E402
from edgeskip.pareto.search import GREEDY  # noqa: E402
from edgeskip.train import load_checkpoint  # noqa: E402
from edgeskip.utils.atomic import write_json, write_with  # noqa: E402
from edgeskip.utils.hashing import file_digest  # noqa: E402


def band_test_set(splits, images: int, seed: int = 0):
    """The test images the band is measured on: all of them, or a seeded subset of ``images``."""
    test = splits.test
    if 0 < images < len(test):
        test = test.subset(np.sort(np.random.default_rng(seed).choice(len(test), images, replace=False)))
    return test


def curves_on(model, test, norm, rankings: dict, num_gates: int) -> dict:
    """Each ranking's configs re-measured on ``test`` (the band's subset), so they compare with the band like
    for like: {ranking: [accuracy at N = 0, 1, ...]}. Configs the rankings share are evaluated once."""
    cands = {name: candidates_from_order(order, num_gates) for name, order in rankings.items()}
    distinct = sorted({s for cs in cands.values() for s in cs})
    acc = dict(zip(distinct, evaluate_skip_arrays(model, test, norm, distinct)))
    return {name: [acc[s] for s in cs] for name, cs in cands.items()}


def random_band(
    model,
    splits,
    num_gates: int,
    per_n: int,
    seed: int = 0,
    images: int = 0,
    cache: Path | None = None,
    cache_key: dict | None = None,
    max_n: int | None = None,
) -> list[dict]:
    """Test accuracy over random distinct skip arrays for each number of skipped blocks N.

    ``images`` > 0: on a seeded random subset of that many test images (deep models: 500 arrays per N over
    24 gates are ~11,000 evaluations per model, ~17 h of CPU each on the whole test split).
    ``cache``: a JSON file that holds each finished N (written atomically after every N) under ``cache_key``;
    a later call with the same key continues where an interrupted one stopped, on the same arrays and images (the
    arrays are drawn up front from the seed, and each N is evaluated on its own). A file under another key
    is ignored and replaced. ``max_n``: the band for N <= max_n only (the arrays are the same as without it).
    """
    rng = random.Random(seed)
    test = band_test_set(splits, images, seed)
    picks_by_n: list[list[tuple[int, ...]]] = []
    for n in range(num_gates + 1):
        if math.comb(num_gates, n) <= per_n:
            picks = [set(c) for c in itertools.combinations(range(num_gates), n)]
        else:
            seen: set[tuple[int, ...]] = set()
            while len(seen) < per_n:
                seen.add(tuple(sorted(rng.sample(range(num_gates), n))))
            picks = [set(c) for c in sorted(seen)]
        picks_by_n.append([tuple(0 if g in off else 1 for g in range(num_gates)) for off in picks])
    done: dict[int, dict] = {}
    if cache is not None and cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("key") == cache_key:
            done = {row["n_skipped"]: row for row in stored["band"]}
    band = []
    for n, arrays in enumerate(picks_by_n):
        if max_n is not None and n > max_n:
            break
        if n not in done:
            t0 = time.time()
            a = evaluate_skip_arrays(model, test, splits.norm, arrays)
            done[n] = {
                "n_skipped": n,
                "configs": len(a),
                "all_configs": len(a) == math.comb(num_gates, n),
                "test_images": len(test),
                "mean": statistics.fmean(a),
                "min": min(a),
                "max": max(a),
                "seconds": time.time() - t0,
            }
            if cache is not None:
                write_json(cache, {"key": cache_key, "band": [done[k] for k in sorted(done)]})
        band.append(done[n])
    return band


def load(path: Path, splits_cache: dict, data_dir: str | None = None, device: str = "cpu"):
    ck = load_checkpoint(path)
    if data_dir:  # the data where this machine keeps them (e.g. a device machine's unpacked copy)
        ck = dataclasses.replace(ck, data=dataclasses.replace(ck.data, data_dir=data_dir))
    key = (ck.data.name, ck.data.data_dir, ck.data.val_fraction, ck.data.seed)
    if key not in splits_cache:
        splits_cache[key] = ck.data.load()
    splits = splits_cache[key]
    splits.norm = ck.norm
    return ck, ck.model().to(device), splits


def band_of(
    path: Path, ck, model, splits, per_n: int, band_images: int, cache_dir: Path | None, max_n: int | None = None
) -> list[dict]:
    """The random-config band of one checkpoint, continued from ``cache_dir/<name>.band.json`` if given."""
    cache = None if cache_dir is None else cache_dir / f"{path.stem}.band.json"
    key = {"checkpoint_sha256": file_digest(path), "per_n": per_n, "band_images": band_images, "seed": 0}
    return random_band(
        model, splits, ck.model_cfg.num_gates, per_n, images=band_images, cache=cache, cache_key=key, max_n=max_n
    )


def summarize(
    path: Path,
    splits_cache: dict,
    per_n: int = 500,
    band_images: int = 0,
    cache_dir: Path | None = None,
    data_dir: str | None = None,
    max_n: int | None = None,
    band_only: bool = False,
) -> dict:
    ck, model, splits = load(path, splits_cache, data_dir)
    if band_only:  # no ranking (deep models on a CPU: hours), the band and the full-depth accuracy only
        return band_summary(path, ck, model, splits, per_n, band_images, cache_dir, max_n), ck
    t0 = time.time()
    sens, front = design_space(
        model, splits, ck.dataset_id, latency=TorchLatency(model, repeats=50, threads=1), search=GREEDY
    )
    curve = sens["curves"]["sensitivity"]
    analysis = time.time() - t0
    band = band_of(path, ck, model, splits, per_n, band_images, cache_dir, max_n)
    on_band = None
    if band_images:  # the band is on a subset: the rankings on the same images, to compare like for like
        on_band = curves_on(
            model, band_test_set(splits, band_images), splits.norm, sens["rankings"], ck.model_cfg.num_gates
        )
    return {
        **about(path, ck, band),
        "final_val_accuracy": sens["full_val_accuracy"],
        "full_test_accuracy": sens["full_test_accuracy"],
        "ranking": sens["rankings"]["sensitivity"],
        "blocks": sens["blocks"],
        "curve": curve,
        "curves_other_rankings": {k: v for k, v in sens["curves"].items() if k != "sensitivity"},
        "pareto": front["configs"],
        "latency_source": front["latency_source"],
        "analysis_seconds": analysis,
        **({"curves_on_band_images": on_band} if on_band is not None else {}),
    }, ck


def about(path: Path, ck, band: list[dict]) -> dict:
    """What every summary holds: the checkpoint, how it was trained, and its random band."""
    return {
        "checkpoint": str(path),
        "stochastic_depth": ck.model_cfg.sd_mode != "none",
        "model": ck.model_cfg.to_dict(),
        "train": ck.train_cfg.to_dict(),
        "epochs_done": ck.epoch,
        "train_hours": sum(h["seconds"] for h in ck.history) / 3600,
        # CPU seconds the band took, summed over N (also where parts of it came from --band-cache)
        "random_configs": band,
        "random_configs_seconds": sum(row["seconds"] for row in band),
        "random_configs_test_images": band[0]["test_images"],
    }


def band_summary(path: Path, ck, model, splits, per_n, band_images, cache_dir, max_n) -> dict:
    band = band_of(path, ck, model, splits, per_n, band_images, cache_dir, max_n)
    full = (True,) * ck.model_cfg.num_gates
    return {
        **about(path, ck, band),
        "final_val_accuracy": ck.history[-1]["val_acc"],
        "full_test_accuracy": evaluate_skip_arrays(model, splits.test, splits.norm, [full])[0],
        "curve": [],  # --band-only: no ranking
        "curves_other_rankings": {},
    }


def plot(results: dict, dest: Path, title: str) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5.6))
    for name, r in results.items():
        n = [c["n_skipped"] for c in r["curve"]]
        ax1.plot(n, [100 * c["test_accuracy"] for c in r["curve"]], "-o", label=f"{name} (test)" if n else None)
        color = ax1.lines[-1].get_color()
        b = r["random_configs"]
        subset = "curves_on_band_images" in r or not n
        on = f", {b[0]['test_images']} test images" if subset else ""
        ax1.fill_between(
            [c["n_skipped"] for c in b],
            [100 * c["min"] for c in b],
            [100 * c["max"] for c in b],
            color=color,
            alpha=0.15,
            label=f"{name}: random configs (min-max{on})",
        )
        ax1.plot(
            [c["n_skipped"] for c in b],
            [100 * c["mean"] for c in b],
            "--",
            color=color,
            alpha=0.7,
            label=f"{name}: random configs (mean{on})",
        )
        if "curves_on_band_images" in r:
            same = r["curves_on_band_images"]["sensitivity"]
            ax1.plot(
                range(len(same)),
                [100 * a for a in same],
                "-",
                lw=0.8,
                color=color,
                alpha=0.8,
                label=f"{name}: sensitivity ranking{on}",
            )
        for (rank_name, other), marker in zip(r["curves_other_rankings"].items(), "xs^"):
            ax1.plot(
                [c["n_skipped"] for c in other],
                [100 * c["test_accuracy"] for c in other],
                marker=marker,
                linestyle=":",
                lw=0.8,
                color=color,
                alpha=0.6,
                label=f"{name}: {rank_name} ranking",
            )
        if n:
            ax2.plot(
                [c["macs"] / 1e6 for c in r["curve"]], [100 * c["test_accuracy"] for c in r["curve"]], "-o", label=name
            )
        else:  # --band-only: the mean and the best random config against the model's own full depth
            x = [c["n_skipped"] for c in b]
            ax2.plot(x, [100 * (c["mean"] - b[0]["mean"]) for c in b], "-o", ms=3, color=color, label=f"{name}, mean")
            ax2.plot(x, [100 * (c["max"] - b[0]["mean"]) for c in b], ":", color=color, label=f"{name}, best")
            ax2.set_xlabel("skipped blocks (random configs)")
            ax2.set_ylabel("accuracy change vs its own full depth (pp)")
            ax2.set_title("degradation, each model against itself")
    ranked = any(r["curve"] for r in results.values())
    ax1.set_xlabel(
        "skipped blocks (least sensitive first, ranked on validation data)" if ranked else "skipped blocks (random)"
    )
    ax1.set_ylabel("top-1 accuracy (%)")
    ax1.set_title(title)
    ax1.grid(alpha=0.3)
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)  # below both panels
    if ranked:
        ax2.set_xlabel("MMACs per image")
        ax2.set_ylabel("test top-1 accuracy (%)")
        ax2.set_title("accuracy vs compute")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.036 * math.ceil(len(labels) / 2) + 0.04, 1, 1))
    write_with(dest, lambda p: fig.savefig(p, dpi=110, format="png", bbox_inches="tight"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd", type=Path, help="checkpoint trained with stochastic depth")
    ap.add_argument("--plain", type=Path, help="checkpoint trained without")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--name", default="cifar10_r20_sd_vs_plain")
    ap.add_argument("--slim", default="r20_sd.pt,r20_plain.pt", help="file names of the slim checkpoint copies")
    ap.add_argument("--random-configs", type=int, default=500, help="random skip arrays per number of skipped blocks")
    ap.add_argument(
        "--band-images",
        type=int,
        default=0,
        help="evaluate the random configs on a seeded subset of this many test images (0: all)",
    )
    ap.add_argument("--title", default="ResNet-20, CIFAR-10 (JPEG copy)")
    ap.add_argument(
        "--band-cache",
        type=Path,
        default=None,
        help="keep each model's band in DIR/<checkpoint name>.band.json, written after every N, so an "
        "interrupted run continues (keyed by the checkpoint's SHA-256 and the band settings)",
    )
    ap.add_argument(
        "--only",
        choices=("sd", "plain"),
        default=None,
        help="compute just this model's band into --band-cache and stop (e.g. while the other trains)",
    )
    ap.add_argument(
        "--band-max-n",
        type=int,
        default=None,
        help="the random band for N <= this only (deep models: e.g. the part a device run finished)",
    )
    ap.add_argument(
        "--band-only",
        action="store_true",
        help="no block ranking (ResNet-110 on 2 CPU threads: hours), only the random band and full-depth accuracy",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None, help="the checkpoints' data folder on this machine")
    ap.add_argument(
        "--device", default="cpu", help="with --only: compute the band on this torch device (cuda: fp32, no TF32)"
    )
    ap.add_argument("--replot", action="store_true", help="redraw OUT/NAME.png from OUT/NAME.json and stop")
    args = ap.parse_args(argv)
    if args.replot:
        doc = json.loads((args.out / f"{args.name}.json").read_text())
        plot(doc["results"], args.out / f"{args.name}.png", args.title)
        return
    torch.set_num_threads(args.threads)
    cache: dict = {}
    for flag in ("sd", "plain") if args.only is None else (args.only,):
        if getattr(args, flag) is None:
            ap.error(f"--{flag} is required" + (f" with --only {flag}" if args.only else ""))
    if args.only:
        if args.band_cache is None:
            ap.error("--only needs --band-cache")
        path = args.sd if args.only == "sd" else args.plain
        if args.device.startswith("cuda"):  # the same arithmetic as the CPU's, not TF32's 10-bit mantissa
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        ck, model, splits = load(path, cache, args.data_dir, args.device)
        band = band_of(path, ck, model, splits, args.random_configs, args.band_images, args.band_cache, args.band_max_n)
        print(
            f"{args.only}: band of {len(band)} N values in {args.band_cache / (path.stem + '.band.json')} "
            f"({sum(r['seconds'] for r in band):.0f} s of evaluation)"
        )
        return
    results, cks = {}, {}
    for name, path in (("stochastic depth", args.sd), ("conventional", args.plain)):
        results[name], cks[name] = summarize(
            path,
            cache,
            args.random_configs,
            args.band_images,
            args.band_cache,
            args.data_dir,
            args.band_max_n,
            args.band_only,
        )
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "edgeskip_version": __version__,
        "torch": torch.__version__,
        "host": platform.processor() or platform.machine(),
        "data_note": "CIFAR-10 JPEG re-encoding (../shared/datasets/cifar10-jpeg); figures can differ slightly from "
        "ones published on the original pickled batches",
        "selection_split": "val",
        "results": results,
    }
    write_json(args.out / f"{args.name}.json", doc)
    plot(results, args.out / f"{args.name}.png", args.title)
    slim_sd, slim_plain = args.slim.split(",")
    for name, ck in cks.items():
        ck.save(args.out / (slim_sd if name == "stochastic depth" else slim_plain), slim=True)
    for name, r in results.items():
        accs = " ".join(f"{100 * c['test_accuracy']:.1f}" for c in r["curve"])
        by = f"  by skipped blocks 0..{len(r['curve']) - 1}: {accs}" if accs else "  (no ranking: --band-only)"
        print(f"{name:>17}: full test {100 * r['full_test_accuracy']:.2f}%{by}")
        band = " ".join(
            f"{100 * c['mean']:.1f}[{100 * c['min']:.1f},{100 * c['max']:.1f}]" for c in r["random_configs"]
        )
        print(f"{'':>17}  random configs mean[min,max]: {band}  ({r['random_configs_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
