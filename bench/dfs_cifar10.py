"""Dynamic Fractional Skipping (DFS) vs SkipNet vs edgeskip's weightless configs on CIFAR-10 ResNet-20 (#14 items 4-5).

1. **What each DFS option costs when deployed.** The DFS graph (one switch per gated block over skip / 8-bit /
   16-bit / full) with its gate forced to one option everywhere, timed interleaved with the original network's
   static graph, batch 1, one thread (the forced option nested outermost): onnxruntime with the 8-bit option as ``ConvInteger`` (a real integer kernel),
   as Q/DQ around a float ``Conv`` (no integer kernel) and in the ``qlinear`` form (BatchNorm folded, int8 weights,
   which onnxruntime fuses into ``QLinearConv``, its fast int8 kernel), and IREE llvm-cpu host (modules imported
   from the ConvInteger and from the qlinear graph). DFS's cost model says an 8-bit block costs (8/32)^2 = 6% of a full one, a 16-bit one 25%.
2. **Each DFS checkpoint** (one per cp target): test accuracy and computation percentage in PyTorch; the deployed
   graph on onnxruntime over the whole test split, in the ``integer`` and the ``qlinear`` form (accuracy as
   deployed, options chosen), per-input batch-1 latency on the first ``--images`` test images interleaved with the original (median of ``--rounds``), and its
   spread.
3. **One figure**: test accuracy vs computation percentage (DFS's definition: gated blocks' cost, k-bit at
   (k/32)^2; skipped 0) and vs measured latency relative to the original, for DFS, SkipNet (bench/results/
   skipnet_r20.json) and edgeskip's weightless configs (skip-only and fractional fronts of
   bench/results/fractional_front.json, whose int8 blocks count (8/32)^2 like DFS's).

    python bench/dfs_cifar10.py --dfs bench/work/r20_dfs_cp0.2.pt --dfs bench/work/r20_dfs_cp0.4.pt \\
        --dfs bench/work/r20_dfs_cp0.6.pt --dfs bench/work/r20_dfs_cp0.8.pt --original bench/checkpoints/r20_plain.pt \\
        --out bench/results
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgeskip.backends.iree import IreeSkipNet, SharedIreeExecutor  # noqa: E402
from edgeskip.backends.ort import ort_session  # noqa: E402
from edgeskip.data.batches import iterate  # noqa: E402
from edgeskip.export.dfs_graph import (
    calibrate_dfs,
    export_dfs,
    graph_reference,
    switch_order,  # noqa: E402
    verify_dfs_onnx,
)
from edgeskip.export.iree_compile import TARGETS, compile_mlir, import_onnx  # noqa: E402
from edgeskip.export.onnx_export import export_static  # noqa: E402
from edgeskip.export.shared_weights import build_shared_modules, rename_module  # noqa: E402
from edgeskip.pareto.design import calibration_batches  # noqa: E402
from edgeskip.pareto.latency import interleaved_median  # noqa: E402
from edgeskip.train import evaluate, load_checkpoint  # noqa: E402
from edgeskip.train.gates import evaluate_dfs  # noqa: E402
from edgeskip.utils.atomic import write_json, write_with  # noqa: E402

OPTION_NAMES = {0: "skip", 8: "8-bit", 16: "16-bit", 32: "full"}


def spread(lat: np.ndarray) -> dict[str, float]:
    return {
        "mean_ms": 1e3 * lat.mean(),
        "p50_ms": 1e3 * np.median(lat),
        "p1_ms": 1e3 * np.percentile(lat, 1),
        "p99_ms": 1e3 * np.percentile(lat, 99),
        "max_over_min": float(lat.max() / lat.min()),
        "p99_over_p1": float(np.percentile(lat, 99) / np.percentile(lat, 1)),
    }


def compile_iree(onnx_path: Path, work: Path, name: str) -> IreeSkipNet:
    weights = work / f"{name}.irpa"
    mlir = import_onnx(onnx_path, work / f"{name}.mlir", params=weights)
    rename_module(mlir, "dfs")
    return IreeSkipNet(weights, compile_mlir(mlir, TARGETS["host"], work / f"{name}.vmfb"))


def forced(model, option: int):
    """A copy of ``model`` whose gate picks ``option`` for every block and input."""
    m = copy.deepcopy(model)
    n = len(m.gate_cfg.options)
    with torch.no_grad():
        m.gate_core.out.weight.zero_()
        m.gate_core.out.bias.copy_(torch.nn.functional.one_hot(torch.tensor(option), n).float() * 1e4)
    return m.eval()


def weightless_points(path: Path) -> dict:
    """edgeskip's configs from the fractional-depth benchmark: cp under DFS's definition (int8 = (8/32)^2)."""
    d = json.loads(path.read_text())
    cands = d["candidates"]

    def point(c):
        cost = {0: 0.0, 1: 1.0, 8: (8 / 32) ** 2}
        return {
            "options": c["options"],
            "test_accuracy": c["test_accuracy"],
            "val_accuracy": c["val_accuracy"],
            "cp": float(np.mean([cost[o] for o in c["options"]])),
            "executed_fraction": float(np.mean([o != 0 for o in c["options"]])),
            "latency_vs_full": c["latency_s"] / d["full_latency_s"],
        }

    return {
        "source": str(path),
        "checkpoint": d["checkpoint"],
        "latency_source": d["latency_source"],
        "skip_front": [point(cands[i]) for i in d["skip_front"]],
        "fractional_front": [point(cands[i]) for i in d["front"]],
    }


def skipnet_points(path: Path, num_gates: int) -> dict:
    d = json.loads(path.read_text())
    out = {
        "source": str(path),
        "backend": d["backend"],
        "original_test_accuracy": d["models"]["original"]["test_accuracy"],
        "models": {},
    }
    for name, m in d["models"].items():
        if name.startswith("skipnet"):
            out["models"][name] = {
                "test_accuracy": m["test_accuracy"],
                "mean_skipped": m["mean_skipped"],
                "cp": 1 - m["mean_skipped"] / num_gates,
                "latency_vs_original": m["latency_vs_original"],
            }
    return out


def plot(doc: dict, out: Path) -> None:
    """The figure (``--replot`` redraws it from the JSON)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    w = doc["weightless"]
    for key, style, label in (
        ("skip_front", "o-", "edgeskip skip-only front (SD backbone)"),
        ("fractional_front", "s-", "edgeskip fractional front (skip + int8)"),
    ):
        pts = w[key]  # fronts in latency: markers only here, where their order is not cp's
        a1.plot([p["cp"] for p in pts], [100 * p["test_accuracy"] for p in pts], style[0], ms=4, label=label)
        pts = sorted(w[key], key=lambda p: p["latency_vs_full"])
        a2.plot([p["latency_vs_full"] for p in pts], [100 * p["test_accuracy"] for p in pts], style, ms=4, label=label)
    models = doc["models"]
    ds = sorted(models.values(), key=lambda m: m["cp"])
    a1.plot([m["cp"] for m in ds], [100 * m["test_accuracy"] for m in ds], "D-", color="C3", label="DFS (cp targets)")
    a2.plot(
        [m["latency_vs_original"] for m in ds],
        [100 * m["deployed_test_accuracy"] for m in ds],
        "D-",
        color="C3",
        label="DFS, onnxruntime ConvInteger",
    )
    if all("qlinear" in m for m in ds):
        a2.plot(
            [m["qlinear"]["latency_vs_original"] for m in ds],
            [100 * m["qlinear"]["test_accuracy"] for m in ds],
            "D--",
            color="C1",
            label="DFS, onnxruntime QLinearConv (qlinear form)",
        )
    for m in ds:
        a1.annotate(f"{m['cp_target']:g}", (m["cp"], 100 * m["test_accuracy"]), fontsize=7)
    for name, m in doc["skipnet"]["models"].items():
        short = name.replace("skipnet rnn hrl (r20_hrl_rnn_", "SkipNet HRL ").replace("_e8)", ", 8 epochs")
        a1.plot(m["cp"], 100 * m["test_accuracy"], "^", ms=8, label=short)
        a2.plot(m["latency_vs_original"], 100 * m["test_accuracy"], "^", ms=8, label=f"{short} (IREE)")
    a1.plot(1.0, 100 * doc["original"]["test_accuracy"], "ks", label="original (conventional)")
    a2.plot(1.0, 100 * doc["original"]["test_accuracy"], "ks", label="original")
    a1.set_xlabel("computation percentage of the gated blocks (DFS: k-bit = (k/32)^2)")
    a2.set_xlabel("measured batch-1 latency / original's (same back end, 1 thread)")
    for a in (a1, a2):
        a.set_ylabel("test accuracy (%)")
        a.grid(alpha=0.3)
        a.legend(fontsize=6.5)
    a1.set_title("accuracy vs DFS's computation model", fontsize=9)
    a2.set_title("accuracy vs measured latency", fontsize=9)
    fig.tight_layout()
    write_with(out / "dfs_r20.png", lambda p: fig.savefig(p, dpi=110, format="png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dfs", action="append", help="DFS checkpoint (repeatable)")
    ap.add_argument("--original", help="the backbone the DFS models started from")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from --out's dfs_r20.json")
    ap.add_argument(
        "--skipnet",
        default="bench/results/skipnet_hrl_r20_e8.json",
        help="SkipNet results (skipnet_cifar10.py) on the same backbone",
    )
    ap.add_argument("--fractional", default="bench/results/fractional_front.json")
    ap.add_argument("--images", type=int, default=500, help="test images timed one by one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=200, help="rounds of the per-option table")
    ap.add_argument(
        "--calibration-images",
        type=int,
        default=512,
        help="training images that calibrate the qlinear form (as compile's --calibration-images)",
    )
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    if args.replot:  # redraw; the SkipNet and weightless points are re-read (they are other benchmarks' results)
        doc = json.loads((Path(args.out) / "dfs_r20.json").read_text())
        doc["skipnet"] = skipnet_points(Path(args.skipnet), len(doc["models"]["dfs cp 0.2"]["skip_rate_per_gate"]))
        doc["weightless"] = weightless_points(Path(args.fractional))
        doc["replot_command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        write_json(Path(args.out) / "dfs_r20.json", doc)
        plot(doc, Path(args.out))
        return
    if not args.dfs or not args.original:
        ap.error("--dfs and --original are required")
    torch.set_num_threads(1)
    t_start = time.time()

    orig_ck = load_checkpoint(args.original)
    splits = orig_ck.data.load()
    splits.norm = orig_ck.norm
    original = orig_ck.model()
    cfg = original.cfg
    xs = np.concatenate([x.numpy() for x, _ in iterate(splits.test, splits.norm, 500)]).astype(np.float32)
    ys = np.concatenate([y.numpy() for _, y in iterate(splits.test, splits.norm, 500)])
    doc: dict = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": 1,
        "batch": 1,
        "test_images": len(xs),
        "original": {"checkpoint": args.original, "test_accuracy": evaluate(original, splits.test, splits.norm)},
    }
    dfs_cks = [load_checkpoint(p) for p in args.dfs]
    for p, ck in zip(args.dfs, dfs_cks):
        if ck.dataset_id != orig_ck.dataset_id or ck.gate_cfg is None or ck.gate_cfg.kind != "dfs":
            sys.exit(f"{p} is not a DFS checkpoint on the original's data")
    bits = dfs_cks[0].gate_cfg.options
    # the qlinear form's one calibrated range (the second convolution's output): the seeded training images
    # `edgeskip compile` calibrates on
    calib = calibration_batches(splits, args.calibration_images)
    doc["calibration_images"] = sum(len(x) for x in calib)
    forms = ("integer", "qdq", "qlinear")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        orig_onnx = export_static(original, [1] * cfg.num_gates, work / "original.onnx")
        orig_sess = ort_session(orig_onnx, threads=1)
        full = build_shared_modules(original, [[1] * cfg.num_gates], TARGETS["host"], work / "orig", work / "ow")
        orig_iree = SharedIreeExecutor(full.weights, full.modules)
        x0 = xs[:1]

        # 1. per-option cost, as deployed
        print("per-option table: exporting and compiling the forced graphs ...", flush=True)
        runners, names = (
            [lambda: orig_sess.run(None, {"image": x0}), lambda: orig_iree.run(0, x0)],
            ["original onnxruntime", "original iree"],
        )
        iree_errors = {}
        for o, b in enumerate(bits):
            m = forced(dfs_cks[0].model(), o)
            order = switch_order([float(k == o) for k in range(len(bits))])  # the forced option outermost
            cal = calibrate_dfs(m, calib)
            for form in forms:
                path = export_dfs(m, work / f"forced{o}_{form}.onnx", int8=form, order=order, calibration=cal)
                sess = ort_session(path, threads=1)
                runners.append(lambda s=sess: s.run(None, {"image": x0}))
                names.append(f"{OPTION_NAMES[b]} onnxruntime {form}")
                if form in ("integer", "qlinear"):
                    suffix = "" if form == "integer" else " qlinear"
                    try:
                        mod = compile_iree(path, work, f"forced{o}_{form}")
                        runners.append(lambda mod=mod: mod.run(x0))
                        names.append(f"{OPTION_NAMES[b]} iree{suffix}")
                    except Exception as e:  # noqa: BLE001 - recorded in the report
                        iree_errors[f"{OPTION_NAMES[b]}{suffix}"] = str(e).splitlines()[0][:300]
        print("timing the per-option table ...", flush=True)
        med = dict(zip(names, interleaved_median(runners, args.repeats, 5)))
        table = {}
        for b in bits:
            row = {"dfs_cost_model": (b / 32) ** 2}
            for be, ref in [(f"onnxruntime {f}", "onnxruntime") for f in forms] + [
                ("iree", "iree"),
                ("iree qlinear", "iree"),
            ]:
                key = f"{OPTION_NAMES[b]} {be}"
                if key in med:
                    full_key = f"full {be}"
                    skip_key = f"skip {be}"
                    row[be] = {
                        "latency_s": med[key],
                        "vs_original": med[key] / med[f"original {ref}"],
                        # the gated blocks' share: (t(option) - t(all skip)) / (t(all full) - t(all skip))
                        "block_cost_vs_full": (med[key] - med[skip_key]) / (med[full_key] - med[skip_key]),
                    }
            table[OPTION_NAMES[b]] = row
        doc["per_option"] = {
            "latency_s": med,
            "table": table,
            "iree_errors": iree_errors,
            "forced_from": args.dfs[0],
            "repeats": args.repeats,
        }

        # 2. each DFS checkpoint
        models = {}
        for path, ck in zip(args.dfs, dfs_cks):
            name = f"dfs cp {ck.gate_training['cp_target']:g}"
            print(f"{name}: evaluating, exporting, timing ...", flush=True)
            model = ck.model()
            st = evaluate_dfs(model, splits.test, splits.norm)
            order = switch_order(evaluate_dfs(model, splits.val, splits.norm).option_rates)  # as `compile` nests them
            cal = calibrate_dfs(model, calib)
            sessions, deployed = {}, {}
            for form in ("integer", "qlinear"):
                onnx_path = export_dfs(
                    model, work / f"{name.replace(' ', '_')}_{form}.onnx", int8=form, order=order, calibration=cal
                )
                check = verify_dfs_onnx(
                    model,
                    torch.from_numpy(xs[:64]),
                    onnx_path,
                    reference=graph_reference(model, order, cal if form == "qlinear" else None),
                )
                sess = sessions[form] = ort_session(onnx_path, threads=1)
                pred, opts = [], []
                for x in xs:
                    logits, options = sess.run(None, {"image": x[None]})
                    pred.append(int(np.argmax(logits)))
                    opts.append(np.asarray(options))
                opts = np.stack(opts)
                deployed[form] = {
                    "test_accuracy": float(np.mean(np.array(pred) == ys)),
                    "onnx_check": check,
                    "option_rates": {OPTION_NAMES[b]: float((opts == o).mean()) for o, b in enumerate(bits)},
                }
            n = min(args.images, len(xs))
            runs = [orig_sess, sessions["integer"], sessions["qlinear"]]
            lat = np.zeros((len(runs), args.rounds, n))
            for r in range(args.rounds):
                for i in range(n):  # input by input, the original and both DFS forms in turn: the same conditions
                    for k, s in enumerate(runs):
                        t = time.perf_counter()
                        s.run(None, {"image": xs[i : i + 1]})
                        lat[k, r, i] = time.perf_counter() - t
            per_input = np.median(lat, 1)
            for k, form in ((1, "integer"), (2, "qlinear")):
                deployed[form].update(
                    latency_vs_original=float(per_input[k].mean() / per_input[0].mean()), latency=spread(per_input[k])
                )
            models[name] = {
                "checkpoint": path,
                "cp_target": ck.gate_training["cp_target"],
                "training": ck.gate_training,
                "history": ck.history,
                "test_accuracy": st.accuracy,
                "cp": st.mean_cp,
                "mean_skipped": st.mean_skipped,
                "option_rates": dict(zip([OPTION_NAMES[b] for b in bits], st.option_rates)),
                "skip_rate_per_gate": st.skip_rate_per_gate,
                "mean_macs": st.mean_macs,
                # the integer (ConvInteger) form, the exact DFS arithmetic, under the keys of earlier runs
                "deployed_test_accuracy": deployed["integer"]["test_accuracy"],
                "deployed_option_rates": deployed["integer"]["option_rates"],
                "onnx_check": deployed["integer"]["onnx_check"],
                "switch_order": [OPTION_NAMES[bits[o]] for o in order],
                "latency_vs_original": deployed["integer"]["latency_vs_original"],
                "latency": deployed["integer"]["latency"],
                "original_latency": spread(per_input[0]),
                "qlinear": deployed["qlinear"],
            }
        doc["models"] = models
    doc["skipnet"] = skipnet_points(Path(args.skipnet), cfg.num_gates)
    doc["weightless"] = weightless_points(Path(args.fractional))
    doc["seconds"] = round(time.time() - t_start, 1)
    out = Path(args.out)
    write_json(out / "dfs_r20.json", doc)

    plot(doc, out)

    print("\nper option (forced everywhere; block cost = share of the gated blocks' full-precision time):")
    for opt, row in table.items():
        cells = [
            f"{be}: x{v['vs_original']:.2f} of original, block cost {v['block_cost_vs_full']:.2f}"
            for be, v in row.items()
            if isinstance(v, dict)
        ]
        print(f"  {opt:<7} DFS model {row['dfs_cost_model']:.3f}  " + "; ".join(cells))
    if iree_errors:
        print("  IREE failed:", iree_errors)
    for name, m in models.items():
        print(
            f"{name:<12} acc {100 * m['test_accuracy']:.2f}% (deployed {100 * m['deployed_test_accuracy']:.2f}%)  "
            f"cp {m['cp']:.3f}  skipped {m['mean_skipped']:.2f}  options "
            + " ".join(f"{k} {v:.2f}" for k, v in m["option_rates"].items())
            + f"  latency x{m['latency_vs_original']:.3f} of original  p99/p1 {m['latency']['p99_over_p1']:.2f}"
            + f"  | qlinear acc {100 * m['qlinear']['test_accuracy']:.2f}% latency x{m['qlinear']['latency_vs_original']:.3f}"
        )
    print(f"original acc {100 * doc['original']['test_accuracy']:.2f}%; {doc['seconds']:.0f} s")


if __name__ == "__main__":
    main()
