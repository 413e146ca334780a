"""IREE against the best engine on the same graph, and where IREE's time goes (issue #30).

Side by side in one run, batch 1, one thread, the same image:
- runtime:   the edgeskip runtime's IREE path (``open_executor(bundle, backend="iree").infer``), the bundle's
             merged module (static functions channels-last, bench/README section 14);
- benchmark: ``iree-benchmark-module`` on the same .vmfb, function and archive (the compiled code alone: the
             floor of any binding);
- nchw:      the same static graphs compiled as bundles were before section 14 (ONNX's NCHW convolutions);
- ort:       onnxruntime (1 thread) on the bundle's static ONNX graph of that config.
For every config of a ResNet-20 bundle, then for torchvision MobileNetV2 (width 0.5, 32x32, 10 classes) and
ResNet-18 (224x224, 1000 classes) as whole static networks (random weights: the time does not depend on them),
compiled channels-last with and without data tiling and NCHW (``compile`` measures which is fastest on the host and
keeps it: bench/README sections 14.4, 14.5; ``runtime`` is then the fastest).

``--burst K``: each engine runs K calls in a row per round (the first not counted), the warm state of a daemon
serving one engine; 1 (the default) times every call right after the other engines' calls.

The per-call split (all-skip config): FunctionInvoker (IREE's convenience wrapper, what the runtime used
before) vs the runtime's direct VM invocation vs a bare ``VmContext.invoke`` on a pre-built input with no
result read; and the pieces (input buffer copy, result read).

    python bench/engines.py bench/work/r20 --rounds 300 --out bench/results
    python bench/engines.py bench/work/r20u --rounds 60 --burst 10 --out bench/results/engines_per_function

(the bundle: ``edgeskip compile --checkpoint bench/checkpoints/r20_sd.pt --dataset cifar10
--data-dir ../shared/datasets/cifar10-jpeg --target host --out bench/work/r20``). Nothing else may run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edgeskip.backends.iree import SharedIreeExecutor  # noqa: E402
from edgeskip.backends.ort import ort_session  # noqa: E402
from edgeskip.export.iree_compile import TARGETS, compile_mlir, import_onnx  # noqa: E402
from edgeskip.export.shared_weights import import_shared, merge_modules  # noqa: E402
from edgeskip.manifest import load_manifest  # noqa: E402
from edgeskip.pareto.latency import interleaved_median  # noqa: E402
from edgeskip.runtime.executor import open_executor  # noqa: E402
from edgeskip.utils.atomic import write_json, write_with  # noqa: E402


def benchmark_module(vmfb: Path, weights: Path, function: str, inputs: list[Path], reps: int) -> float:
    """Median seconds of ``iree-benchmark-module`` (local-sync, one call per iteration)."""
    cmd = [
        str(Path(sys.executable).parent / "iree-benchmark-module"),
        "--device=local-sync",
        f"--module={vmfb}",
        f"--parameters=model={weights}",
        f"--function={function}",
        *[f"--input=@{p}" for p in inputs],
        f"--benchmark_repetitions={reps}",
        "--benchmark_min_time=20x",
        "--benchmark_format=json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out[out.index("{") :])["benchmarks"]
    med = next(r for r in rows if r.get("aggregate_name") == "median")
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[med["time_unit"]]
    return med["real_time"] * scale


def front_ends_and_gated(bundle: Path, work: Path) -> SimpleNamespace:
    """A bundle's full-depth and all-skipped static graphs (its IREE front's first and last configs) and its gated
    graph (run with every other block skipped), imported as one merged module over a copy of its archive in
    ``work``: ``configs``, ``x``, ``skip``, ``feeds`` / ``files`` (onnxruntime's inputs / the .npy files per
    config), ``arch``, ``mlir``, and onnxruntime's ``sessions`` (1 thread) and reference logits ``refs``."""
    man = load_manifest(bundle)
    front = man.for_backend("iree").configs
    configs = [front[0].module, front[-1].module, "gated"]
    x = np.random.default_rng(0).standard_normal((1, *man.input.chw)).astype(np.float32)
    skip = np.array([k % 2 == 0 for k in range(man.num_gates)], dtype=bool)
    np.save(work / "x.npy", x)
    np.save(work / "skip.npy", skip)
    feeds = {c: {"image": x} for c in configs}
    feeds["gated"]["skip"] = skip
    files = {c: [work / "x.npy"] for c in configs}
    files["gated"].append(work / "skip.npy")
    arch = work / "w.irpa"
    arch.write_bytes((bundle / man.iree.weights).read_bytes())
    mlir = merge_modules({c: import_shared(bundle / man.onnx[c], arch, work, c) for c in configs}, work / "m.mlir")
    sessions = {c: ort_session(bundle / man.onnx[c], threads=1) for c in configs}
    refs = {c: sessions[c].run(None, feeds[c])[0] for c in configs}
    return SimpleNamespace(
        configs=configs, x=x, skip=skip, feeds=feeds, files=files, arch=arch, mlir=mlir, sessions=sessions, refs=refs
    )


def blocks_with_onnxruntime(
    vmfbs: dict[str, Path],
    weights: Path,
    configs: list[str],
    files: dict,
    sessions: dict,
    feeds: dict,
    blocks: int,
    reps: int,
) -> dict[str, dict[str, float]]:
    """Per config (a function of every module in ``vmfbs``), the median over ``blocks`` blocks of each module's
    ``iree-benchmark-module`` time and of onnxruntime's (``sessions[c]`` on ``feeds[c]``, 300 calls) in the
    same block: {config: {module name or "onnxruntime": seconds}}."""
    times: dict[str, dict[str, list[float]]] = {c: {n: [] for n in [*vmfbs, "onnxruntime"]} for c in configs}
    for _ in range(blocks):
        for c in configs:
            (ort,) = interleaved_median([lambda c=c: sessions[c].run(None, feeds[c])], 300, warmup=20)
            times[c]["onnxruntime"].append(ort)
            for n, vmfb in vmfbs.items():
                times[c][n].append(benchmark_module(vmfb, weights, c, files[c], reps))
    return {c: {n: float(np.median(t)) for n, t in by.items()} for c, by in times.items()}


def interleave(
    runners: dict[str, object], rounds: int, floors: dict[str, object], blocks: int = 3, burst: int = 1
) -> dict:
    """Python runners round-robin in ``blocks`` blocks; the benchmark-module floors between blocks (medians of
    the blocks' medians), so drift of the machine hits every column alike."""
    got: dict[str, list[float]] = {n: [] for n in [*runners, *floors]}
    names = list(runners)
    for _ in range(blocks):
        meds = interleaved_median([runners[n] for n in names], max(1, rounds // blocks), warmup=5, burst=burst)
        for n, m in zip(names, meds):
            got[n].append(m)
        for n, f in floors.items():
            got[n].append(f())
    return {n: float(np.median(v)) for n, v in got.items()}


def resnet20(bundle: Path, rounds: int, reps: int, work: Path, burst: int = 1) -> dict:
    """Every config of the bundle's IREE front on every engine, plus the per-call split."""
    man = load_manifest(bundle)
    rt_ex = open_executor(bundle, backend="iree", target="host")
    x = np.random.default_rng(0).standard_normal((1, *man.input.chw)).astype(np.float32)
    np.save(work / "x.npy", x)
    weights, vmfb = bundle / man.iree.weights, bundle / man.targets["host"].dir / man.iree.module

    # the same graphs as bundles compiled them before: NCHW everywhere (one merged module, same archive)
    arch = work / "nchw.irpa"
    arch.write_bytes(weights.read_bytes())
    parts = {"gated": import_shared(bundle / man.onnx["gated"], arch, work, "gated")}
    for c in rt_ex.configs:
        parts[c.module] = import_shared(bundle / man.onnx[c.module], arch, work, c.module)
    nchw_vmfb = compile_mlir(merge_modules(parts, work / "nchw.mlir"), TARGETS["host"], work / "nchw.vmfb")
    nchw = SharedIreeExecutor(arch, [nchw_vmfb], functions=list(parts))

    rows = []
    for c in rt_ex.configs:
        k = list(parts).index(c.module)
        sess = ort_session(bundle / man.onnx[c.module], threads=1)
        runners = {
            "runtime": lambda c=c: rt_ex.infer(x, config=c.index),
            "nchw": lambda k=k: nchw.run(k, x),
            "ort": lambda s=sess: s.run(None, {"image": x}),
        }
        floors = {
            "benchmark": lambda c=c: benchmark_module(vmfb, weights, c.module, [work / "x.npy"], reps),
            "benchmark_nchw": lambda c=c: benchmark_module(nchw_vmfb, arch, c.module, [work / "x.npy"], reps),
        }
        t = interleave(runners, rounds, floors, burst=burst)
        same = float(np.abs(rt_ex.infer(x, config=c.index) - sess.run(None, {"image": x})[0]).max())
        rows.append(
            {
                "config": c.index,
                "skip": "".join("1" if v else "0" for v in c.skip),
                "skipped": c.n_skipped,
                "macs": c.macs,
                "max_abs_diff_vs_ort": same,
                **t,
            }
        )
        print(f"  config {c.index} ({rows[-1]['skip']}): " + ", ".join(f"{n} {v * 1e3:.3f} ms" for n, v in t.items()))
    full, last = rows[0], rows[-1]
    summary = {
        "runtime_over_ort": [r["runtime"] / r["ort"] for r in rows],
        "runtime_over_benchmark": [r["runtime"] / r["benchmark"] for r in rows],
        "all_skip_speedup": {e: full[e] / last[e] for e in ("runtime", "benchmark", "nchw", "ort")},
        "mac_limit": full["macs"] / last["macs"],
    }
    return {"rows": rows, "summary": summary, "split": per_call_split(rt_ex, last, x, rounds)}


def per_call_split(rt_ex, row: dict, x: np.ndarray, rounds: int) -> dict:
    """Where a call's time goes beside the compiled code, on one config (the all-skip one: the smallest)."""
    import iree.runtime as rt

    sh = rt_ex.iree
    k = rt_ex._fn[row["config"]]
    fn, ctx, dev = sh.functions[k], sh.context, sh.config.device
    invoker = rt.FunctionInvoker(ctx, dev, fn)
    mem, use, f32 = rt.MemoryType.DEVICE_LOCAL, rt.BufferUsage.DEFAULT, rt.HalElementType.FLOAT_32
    view = dev.allocator.allocate_buffer_copy(mem, use, dev, x, f32)

    def bare():
        args = rt.VmVariantList(1)
        args.push_ref(view)
        ctx.invoke(fn, args, rt.VmVariantList(1))

    res = rt.VmVariantList(1)
    args = rt.VmVariantList(1)
    args.push_ref(view)
    ctx.invoke(fn, args, res)

    def read():
        v = res.get_as_object(0, rt.HalBufferView)
        return np.array(v.map().asarray(v.shape, np.dtype(np.float32)))

    names = [
        "executor.infer",
        "SharedIreeExecutor.run",
        "FunctionInvoker + to_host",
        "bare invoke",
        "input copy",
        "result read",
    ]
    runs = [
        lambda: rt_ex.infer(x, config=row["config"]),
        lambda: sh.run(k, x),
        lambda: np.asarray(invoker(x).to_host()),
        bare,
        lambda: dev.allocator.allocate_buffer_copy(mem, use, dev, x, f32),
        read,
    ]
    meds = interleaved_median(runs, rounds, warmup=10)
    out = dict(zip(names, meds))
    print("  per call (all-skip): " + ", ".join(f"{n} {v * 1e6:.1f} us" for n, v in out.items()))
    return out


def whole_network(name: str, make, shape: tuple[int, ...], rounds: int, reps: int, work: Path, burst: int = 1) -> dict:
    """A library network as one static graph: IREE (channels-last with and without data tiling, and NCHW, of which
    ``compile`` keeps the fastest on this host) vs onnxruntime."""
    import torch

    from edgeskip.export.onnx_export import export_graph

    model = make().eval()
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    np.save(work / f"{name}.x.npy", x)
    onnx = export_graph(model, (torch.from_numpy(x),), ["image"], work / f"{name}.onnx", dynamic_batch=False)
    weights = work / f"{name}.irpa"
    mlir = import_onnx(onnx, work / f"{name}.mlir", params=weights)
    host, vmfbs, compile_s = TARGETS["host"], {}, {}
    builds = {
        "tiled": (dataclasses.replace(host, static_data_tiling=True), ("main_graph",)),
        "untiled": (dataclasses.replace(host, static_data_tiling=False), ("main_graph",)),
        "nchw": (host, ()),
    }
    for b, (target, cl) in builds.items():
        t0 = time.perf_counter()
        vmfbs[b] = compile_mlir(mlir, target, work / f"{name}.{b}.vmfb", channels_last=cl)
        compile_s[b] = time.perf_counter() - t0
    exs = {b: SharedIreeExecutor(weights, [v]) for b, v in vmfbs.items()}
    sess = ort_session(onnx, threads=1)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    diff = {b: float(np.abs(e.run(0, x) - ref).max()) for b, e in exs.items()}
    diff["ort"] = float(np.abs(sess.run(None, {"image": x})[0] - ref).max())
    bench = lambda b: lambda: benchmark_module(vmfbs[b], weights, "main_graph", [work / f"{name}.x.npy"], reps)  # noqa: E731
    t = interleave(
        {
            "runtime_tiled": lambda: exs["tiled"].run(0, x),
            "runtime_untiled": lambda: exs["untiled"].run(0, x),
            "nchw": lambda: exs["nchw"].run(0, x),
            "ort": lambda: sess.run(None, {"image": x}),
        },
        rounds,
        {"benchmark_tiled": bench("tiled"), "benchmark_untiled": bench("untiled"), "benchmark_nchw": bench("nchw")},
        burst=burst,
    )
    chosen = min(("tiled", "untiled", "nchw"), key=lambda b: t["nchw" if b == "nchw" else f"runtime_{b}"])
    t.update(
        runtime=t["nchw" if chosen == "nchw" else f"runtime_{chosen}"],
        benchmark=t["benchmark_nchw" if chosen == "nchw" else f"benchmark_{chosen}"],
    )
    print(f"  {name}: " + ", ".join(f"{n} {v * 1e3:.3f} ms" for n, v in t.items()) + f" (kept: {chosen})")
    return {
        "name": name,
        "input": list(shape),
        **t,
        "kept": chosen,
        "max_abs_diff_vs_torch": diff,
        "compile_s": compile_s,
    }


def plot(res: dict, dest: Path) -> None:
    rows = res["resnet20"]["rows"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    engines = [
        ("runtime", "IREE, edgeskip runtime"),
        ("benchmark", "IREE, iree-benchmark-module"),
        ("nchw", "IREE NCHW (before)"),
        ("ort", "onnxruntime"),
    ]
    w = 0.2
    xs = np.arange(len(rows))
    for i, (key, label) in enumerate(engines):
        a.bar(xs + (i - 1.5) * w, [r[key] * 1e3 for r in rows], w, label=label)
    a.set_xticks(xs, [f"{r['skipped']} skipped" for r in rows], fontsize=8)
    a.set_ylabel("ms per image (batch 1, 1 thread)")
    a.set_title("CIFAR-10 ResNet-20, every config of the bundle")
    a.legend(fontsize=8)
    nets = res["networks"]
    xs = np.arange(len(nets))
    for i, (key, label) in enumerate(engines):
        b.bar(xs + (i - 1.5) * w, [n[key] / n["ort"] for n in nets], w, label=label)
    b.axhline(1.0, color="k", lw=0.6)
    b.set_xticks(xs, [n["name"] for n in nets], fontsize=8)
    b.set_ylabel("time / onnxruntime")
    b.set_title("whole networks")
    fig.tight_layout()
    write_with(dest, lambda p: fig.savefig(p, format="png", dpi=120))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=300, help="round-robin rounds per ResNet-20 config")
    ap.add_argument("--big-rounds", type=int, default=30, help="rounds for the whole library networks")
    ap.add_argument("--reps", type=int, default=5, help="iree-benchmark-module repetitions per block")
    ap.add_argument("--skip-networks", action="store_true", help="ResNet-20 only")
    ap.add_argument(
        "--burst",
        type=int,
        default=1,
        help="calls in a row per engine and round (1: each call after the other engines'; more: the warm steady "
        "state of a process serving one engine, as iree-benchmark-module's loop is)",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    a = ap.parse_args()
    from edgeskip.models.zoo import import_torchvision

    torchvision = import_torchvision()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("ResNet-20 bundle:")
        res = {"resnet20": resnet20(a.bundle, a.rounds, a.reps, work, a.burst), "networks": []}
        if not a.skip_networks:
            print("whole networks:")
            res["networks"].append(
                whole_network(
                    "mobilenet_v2_050",
                    lambda: torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10),
                    (3, 32, 32),
                    a.big_rounds,
                    a.reps,
                    work,
                    a.burst,
                )
            )
            res["networks"].append(
                whole_network(
                    "resnet18_224",
                    lambda: torchvision.models.resnet18(num_classes=1000),
                    (3, 224, 224),
                    a.big_rounds,
                    a.reps,
                    work,
                    a.burst,
                )
            )
    import iree.runtime
    import onnxruntime

    res["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "iree": iree.runtime.version.VERSION if hasattr(iree.runtime, "version") else "?",
    }
    res["burst"] = a.burst
    res["command"] = "python " + " ".join(shlex.quote(s) for s in sys.argv)
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "engines.json", res)
    plot(res, a.out / "engines.png")
    s = res["resnet20"]["summary"]
    print("runtime / onnxruntime:", " ".join(f"{v:.2f}" for v in s["runtime_over_ort"]))
    print("runtime / iree-benchmark-module:", " ".join(f"{v:.2f}" for v in s["runtime_over_benchmark"]))
    print(
        "all-skip speed-up:",
        ", ".join(f"{k} {v:.2f}x" for k, v in s["all_skip_speedup"].items()),
        f"(MAC limit {s['mac_limit']:.2f}x)",
    )
    for n in res["networks"]:
        print(f"{n['name']}: IREE / onnxruntime {n['runtime'] / n['ort']:.2f} (NCHW {n['nchw'] / n['ort']:.2f})")


if __name__ == "__main__":
    main()
