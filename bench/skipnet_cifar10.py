"""SkipNet vs the original network vs edgeskip configs on CIFAR-10 ResNet-20, one process, batch 1.

For every SkipNet checkpoint given (e.g. SP and HRL), on the test split of the backbone's data:
- accuracy, mean skipped blocks, mean MACs including the gates (PyTorch, whole test split);
- per-input batch-1 latency on this host with IREE (llvm-cpu, local-sync; the SkipNet module has one
  If per gate and every gate runs), measured interleaved with the original network (static, no gates)
  and with every Pareto config of an edgeskip bundle, input by input (median of --rounds passes);
- the spread of per-input latency (max/min, p99/p1) -- the paper's predictability argument.

    python bench/skipnet_cifar10.py --skipnet bench/work/r20_skipnet_sp.pt --skipnet bench/work/r20_skipnet_hrl.pt \
        --original bench/work/r20_plain.pt --edgeskip bench/work/bundle_r20_sd --out bench/results
"""

from __future__ import annotations

import argparse
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
from edgeskip.data.batches import iterate  # noqa: E402
from edgeskip.export.iree_compile import TARGETS, compile_mlir, import_onnx  # noqa: E402
from edgeskip.export.shared_weights import (  # noqa: E402
    build_shared_modules,
    merge_modules,
    module_name,
    rename_module,
)
from edgeskip.export.skipnet_graph import export_skipnet, verify_skipnet_onnx  # noqa: E402
from edgeskip.manifest import load_manifest  # noqa: E402
from edgeskip.models import macs  # noqa: E402
from edgeskip.train import evaluate, load_checkpoint  # noqa: E402
from edgeskip.train.gates import evaluate_gated  # noqa: E402
from edgeskip.utils.atomic import write_json, write_with  # noqa: E402


def stats(lat: np.ndarray) -> dict[str, float]:
    return {
        "mean_ms": 1e3 * lat.mean(),
        "p50_ms": 1e3 * np.median(lat),
        "p1_ms": 1e3 * np.percentile(lat, 1),
        "p99_ms": 1e3 * np.percentile(lat, 99),
        "min_ms": 1e3 * lat.min(),
        "max_ms": 1e3 * lat.max(),
        "max_over_min": float(lat.max() / lat.min()),
        "p99_over_p1": float(np.percentile(lat, 99) / np.percentile(lat, 1)),
    }


def compile_skipnet(model, work: Path, name: str) -> tuple[IreeSkipNet, Path]:
    onnx_path = export_skipnet(model, work / f"{name}.onnx")
    weights = work / f"{name}.irpa"
    mlir = import_onnx(onnx_path, work / f"{name}.mlir", params=weights)
    rename_module(mlir, "skipnet")
    return IreeSkipNet(weights, compile_mlir(mlir, TARGETS["host"], work / f"{name}.vmfb")), onnx_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skipnet", action="append", required=True, help="SkipNet checkpoint (repeatable)")
    ap.add_argument("--original", required=True, help="the backbone the SkipNets started from")
    ap.add_argument("--edgeskip", help="an edgeskip bundle on the same data (its Pareto configs are timed alongside)")
    ap.add_argument("--images", type=int, default=1000, help="test images timed one by one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--name", default="skipnet_r20", help="results file stem (JSON + PNG)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    orig_ck = load_checkpoint(args.original)
    splits = orig_ck.data.load()
    splits.norm = orig_ck.norm
    original = orig_ck.model()
    doc: dict = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "images_timed": args.images,
        "rounds": args.rounds,
        "backend": "IREE llvm-cpu host, local-sync, batch 1",
        "test_images": len(splits.test),
    }
    models: dict[str, dict] = {
        "original": {
            "test_accuracy": evaluate(original, splits.test, splits.norm),
            "mean_skipped": 0.0,
            "mean_macs": macs(original.cfg),
        }
    }
    xs = np.concatenate([x.numpy() for x, _ in iterate(splits.test, splits.norm, 500)])[: args.images].astype(
        np.float32
    )
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        full = build_shared_modules(
            original, [[1] * original.cfg.num_gates], TARGETS["host"], work / "orig", work / "ow"
        )
        orig_ex = SharedIreeExecutor(full.weights, full.modules)
        runners["original"] = lambda x: orig_ex.run(0, x)
        # the edgeskip bundle's Pareto configs, as the runtime runs them: functions of one merged module
        es_configs = load_manifest(args.edgeskip).configs if args.edgeskip else []
        if es_configs:
            es_ck = load_checkpoint(Path(args.edgeskip) / "model.pt")
            if es_ck.dataset_id != orig_ck.dataset_id:
                sys.exit("edgeskip bundle and original are on different data")
            skips = [list(c.skip) for c in es_configs]
            sm = build_shared_modules(es_ck.model(), skips, TARGETS["host"], work / "es", work / "esw")
            names = [module_name(s) for s in skips]
            vmfb = compile_mlir(
                merge_modules(dict(zip(names, sm.mlir)), work / "es.mlir"), TARGETS["host"], work / "es.vmfb"
            )
            es_ex = SharedIreeExecutor(sm.weights, [vmfb], functions=names)
        for k, c in enumerate(es_configs):
            name = f"edgeskip config {k}"
            models[name] = {"test_accuracy": c.test_accuracy, "mean_skipped": float(c.n_skipped), "mean_macs": c.macs}
            runners[name] = lambda x, k=k: es_ex.run(k, x)
        decisions = {}
        for path in args.skipnet:
            ck = load_checkpoint(path)
            if ck.dataset_id != orig_ck.dataset_id:
                sys.exit(f"{path} is on different data")
            model = ck.model()
            name = f"skipnet {ck.gate_cfg.kind} {ck.gate_training.get('mode', '?')} ({Path(path).stem})"
            st = evaluate_gated(model, splits.test, splits.norm)
            mod, onnx_path = compile_skipnet(model, work, name.replace(" ", "_"))
            xb, _ = next(iterate(splits.test, splits.norm, 32))
            verify_skipnet_onnx(model, xb, onnx_path)
            models[name] = {
                "test_accuracy": st.accuracy,
                "mean_skipped": st.mean_skipped,
                "mean_macs": st.mean_macs,
                "skip_rate_per_gate": st.skip_rate_per_gate,
                "gate_kind": ck.gate_cfg.kind,
                "training": ck.gate_training,
                "history": ck.history,
            }
            runners[name] = mod.run
            decisions[name] = np.stack([mod.run(x[None])[1] for x in xs]).astype(bool)

        lat = {n: np.zeros((args.rounds, len(xs))) for n in runners}
        for w in range(5):  # warm-up
            for run in runners.values():
                run(xs[w][None])
        t0 = time.time()
        for r in range(args.rounds):
            for i, x in enumerate(xs):  # input by input, every model in turn: same conditions for all
                for n, run in runners.items():
                    s = time.perf_counter()
                    run(x[None])
                    lat[n][r, i] = time.perf_counter() - s
        doc["timing_seconds"] = time.time() - t0
    per_input = {n: np.median(v, 0) for n, v in lat.items()}
    base = per_input["original"].mean()
    for n, m in models.items():
        m["latency"] = stats(per_input[n])
        m["latency_vs_original"] = float(per_input[n].mean() / base)
        m["macs_vs_original"] = m["mean_macs"] / models["original"]["mean_macs"]
    for n, d in decisions.items():  # latency by number of executed blocks: does the gate's choice show in time?
        executed = d.sum(1)
        models[n]["latency_by_executed_blocks"] = {
            int(k): {"inputs": int((executed == k).sum()), "mean_ms": 1e3 * float(per_input[n][executed == k].mean())}
            for k in np.unique(executed)
        }
    doc["models"] = models
    out = Path(args.out)
    write_json(out / f"{args.name}.json", doc)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    es = [n for n in models if n.startswith("edgeskip")]
    a1.plot(
        [models[n]["latency"]["mean_ms"] for n in es],
        [100 * models[n]["test_accuracy"] for n in es],
        "o-",
        label="edgeskip configs (SD backbone)",
    )
    a1.plot(
        models["original"]["latency"]["mean_ms"],
        100 * models["original"]["test_accuracy"],
        "ks",
        label="original (conventional backbone)",
    )
    for n in decisions:
        a1.plot(models[n]["latency"]["mean_ms"], 100 * models[n]["test_accuracy"], "^", ms=9, label=n)
    a1.set_xlabel("mean batch-1 latency (ms, IREE host)")
    a1.set_ylabel("test accuracy (%)")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    names = ["original", *dict.fromkeys([*es[:1], *es[-1:]]), *decisions]
    a2.boxplot([1e3 * per_input[n] for n in names], whis=(1, 99), showfliers=True, flierprops={"ms": 2})
    a2.set_xticks(
        range(1, len(names) + 1),
        [n.replace("edgeskip ", "es ").replace("skipnet ", "SN ") for n in names],
        rotation=20,
        fontsize=7,
    )
    a2.set_ylabel("per-input latency (ms)")
    a2.set_title("spread of per-input latency (whiskers p1-p99)", fontsize=9)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    write_with(out / f"{args.name}.png", lambda p: fig.savefig(p, dpi=110, format="png"))
    for n, m in models.items():
        print(
            f"{n:<28} acc {100 * m['test_accuracy']:5.2f}%  skipped {m['mean_skipped']:.2f}  "
            f"MACs x{m['macs_vs_original']:.3f}  latency {m['latency']['mean_ms']:.3f} ms (x{m['latency_vs_original']:.3f})"
            f"  max/min {m['latency']['max_over_min']:.2f}  p99/p1 {m['latency']['p99_over_p1']:.2f}"
        )


if __name__ == "__main__":
    main()
