"""Learned-gate deployment bundles: the baselines SkipNet and Dynamic Fractional Skipping (DFS), built and verified
like an edgeskip bundle.

Layout (``<kind>`` is ``skipnet`` or ``dfs``)::

    manifest.json                  kind, architecture, gates, input, normalisation, hashes
    model.pt                       slim checkpoint
    onnx/<kind>.onnx               batch 1; SkipNet: one If per gate, driven by the gate's own decision;
                                   DFS: one switch per gate over its options (nested Ifs), 8 bits in the
                                   form chosen (default qlinear: int8 QLinearConv on onnxruntime)
    iree/weights.irpa              weights (backbone and gates)
    iree/<target>/<kind>.vmfb      per target

``configs`` holds one entry (index 0): the model picks its blocks per input, there is nothing to switch. The graph's
second output is ``executed`` (SkipNet, bool [B_s]) or ``options`` (DFS, int64 [B_s], 0 = skip).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.backends.iree import IreeSkipNet
from edgeskip.backends.ort import ort_session
from edgeskip.data.batches import iterate
from edgeskip.data.dataset import Splits
from edgeskip.errors import EdgeskipError
from edgeskip.export import emulate
from edgeskip.export.bundle import (
    TOLERANCE,
    check_out,
    finish_bundle,
    staging,
    targets_manifest,
    tool_versions,
    write_sample,
)
from edgeskip.export.dfs_graph import (
    INT8_MODES,
    calibrate_dfs,
    export_dfs,
    graph_reference,
    switch_order,
    verify_dfs_onnx,
)
from edgeskip.export.iree_compile import COMMON_FLAGS, Target, compile_many, import_onnx, with_host
from edgeskip.export.onnx_export import INT8_TOLERANCE, max_abs_diff, rounding_tolerated
from edgeskip.export.shared_weights import rename_module
from edgeskip.export.skipnet_graph import export_skipnet, verify_skipnet_onnx
from edgeskip.manifest import DECISIONS, ConfigEntry, InputSpec, IreeEntry, Manifest, Normalization
from edgeskip.models.cost import block_macs
from edgeskip.models.dfs import DFSResNet
from edgeskip.models.skipnet import SkipNetResNet, gate_costs
from edgeskip.pareto.design import calibration_batches
from edgeskip.train.checkpoint import Checkpoint
from edgeskip.train.gates import evaluate_dfs, evaluate_gated

FUNCTION = "main_graph"  # the entry function (the ONNX graph's name); the MLIR module is named after the kind
Log = Callable[[str], None]


@dataclass(frozen=True)
class Family:
    """What differs between learned-gate models: the graph export, its check against PyTorch, the evaluation
    (accuracy, mean skipped blocks, mean MACs with gates, per-gate skip rates, more) and the decisions' output."""

    kind: str
    export: Callable[[Any, Path, dict[str, Any]], Path]  # (model, dest, validation stats)
    verify: Callable[[Any, Any, Path], dict[str, Any]]
    evaluate: Callable[[Any, Any, Any], dict[str, Any]]
    relative: bool = False  # logits compared relative to the largest one (quantised branches, as int8 graphs)

    def diff(self, got: Any, ref: Any) -> float:
        d = max_abs_diff(got, ref)
        return d / max(1.0, float(np.abs(ref).max())) if self.relative else d

    @property
    def tolerance(self) -> float:
        return INT8_TOLERANCE if self.relative else TOLERANCE

    @property
    def output(self) -> str:
        """Name of the graph's decisions output (the manifest contract's)."""
        return DECISIONS[self.kind][0]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(DECISIONS[self.kind][1])


def _skipnet_stats(model: Any, ds: Any, norm: Any) -> dict[str, Any]:
    return asdict(evaluate_gated(model, ds, norm))


def _dfs_stats(model: Any, ds: Any, norm: Any) -> dict[str, Any]:
    return asdict(evaluate_dfs(model, ds, norm))


def family(model: Any, dfs_int8: str = "integer", calibration: Any = None) -> Family:
    """The family of ``model``; DFS: the 8-bit form of its graph (``calibration``: :func:`calibrate_dfs`'s ranges,
    for ``qlinear``)."""
    if isinstance(model, SkipNetResNet):
        return Family("skipnet", lambda m, dest, val: export_skipnet(m, dest), verify_skipnet_onnx, _skipnet_stats)
    if isinstance(model, DFSResNet):
        cal = calibration if dfs_int8 == "qlinear" else None

        def export(m: Any, dest: Path, val: dict[str, Any]) -> Path:  # most frequent option outermost
            return export_dfs(m, dest, int8=dfs_int8, order=switch_order(val["option_rates"]), calibration=cal)

        def verify(m: Any, images: Any, path: Path) -> dict[str, Any]:
            return verify_dfs_onnx(m, images, path, reference=graph_reference(m, None, cal))

        return Family("dfs", export, verify, _dfs_stats, relative=True)
    raise EdgeskipError("checkpoint has no learned gates (SkipNet or DFS)")


def deployed_accuracy(onnx_path: Path, ds: Any, norm: Any) -> float:
    """Accuracy of the exported batch-1 graph on onnxruntime over ``ds``, image by image."""
    sess = ort_session(onnx_path, threads=1)
    correct = 0
    for xb, yb in iterate(ds, norm, 256):
        for x, y in zip(xb.numpy().astype(np.float32), yb.numpy()):
            correct += int(np.argmax(sess.run(None, {"image": x[None]})[0]) == y)
    return correct / max(1, len(ds))


def per_input_latency(run: Callable[[np.ndarray], Any], images: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Batch-1 latency of every image (median over ``rounds`` passes over the set), in seconds."""
    times = np.zeros((rounds, len(images)))
    for r in range(rounds):
        for i, x in enumerate(images):
            t = time.perf_counter()
            run(x[None])
            times[r, i] = time.perf_counter() - t
    return np.median(times, 0)


def _same(a: Any, b: Any, dtype: Any) -> int:
    """How many decisions differ."""
    return int((np.asarray(a).astype(dtype) != np.asarray(b).astype(dtype)).sum())


def _verify(tmp: Path, fam: Family, targets: Sequence[Target], images: np.ndarray, log: Log) -> dict[str, Any]:
    """Host IREE vs onnxruntime per image (logits and decisions); aarch64 under qemu; ARM32 ELF check."""
    weights = tmp / "iree" / "weights.irpa"
    sess = ort_session(tmp / "onnx" / f"{fam.kind}.onnx")
    host = IreeSkipNet(weights, tmp / "iree" / "host" / f"{fam.kind}.vmfb")
    diffs, flips, decisions = [], 0, 0
    host_out = []
    for x in images:
        ref_l, ref_e = sess.run(None, {"image": x[None]})
        got_l, got_e = host.run(x[None])
        host_out.append((got_l, got_e))
        diffs.append(fam.diff(got_l, ref_l))
        flips += _same(ref_e, got_e, fam.dtype)
        decisions += np.asarray(ref_e).size
    worst = max(diffs, default=0.0)
    # a quantised graph (DFS): onnxruntime's integer kernels and IREE's float arithmetic may round a value on a
    # boundary one step apart (verify_dfs_onnx's rule); a float graph (SkipNet) must agree on every image
    ok = (
        rounding_tolerated(diffs, flips, decisions, fam.tolerance)
        if fam.relative
        else worst <= fam.tolerance and not flips
    )
    if not ok:
        raise EdgeskipError(f"host IREE {fam.kind} differs from onnxruntime: {worst:.2e}, {flips} decisions differ")
    out: dict[str, Any] = {
        "host": {
            "iree_vs_onnxruntime": worst,
            "decisions_differing": flips,
            "images": len(images),
            "images_past_tolerance": sum(d > fam.tolerance for d in diffs),
        }
    }
    for t in targets:
        if t.name == "host":
            continue
        vmfb = tmp / "iree" / t.name / f"{fam.kind}.vmfb"

        def compare(arch: str, vmfb: Path = vmfb) -> tuple[float, str]:
            worst, flips = 0.0, 0
            for x, (ref_l, ref_e) in list(zip(images, host_out))[:2]:
                got_l, got_e = emulate.run_module_outputs(vmfb, [x[None]], 2, parameters=weights, arch=arch)
                worst = max(worst, fam.diff(got_l, ref_l))
                flips += _same(got_e, ref_e, fam.dtype)
            return worst, f"{flips} decisions" if flips else ""

        out[t.name] = {**emulate.verify_target(t.name, t.triple, vmfb, compare, fam.tolerance, log), "images": 2}
    return out


def build_skipnet_bundle(
    ck: Checkpoint,
    splits: Splits,
    out: str | os.PathLike,
    targets: Sequence[Target],
    repeats: int = 3,
    force: bool = False,
    log: Log = print,
    dfs_int8: str = "qlinear",
    calibration_images: int = 512,
) -> Path:
    """Evaluate, export, compile, verify and time a SkipNet or DFS checkpoint; write the bundle atomically.
    DFS: ``dfs_int8`` is the 8-bit option's form (:mod:`edgeskip.export.dfs_graph`); ``qlinear`` calibrates on
    ``calibration_images`` training images, and the bundle's accuracies are then the deployed graph's."""
    out, targets = Path(out), with_host(targets)
    if ck.gate_cfg is None:
        raise EdgeskipError("checkpoint has no learned gates (SkipNet or DFS)")
    if dfs_int8 not in INT8_MODES:
        raise EdgeskipError(f"the DFS 8-bit form must be one of {', '.join(INT8_MODES)}, got {dfs_int8!r}")
    check_out(out, force)
    model = ck.model()
    fused = isinstance(model, DFSResNet) and dfs_int8 == "qlinear" and 8 in model.gate_cfg.bits
    calibration = calibrate_dfs(model, calibration_batches(splits, calibration_images)) if fused else None
    fam = family(model, dfs_int8, calibration)
    kind = fam.kind
    with staging(out) as (tmp, work):
        t0 = time.time()
        log("evaluating the gates on validation and test data ...")
        val, test = fam.evaluate(model, splits.val, splits.norm), fam.evaluate(model, splits.test, splits.norm)

        log(
            f"exporting ONNX ({'one If per gate' if kind == 'skipnet' else 'one switch per gate over its options'}, "
            "batch 1) and verifying against PyTorch ..."
        )
        (tmp / "onnx").mkdir()
        onnx_path = fam.export(model, tmp / "onnx" / f"{kind}.onnx", val)
        xb, _ = next(iterate(splits.test, splits.norm, 16))
        onnx_check = fam.verify(model, xb, onnx_path)
        accuracy = {"val": val["accuracy"], "test": test["accuracy"]}
        if fused:  # the graph rounds once more than the model: its accuracy is what the bundle delivers
            log("measuring the deployed graph's accuracy (onnxruntime) ...")
            accuracy = {k: deployed_accuracy(onnx_path, getattr(splits, k), splits.norm) for k in accuracy}

        log("compiling IREE modules: " + ", ".join(t.name for t in targets) + " ...")
        weights = tmp / "iree" / "weights.irpa"
        weights.parent.mkdir(parents=True)
        mlir = import_onnx(onnx_path, work / f"{kind}.mlir", params=weights)
        rename_module(mlir, kind)
        for t in targets:
            (tmp / "iree" / t.name).mkdir(exist_ok=True)
        targets = [c.target for c in compile_many([(mlir, t, tmp / "iree" / t.name / f"{kind}.vmfb") for t in targets])]

        log("verifying compiled modules ...")
        images = xb.numpy().astype(np.float32)
        iree_check = _verify(tmp, fam, targets, images, log)

        log("measuring per-input latency on this host ...")
        host = IreeSkipNet(weights, tmp / "iree" / "host" / f"{kind}.vmfb")
        lat_images = np.concatenate([x.numpy() for x, _ in iterate(splits.test, splits.norm, 100)])[:100].astype(
            np.float32
        )
        lat = per_input_latency(host.run, lat_images, repeats)
        sess = ort_session(onnx_path, threads=1)
        ort_lat = per_input_latency(lambda x: sess.run(None, {"image": x}), lat_images, repeats)
        faster = "onnxruntime" if ort_lat.mean() < lat.mean() else "iree"
        ck.save(tmp / "model.pt", slim=True)
        sample = write_sample(tmp, splits)
        cfg, g = model.cfg, model.gate_cfg
        bm = block_macs(cfg)
        gc = gate_costs(cfg, g)
        extra_cfg = {
            "policy": "learned gates (per input)",
            "val_mean_skipped": val["mean_skipped"],
            "test_mean_skipped": test["mean_skipped"],
            "test_skip_rate_per_gate": test["skip_rate_per_gate"],
            "latency_s_p50": float(np.median(lat)),
            "latency_s_min": float(lat.min()),
            "latency_s_max": float(lat.max()),
            "latency_s_onnxruntime": float(np.mean(ort_lat)),
            "latency_s_onnxruntime_min": float(ort_lat.min()),
            "latency_s_onnxruntime_max": float(ort_lat.max()),
        }
        if kind == "dfs":
            extra_cfg.update(
                val_cp=val["mean_cp"],
                test_cp=test["mean_cp"],
                test_option_rates=test["option_rates"],
                options_bits=list(g.options),
                switch_order=switch_order(val["option_rates"]),
                int8_form=dfs_int8 if 8 in g.bits else None,
                model_val_accuracy=val["accuracy"],
                model_test_accuracy=test["accuracy"],
                calibration_images=calibration_images if fused else 0,
            )
        decisions = {"dtype": fam.dtype.name, "shape": [cfg.num_gates]}
        manifest = Manifest(
            kind=kind,
            model=cfg.to_dict(),
            input=InputSpec((1, cfg.in_channels, *cfg.input_size)),
            normalization=Normalization(tuple(ck.norm.mean), tuple(ck.norm.std)),
            class_names=tuple(ck.class_names),
            dataset_id=ck.dataset_id,
            num_gates=cfg.num_gates,
            gated_blocks=tuple(cfg.gated_blocks),
            configs=(
                ConfigEntry(
                    0,
                    FUNCTION,
                    round(test["mean_skipped"], 3),
                    accuracy["val"],
                    accuracy["test"],
                    test["mean_macs"],
                    float(np.mean(lat)),
                    None,
                    extra_cfg,
                ),
            ),
            targets=targets_manifest(targets),
            iree=IreeEntry("iree/weights.irpa", f"{kind}.vmfb", (FUNCTION,), common_flags=tuple(COMMON_FLAGS)),
            host_fastest=faster,
            onnx={FUNCTION: f"onnx/{kind}.onnx"},
            sample=sample,
            extra={
                "created_unix": int(time.time()),
                "tools": tool_versions(),
                "gates": {
                    **g.to_dict(),
                    "training": ck.gate_training or {},
                    "gate_macs": gc,
                    "gate_over_block": [c / bm[b] for c, b in zip(gc, cfg.gated_blocks)],
                },
                "outputs": {"logits": [1, cfg.num_classes], fam.output: decisions},
                "backend": {
                    "latency_source": "iree-host-local-sync-b1-per-input",
                    "onnxruntime_threads": 1,
                    "iree_driver": "local-sync",
                },
                "verification": {
                    "tolerance": fam.tolerance,
                    "relative": fam.relative,
                    "onnx": onnx_check,
                    "iree": iree_check,
                },
                "build_seconds": round(time.time() - t0, 1),
            },
        )
        finish_bundle(tmp, out, manifest)
    return out
