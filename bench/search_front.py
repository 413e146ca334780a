"""Searched fronts against the sensitivity ranking (issue #34): greedy, beam (several widths) and exhaustive.

Each search runs on validation accuracy through ``design_space`` (the code ``edgeskip pareto --search`` runs); its
best array at each N is then measured on the whole test split, and where a random band exists (bench/README §1.1,
``--band-cache``) on the band's test images too, against the band's best of 500 random arrays. ``--exhaustive``
(small models: ResNet-20 has 64 arrays) adds the check that each search finds every point of the true validation
front (accuracy vs MACs over all 2^B_s arrays).

    python bench/search_front.py --checkpoint bench/checkpoints/r20_sd.pt --data-dir ../shared/datasets/cifar10-jpeg \
        --widths 1,2,4 --exhaustive --out bench/results --name search_r20_sd
    python bench/search_front.py --checkpoint bench/checkpoints/r56_sd.pt --data-dir ../shared/datasets/cifar10-jpeg \
        --widths 1,4 --screen-images 1000 --band-cache bench/checkpoints --band-images 500 --out bench/results --name search_r56_sd
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd_vs_plain import band_test_set, load  # noqa: E402

from edgeskip import __version__  # noqa: E402
from edgeskip.pareto.design import design_space  # noqa: E402
from edgeskip.pareto.evaluate import evaluate_skip_arrays  # noqa: E402
from edgeskip.pareto.search import SearchSpec  # noqa: E402
from edgeskip.utils.atomic import write_json, write_with  # noqa: E402
from edgeskip.utils.hashing import file_digest  # noqa: E402


def run_search(model, splits, ck, spec: SearchSpec) -> dict:
    t0 = time.perf_counter()
    sens, front = design_space(model, splits, ck.dataset_id, latency=None, search=spec, rankings=("sensitivity",))
    seconds = time.perf_counter() - t0
    name = "sensitivity" if spec.method == "greedy" else spec.method
    return {
        "search": front["search"],
        "seconds": seconds,
        "curve": sens["curves"][name],  # best array per N: val (selection) and test accuracy
        "candidates": [
            {k: c[k] for k in ("skip", "n_skipped", "val_accuracy", "test_accuracy", "macs", "pareto")}
            for c in front["candidates"]
        ],
    }


def label(spec: SearchSpec) -> str:
    if spec.method != "beam":
        return spec.method
    screen = "auto" if spec.screen_images is None else spec.screen_images
    return f"beam-{spec.beam_width}" + (f"/screen-{screen}" if screen else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--widths", default="1,4", help="beam widths, comma-separated")
    ap.add_argument("--budget", type=int, default=None, help="evaluation budget of each beam search")
    ap.add_argument(
        "--screen-images",
        default="0",
        help="beam: screen each level on this many val images first (0: off; auto: the CLI's default); "
        "comma-separated values give one run per width and value",
    )
    ap.add_argument("--exhaustive", action="store_true", help="also all 2^B_s arrays (the true front)")
    ap.add_argument("--band-cache", type=Path, default=None, help="folder of <checkpoint>.band.json (sd_vs_plain)")
    ap.add_argument("--band-images", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--name", default="search_front")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ck, model, splits = load(args.checkpoint, {}, args.data_dir)
    model.eval()
    g = ck.model_cfg.num_gates
    screens = [None if v == "auto" else int(v) for v in args.screen_images.split(",") if v]
    specs = [SearchSpec("greedy")] + [
        SearchSpec("beam", int(w), args.budget, screen) for w in args.widths.split(",") if w for screen in screens
    ]
    if args.exhaustive:
        specs.append(SearchSpec("exhaustive"))
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / f"{args.name}.partial.json"  # each finished run, so an interrupted command continues
    digest = file_digest(args.checkpoint)
    done = json.loads(partial.read_text()) if partial.exists() else {}
    runs = done.get("runs", {}) if done.get("checkpoint_sha256") == digest else {}
    for spec in specs:
        if label(spec) in runs:
            continue
        runs[label(spec)] = r = run_search(model, splits, ck, spec)
        ev = r["search"].get("evaluated", 0)
        print(
            f"{label(spec):>11}: {r['seconds']:7.1f} s, {ev} arrays evaluated  test by N: "
            + " ".join(f"{100 * c['test_accuracy']:.1f}" for c in r["curve"]),
            flush=True,
        )
        write_json(partial, {"checkpoint_sha256": digest, "runs": runs})
    runs = {label(spec): runs[label(spec)] for spec in specs}

    band = None
    if args.band_cache is not None:
        cache = args.band_cache / f"{args.checkpoint.stem}.band.json"
        stored = json.loads(cache.read_text())
        if stored["key"]["checkpoint_sha256"] != file_digest(args.checkpoint):
            raise SystemExit(f"{cache} belongs to another checkpoint")
        band = stored["band"]
        images = band_test_set(splits, stored["key"]["band_images"], stored["key"]["seed"])
        for r in runs.values():
            arrays = [tuple(k not in c["skipped_gates"] for k in range(g)) for c in r["curve"]]
            r["band_images_accuracy"] = evaluate_skip_arrays(model, images, splits.norm, arrays)
            r["below_band_best"] = [b["max"] - a for a, b in zip(r["band_images_accuracy"], band)]

    truth = None
    if "exhaustive" in runs:  # the true validation front: strictly non-dominated over all 2^g arrays
        truth = [c["skip"] for c in runs["exhaustive"]["candidates"] if c["pareto"]]
        for r in runs.values():
            mine = [c["skip"] for c in r["candidates"]]
            r["true_front_found"] = sum(s in mine for s in truth)
            r["true_front_points"] = len(truth)

    doc = {
        "command": "python " + shlex.join(sys.argv),
        "edgeskip_version": __version__,
        "host": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": digest,
        "num_gates": g,
        "num_val": len(splits.val),
        "num_test": len(splits.test),
        "runs": runs,
        "band": band,
    }
    write_json(args.out / f"{args.name}.json", doc)
    plot(doc, args.out / f"{args.name}.png", f"{ck.model_cfg.name} ({g} gated blocks): searches on validation")
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out / args.name}.json and .png")


def plot(doc: dict, dest: Path, title: str) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    for name, r in doc["runs"].items():
        n = [c["n_skipped"] for c in r["curve"]]
        ax1.plot(n, [100 * c["test_accuracy"] for c in r["curve"]], "-o", ms=3, label=f"{name} (test)")
        if "band_images_accuracy" in r:
            ax2.plot(n, [100 * a for a in r["band_images_accuracy"]], "-o", ms=3, label=name)
    if doc["band"]:
        b = doc["band"]
        x = [row["n_skipped"] for row in b]
        ax2.fill_between(
            x,
            [100 * row["min"] for row in b],
            [100 * row["max"] for row in b],
            color="0.5",
            alpha=0.2,
            label="500 random arrays: min-max",
        )
        ax2.plot(x, [100 * row["max"] for row in b], ":", color="k", label="best random array")
        ax2.set_title(f"on the band's {b[0]['test_images']} test images")
    else:
        for name, r in doc["runs"].items():
            ax2.plot(
                [c["macs"] / 1e6 for c in r["candidates"]],
                [100 * c["val_accuracy"] for c in r["candidates"]],
                "o",
                ms=4,
                label=f"{name} candidates (val)",
            )
        ax2.set_xlabel("MMACs")
        ax2.set_title("candidates: validation accuracy vs MACs")
    ax1.set_title(title)
    ax1.set_xlabel("skipped blocks (best array per N, chosen on validation)")
    for ax in (ax1, ax2):
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if doc["band"]:
        ax2.set_xlabel("skipped blocks")
    fig.tight_layout()
    write_with(dest, lambda p: fig.savefig(p, dpi=110, format="png"))


if __name__ == "__main__":
    main()
