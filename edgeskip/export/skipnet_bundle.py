"""SkipNet deployment bundle: the learned-gate baseline, built and verified like an edgeskip bundle.

Layout::

    manifest.json                  kind "skipnet", architecture, gates, input, normalisation, hashes
    model.pt                       slim SkipNet checkpoint
    onnx/skipnet.onnx              batch 1; one If per gate, driven by the gate's own decision
    iree/weights.irpa              weights (backbone and gates)
    iree/<target>/skipnet.vmfb     per target

``configs`` holds one entry (index 0): the model picks its blocks per input, there is nothing to switch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeskip.data.batches import iterate
from edgeskip.data.dataset import Splits
from edgeskip.backends.iree import IreeSkipNet
from edgeskip.errors import EdgeskipError
from edgeskip.export import emulate
from edgeskip.export.bundle import (TOLERANCE, check_out, finish_bundle, staging, targets_manifest, tool_versions,
                                    with_host, write_sample)
from edgeskip.export.elf_check import check_no_imports
from edgeskip.export.iree_compile import COMMON_FLAGS, Target, compile_mlir, import_onnx
from edgeskip.backends.ort import ort_session
from edgeskip.export.onnx_export import max_abs_diff
from edgeskip.export.shared_weights import rename_module
from edgeskip.export.skipnet_graph import export_skipnet, verify_skipnet_onnx
from edgeskip.manifest import ConfigEntry, InputSpec, IreeEntry, Manifest, Normalization
from edgeskip.models.skipnet import SkipNetResNet, gate_costs
from edgeskip.models.cost import block_macs
from edgeskip.train.checkpoint import Checkpoint
from edgeskip.train.gates import evaluate_gated

MODULE = "skipnet"  # the MLIR module's name
FUNCTION = "main_graph"  # its entry function (the ONNX graph's name)
Log = Callable[[str], None]


def per_input_latency(run: Callable[[np.ndarray], Any], images: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Batch-1 latency of every image (median over ``rounds`` passes over the set), in seconds."""
    times = np.zeros((rounds, len(images)))
    for r in range(rounds):
        for i, x in enumerate(images):
            t = time.perf_counter()
            run(x[None])
            times[r, i] = time.perf_counter() - t
    return np.median(times, 0)


def _verify(tmp: Path, targets: Sequence[Target], images: np.ndarray, log: Log) -> dict[str, Any]:
    """Host IREE vs onnxruntime per image (logits and decisions); aarch64 under qemu; ARM32 ELF check."""
    weights = tmp / "iree" / "weights.irpa"
    sess = ort_session(tmp / "onnx" / "skipnet.onnx")
    host = IreeSkipNet(weights, tmp / "iree" / "host" / "skipnet.vmfb")
    worst, flips = 0.0, 0
    host_out = []
    for x in images:
        ref_l, ref_e = sess.run(None, {"image": x[None]})
        got_l, got_e = host.run(x[None])
        host_out.append((got_l, got_e))
        worst = max(worst, max_abs_diff(got_l, ref_l))
        flips += int((np.asarray(ref_e, bool) != got_e).sum())
    if worst > TOLERANCE or flips:
        raise EdgeskipError(f"host IREE SkipNet differs from onnxruntime: {worst:.2e}, {flips} decisions differ")
    out: dict[str, Any] = {"host": {"iree_vs_onnxruntime": worst, "decisions_differing": 0, "images": len(images)}}
    for t in targets:
        if t.name == "host":
            continue
        vmfb = tmp / "iree" / t.name / "skipnet.vmfb"
        if t.triple and t.triple.startswith("aarch64"):
            why = emulate.missing()
            if why:
                out[t.name] = {"executed": False, "reason": why}
                log(f"  {t.name}: not executed ({why})")
                continue
            worst, flips = 0.0, 0
            for x, (ref_l, ref_e) in list(zip(images, host_out))[:2]:
                got_l, got_e = emulate.run_aarch64_outputs(vmfb, [x[None]], 2, parameters=weights)
                worst = max(worst, max_abs_diff(got_l, ref_l))
                flips += int((np.asarray(got_e, bool) != ref_e).sum())
            if worst > TOLERANCE or flips:
                raise EdgeskipError(f"{t.name} SkipNet under qemu differs from the host: {worst:.2e}, {flips} decisions")
            out[t.name] = {"executed": True, "emulator": "qemu-aarch64-static", "aarch64_vs_host": worst, "images": 2}
        else:
            elfs = check_no_imports(vmfb)
            out[t.name] = {"executed": False, "reason": "no armv7 IREE runtime is published",
                           "elf_checked": len(elfs), "undefined_symbols": 0}
    return out


def build_skipnet_bundle(ck: Checkpoint, splits: Splits, out: str | os.PathLike, targets: Sequence[Target],
                         repeats: int = 3, force: bool = False, log: Log = print) -> Path:
    """Evaluate, export, compile, verify and time a SkipNet checkpoint; write the bundle atomically."""
    out, targets = Path(out), with_host(targets)
    if ck.gate_cfg is None:
        raise EdgeskipError("checkpoint has no SkipNet gates")
    check_out(out, force)
    model = ck.model()
    assert isinstance(model, SkipNetResNet)
    with staging(out) as (tmp, work):
        t0 = time.time()
        log("evaluating the gates on validation and test data ...")
        val, test = evaluate_gated(model, splits.val, splits.norm), evaluate_gated(model, splits.test, splits.norm)

        log("exporting ONNX (one If per gate, batch 1) and verifying against PyTorch ...")
        (tmp / "onnx").mkdir()
        onnx_path = export_skipnet(model, tmp / "onnx" / "skipnet.onnx")
        xb, _ = next(iterate(splits.test, splits.norm, 16))
        onnx_check = verify_skipnet_onnx(model, xb, onnx_path)

        log("compiling IREE modules: " + ", ".join(t.name for t in targets) + " ...")
        weights = tmp / "iree" / "weights.irpa"
        weights.parent.mkdir(parents=True)
        mlir = import_onnx(onnx_path, work / "skipnet.mlir", params=weights)
        rename_module(mlir, MODULE)
        for t in targets:
            (tmp / "iree" / t.name).mkdir(exist_ok=True)
            compile_mlir(mlir, t, tmp / "iree" / t.name / "skipnet.vmfb")

        log("verifying compiled modules ...")
        images = xb.numpy().astype(np.float32)
        iree_check = _verify(tmp, targets, images, log)

        log("measuring per-input latency on this host ...")
        host = IreeSkipNet(weights, tmp / "iree" / "host" / "skipnet.vmfb")
        lat_images = np.concatenate([x.numpy() for x, _ in iterate(splits.test, splits.norm, 100)])[:100].astype(np.float32)
        lat = per_input_latency(host.run, lat_images, repeats)
        sess = ort_session(onnx_path, threads=1)
        ort_lat = per_input_latency(lambda x: sess.run(None, {"image": x}), lat_images, repeats)
        faster = "onnxruntime" if ort_lat.mean() < lat.mean() else "iree"
        ck.save(tmp / "model.pt", slim=True)
        sample = write_sample(tmp, splits)
        cfg, g = model.cfg, model.gate_cfg
        bm = block_macs(cfg)
        gc = gate_costs(cfg, g)
        manifest = Manifest(
            kind="skipnet", model=cfg.to_dict(), input=InputSpec((1, cfg.in_channels, *cfg.input_size)),
            normalization=Normalization(tuple(ck.norm.mean), tuple(ck.norm.std)), class_names=tuple(ck.class_names),
            dataset_id=ck.dataset_id, num_gates=cfg.num_gates, gated_blocks=tuple(cfg.gated_blocks),
            configs=(ConfigEntry(0, FUNCTION, round(test.mean_skipped, 3), val.accuracy, test.accuracy,
                                 test.mean_macs, float(np.mean(lat)), None, {
                                     "policy": "learned gates (per input)", "val_mean_skipped": val.mean_skipped,
                                     "test_mean_skipped": test.mean_skipped,
                                     "test_skip_rate_per_gate": test.skip_rate_per_gate,
                                     "latency_s_p50": float(np.median(lat)), "latency_s_min": float(lat.min()),
                                     "latency_s_max": float(lat.max()),
                                     "latency_s_onnxruntime": float(np.mean(ort_lat))}),),
            targets=targets_manifest(targets),
            iree=IreeEntry("iree/weights.irpa", "skipnet.vmfb", (FUNCTION,), common_flags=tuple(COMMON_FLAGS)),
            host_fastest=faster, onnx={FUNCTION: "onnx/skipnet.onnx"}, sample=sample,
            extra={"created_unix": int(time.time()), "tools": tool_versions(),
                   "gates": {**g.to_dict(), "training": ck.gate_training or {}, "gate_macs": gc,
                             "gate_over_block": [c / bm[b] for c, b in zip(gc, cfg.gated_blocks)]},
                   "outputs": {"logits": [1, cfg.num_classes], "executed": {"dtype": "bool", "shape": [cfg.num_gates]}},
                   "backend": {"latency_source": "iree-host-local-sync-b1-per-input", "onnxruntime_threads": 1,
                               "iree_driver": "local-sync"},
                   "verification": {"tolerance": TOLERANCE, "onnx": onnx_check, "iree": iree_check},
                   "build_seconds": round(time.time() - t0, 1)})
        finish_bundle(tmp, out, manifest)
    return out
