"""The deployment bundle: everything a board needs, verified, with a manifest of sha256 hashes.

Layout::

    manifest.json                  architecture, input, normalisation, classes, targets, flags, hashes
    model.pt                       slim checkpoint (weights + everything to rebuild the model)
    sensitivity.json pareto.json pareto.png
    onnx/gated.onnx                any skip array (one If per gate)
    onnx/static_<skip>.onnx        one per candidate config (onnxruntime path; the Pareto configs and the others
                                   a board's own profile may choose)
    onnx/weights.bin               the graphs' initializers, each distinct tensor once (ONNX external data)
    iree/weights.irpa              the one copy of the weights
    iree/<target>/model.vmfb       one module per target; functions ``gated`` and ``static_<skip>``
                                   (one per Pareto config) share one copy of the packed weights
    eval/sample.npz                1,000 test images (seeded random subset) with labels, for `edgeskip bench`
    fractional.json                with ``int8``: the {full, int8, skip} design space measured on onnxruntime

With ``int8`` (fractional depth, issue #15) the gated blocks also get int8 variants (post-training, calibrated on
training images); the configs are the union of the skip-only front and the fractional front, and the manifest's
``fronts`` say which of them each back end steps through (each back end's front over its own measured latency).

The bundle is built in a temporary folder beside ``out`` and renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip import __version__
from edgeskip.backends.iree import SharedIreeExecutor
from edgeskip.backends.ort import ort_session
from edgeskip.data.batches import iterate
from edgeskip.data.dataset import Splits
from edgeskip.errors import EdgeskipError
from edgeskip.export import emulate
from edgeskip.export.iree_compile import COMMON_FLAGS, Target, with_host
from edgeskip.export.latency import IreeLatency, IreeOrOrt, OrtLatency, ort_static_latency
from edgeskip.export.onnx_export import export_static, logit_diff, verify_int8, verify_onnx
from edgeskip.export.shared_weights import ONNX_WEIGHTS, share_onnx_weights
from edgeskip.manifest import ConfigEntry, InputSpec, IreeEntry, Manifest, Normalization, TargetEntry
from edgeskip.pareto.design import calibration_batches, design_space, fractional_space, write_design
from edgeskip.pareto.search import DEFAULT, SearchSpec
from edgeskip.skip import INT8, doc_options, gates_of, has_rest, module_name
from edgeskip.train.checkpoint import Checkpoint
from edgeskip.utils.atomic import write_json
from edgeskip.utils.hashing import file_digest as sha256

TOLERANCE = 1e-4
TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "iree-base-compiler", "iree-base-runtime", "numpy")
Log = Callable[[str], None]


def tool_versions() -> dict[str, str]:
    out = {"edgeskip": __version__}
    for t in TOOLS:
        try:
            out[t] = metadata.version(t)
        except metadata.PackageNotFoundError:
            out[t] = "not installed"
    return out


def _verify_iree(
    bundle: Path,
    targets: Sequence[Target],
    images: np.ndarray,
    configs: list[dict],
    extra_skips: list[tuple[bool, ...]],
    log: Log,
) -> dict[str, Any]:
    """Host modules vs onnxruntime; aarch64 and armv7 modules under qemu vs the host (see emulate.verify_target)."""
    out: dict[str, Any] = {}
    weights = bundle / "iree" / "weights.irpa"
    gated_sess = ort_session(bundle / "onnx" / "gated.onnx")
    host_dir = bundle / "iree" / "host"
    functions = ["gated", *[c["module"] for c in configs]]
    host = SharedIreeExecutor(weights, [host_dir / "model.vmfb"], functions=functions)
    worst = 0.0
    for k, c in enumerate(configs, start=1):
        ref = ort_session(bundle / "onnx" / f"{c['module']}.onnx").run(None, {"image": images})[0]
        worst = max(worst, logit_diff(host.run(k, images), ref))
    for s in extra_skips:
        skip = np.array(s, dtype=bool)
        ref = gated_sess.run(None, {"image": images, "skip": skip})[0]
        worst = max(worst, logit_diff(host.run(0, images, skip), ref))
    if worst > TOLERANCE:
        raise EdgeskipError(f"host IREE modules differ from onnxruntime by {worst:.2e} > {TOLERANCE:g}")
    out["host"] = {"iree_vs_onnxruntime": worst}
    for t in targets:
        if t.name == "host":
            continue

        vmfb = bundle / "iree" / t.name / "model.vmfb"

        def compare(arch: str, vmfb: Path = vmfb) -> tuple[float, str]:
            """The gated module under qemu vs the host's, for two skip arrays, weights from the shared archive."""
            worst, flips = 0.0, 0
            for s in extra_skips[:2]:
                skip = np.array(s, dtype=bool)
                ref = host.run(0, images, skip)
                got = emulate.run_module(vmfb, [images, skip], function="gated", parameters=weights, arch=arch)
                worst = max(worst, logit_diff(got, ref))
                flips += int((got.argmax(1) != ref.argmax(1)).sum())
            return worst, f"{flips} top-1 classes" if flips else ""

        out[t.name] = emulate.verify_target(t.name, t.triple, vmfb, compare, TOLERANCE, log)
    return out


def targets_manifest(targets: Sequence[Target]) -> dict[str, TargetEntry]:
    """The manifest's ``targets`` entry: triple, compiler flags and module folder per target."""
    return {
        t.name: TargetEntry(
            t.triple or "host", tuple(t.flags()), f"iree/{t.name}", t.static_data_tiling is not False, t.channels_last
        )
        for t in targets
    }


SAMPLE = "eval/sample.npz"
SAMPLE_SIZE = 1000
SAMPLE_SEED = 0


def write_sample(tmp: Path, splits: Splits, count: int = SAMPLE_SIZE) -> str:
    """The bundle's evaluation sample: ``count`` test images with labels, for `edgeskip bench` (uint8 pixels
    where the data set stores them, else normalised float32; a plain .npz, hashed).

    A seeded random subset in shuffled order, not the first ``count``: an image-folder test split is sorted
    by class, and its first 1,000 CIFAR-10 images are all airplanes."""
    from edgeskip.bench.images import save_images, save_pixels

    pick = np.random.default_rng(SAMPLE_SEED).permutation(len(splits.test.y))[:count]
    x, y = splits.test.x[pick], splits.test.y[pick]
    dest = tmp / SAMPLE
    if x.dtype == np.uint8:
        save_pixels(dest, x, y)
    else:
        mean = np.array(splits.norm.mean, np.float32)[None, :, None, None]
        std = np.array(splits.norm.std, np.float32)[None, :, None, None]
        save_images(dest, ((x.astype(np.float32) - mean) / std).astype(np.float32), y)
    return SAMPLE


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise EdgeskipError(f"{out} exists; pass --force to replace it")


@contextmanager
def staging(out: Path) -> Iterator[tuple[Path, Path]]:
    """(tmp, work): the bundle is built in ``tmp`` beside ``out`` (renamed into place by
    :func:`finish_bundle`), scratch files go to ``work``; whatever is left of either is removed on exit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix="edgeskip-work-"))
    try:
        yield tmp, work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def finish_bundle(tmp: Path, out: Path, manifest: Manifest) -> None:
    """Hash every artifact of the bundle built in ``tmp``, write its manifest, rename it to ``out``.

    The document is validated by the reader's own contract before it is written."""
    artifacts = {p.relative_to(tmp).as_posix(): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    doc = dataclasses.replace(manifest, artifacts=artifacts).to_dict()
    Manifest.from_dict(doc)
    write_json(tmp / "manifest.json", doc)
    os.chmod(tmp, 0o755)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def candidate_arrays(front: dict[str, Any], frac: dict[str, Any] | None) -> list[tuple[int, ...]]:
    """Every config the design space measured, once each: the skip-only candidates and, with int8, the fractional
    design space's (as option arrays)."""
    arrays = [tuple(int(v) for v in c["skip"]) for c in front["candidates"]]
    arrays += [doc_options(c) for c in (frac or {}).get("candidates", [])]
    return list({module_name(a): a for a in arrays}.values())


def carry_candidates(
    model: Any, dest: Path, arrays: Sequence[tuple[int, ...]], sources: Sequence[Path], gated: Path
) -> dict[str, Path]:
    """Each array's static graph in ``dest``: the one exported while measuring (found in ``sources``), else cut
    from the ``gated`` graph (skip arrays only: an int8 array was measured, so its graph exists)."""
    out = {}
    for a in arrays:
        name = module_name(a)
        path = dest / f"{name}.onnx"
        if not path.exists():
            src = next((d / f"{name}.onnx" for d in sources if (d / f"{name}.onnx").is_file()), None)
            if src is not None:
                shutil.copyfile(src, path)
            elif INT8 in a or has_rest(a):
                raise EdgeskipError(f"no graph was exported for the int8 candidate {name}")
            else:
                export_static(model, a, path, gated)
        out[name] = path
    return out


def _union_configs(front: dict[str, Any], frac: dict[str, Any]) -> list[dict[str, Any]]:
    """The skip-only front's configs and the fractional front's, once each, sorted by skipped then int8 blocks."""
    rows: dict[tuple[int, ...], dict[str, Any]] = {}
    for c in front["configs"]:
        rows[tuple(int(v) for v in c["skip"])] = {
            k: c[k] for k in ("n_skipped", "val_accuracy", "test_accuracy", "macs")
        }
    for i in frac["front"]:
        r = frac["candidates"][i]
        rows.setdefault(doc_options(r), {k: r[k] for k in ("n_skipped", "val_accuracy", "test_accuracy", "macs")})
    out = []
    order = sorted(
        rows.items(), key=lambda kv: (kv[1]["n_skipped"], has_rest(kv[0]), kv[0].count(INT8), [-v for v in kv[0]])
    )
    for o, r in order:
        row = {**r, "skip": [int(v != 0) for v in gates_of(o)]}
        if INT8 in o or has_rest(o):
            row["options"] = list(gates_of(o))
        if has_rest(o):
            row["int8_rest"] = True
        out.append(row)
    return [{"index": k, **r} for k, r in enumerate(out)]


def backend_front(configs: Sequence[dict[str, Any]], key: str) -> list[int]:
    """Positions in ``configs`` of one back end's front (validation accuracy vs its measured latency ``key``): the
    full network (position 0) first, then slowest to fastest, the order its runtime steps through them."""
    from edgeskip.front import Point, stepping_order

    return stepping_order([Point(c["val_accuracy"], c[key], c["n_skipped"]) for c in configs], 0)


IREE_INT8 = (
    "not compiled: IREE's llvm-cpu int8 path ran 3.5-5.3x slower than its float path per ResNet-20 block on "
    "this CPU, and iree-compile rejects the whole int8 ResNet-20 with the bundle's flags (bench/README.md "
    "section 9); IREE targets step through the skip-only front"
)


def int8_weight_bytes(model: Any) -> dict[str, int]:
    """Bytes of the gated blocks' float convolution weights and of their int8 variants' weights and biases
    (what an int8 variant adds where both are loaded); ``rest_int8``: the int8 rest's weights and biases."""
    out = {"float": 0, "int8": 0}
    for b, q in model.int8.items():
        block = model.blocks[str(b)]
        out["float"] += 4 * (block.conv1.weight.numel() + block.conv2.weight.numel())
        out["int8"] += q.w1.numel() + q.w2.numel() + 4 * (q.b1.numel() + q.b2.numel())
    if model.int8_rest is not None:  # the stem's, the ungated blocks' and the classifier's int8 variants
        out["rest_int8"] = sum(
            t.numel() * t.element_size() for m in model.int8_rest.values() for t in m.buffers(recurse=False)
        )
    return out


def fastest_front(configs: Sequence[dict[str, Any]], front: Sequence[int], key: str = "latency_s_onnxruntime") -> float:
    """The least latency a front reaches (its last, fastest config)."""
    return min(configs[i][key] for i in front)


def build_bundle(
    ck: Checkpoint,
    splits: Splits,
    out: str | os.PathLike,
    targets: Sequence[Target],
    repeats: int = 30,
    force: bool = False,
    log: Log = print,
    int8: bool = False,
    calibration_images: int = 512,
    int8_rest: bool = True,
    search: SearchSpec = DEFAULT,
) -> Path:
    """Sensitivity, measured-latency Pareto front, export, compile, verify; write the bundle atomically.

    ``search``: where the skip-only candidates come from (:mod:`edgeskip.pareto.search`).
    ``int8``: fractional depth (int8 block variants calibrated on ``calibration_images`` training images; the
    {full, int8, skip} design space measured on onnxruntime; per-back-end fronts). ``int8_rest``: with ``int8``, the
    stem, the ungated blocks and the head are an int8 option too (issue #34)."""
    out, targets = Path(out), with_host(targets)
    check_out(out, force)
    model = ck.model()
    search.check(model.cfg.num_gates)
    calibration = None
    if int8 and not hasattr(model, "attach_int8"):
        raise EdgeskipError(f"--int8 block variants exist for edgeskip's own ResNet blocks, not {model.cfg.name}'s")
    rest_calibration = None
    if int8:
        from edgeskip.models.quant import calibrate, calibrate_rest

        log(f"calibrating int8 block variants on {calibration_images} training images ...")
        batches = calibration_batches(splits, calibration_images)
        calibration = calibrate(model, batches, model.cfg.gated_blocks)
        model.attach_int8(calibration)
        if int8_rest:
            rest_calibration = calibrate_rest(model, batches)
            model.attach_int8_rest(rest_calibration)
    with staging(out) as (tmp, work):
        t0 = time.time()
        (tmp / "onnx").mkdir()
        log("compiling every candidate config for this host (one module, shared weights) and measuring it ...")
        lat = IreeLatency(model, tmp / "iree", work, repeats=repeats, targets=targets)
        source: IreeLatency | IreeOrOrt = lat
        if not int8:  # where IREE cannot compile the model, onnxruntime runs it (int8 bundles need IREE's float side)
            source = IreeOrOrt(lat, lambda gated: OrtLatency(model, work / "ort", repeats=repeats, gated=gated), log)
        sens, front = design_space(model, splits, ck.dataset_id, latency=source, search=search)
        if lat.tiling and lat.tiling["measured"]:
            times = ", ".join(f"{n} {t * 1e3:.3f} ms" for n, t in lat.tiling["seconds"].items())  # type: ignore[attr-defined]
            log(f"host: static functions {lat.tiling['static']} (measured, every config: {times})")
        unavailable = source.unavailable if isinstance(source, IreeOrOrt) else None
        if unavailable:
            shutil.rmtree(tmp / "iree", ignore_errors=True)
        configs = front["configs"]
        frac = None
        if int8:
            log("fractional design space {full, int8, skip} per block, measured on onnxruntime ...")
            frac = fractional_space(
                model,
                splits,
                OrtLatency(model, work / "ort", repeats=repeats, gated=lat.gated),
                [c["skip"] for c in front["candidates"]],
                screen_images=search.screen_for(len(splits.val)),  # the walk's steps, screened as the beam's levels
            )
            configs = _union_configs(front, frac)
            new = [c["skip"] for c in configs if "options" not in c and module_name(c["skip"]) not in lat.built]
            if new:  # float configs of the fractional front; int8 ones run on onnxruntime only (IREE_INT8)
                log(f"compiling the {len(new)} float configs of the fractional front into the modules ...")
                lat.measure(new)  # adds their functions; they are timed below, beside the others
        for c in configs:
            c["module"] = module_name(doc_options(c))
        others = [t.name for t in lat.targets if t.name != "host"]
        if others and not unavailable:
            log(f"compiling the module for {', '.join(others)} (every config measured, one module each) ...")
            lat.finish()

        log("exporting ONNX graphs and verifying them against PyTorch ...")
        gated_onnx = tmp / "onnx" / "gated.onnx"
        assert lat.gated is not None  # design_space measured, so the gated graph was exported
        shutil.copyfile(lat.gated, gated_onnx)  # exported once, while measuring
        # every candidate's static graph, as exported while measuring (the one IREE compiled, where it did): the
        # front's configs, and the others a board's own front may choose (edgeskip profile); all of them over one
        # file of weights, so a graph costs its nodes only
        sources = [work / "ort"] if unavailable else [lat.work, work / "ort"]
        carried = carry_candidates(model, tmp / "onnx", candidate_arrays(front, frac), sources, lat.gated)
        static = {tuple(bool(v) for v in c["skip"]): carried[c["module"]] for c in configs if "options" not in c}
        quantized = {doc_options(c): carried[c["module"]] for c in configs if "options" in c}
        sharing = share_onnx_weights(sorted((tmp / "onnx").glob("*.onnx")), tmp / "onnx" / ONNX_WEIGHTS)
        log(
            f"onnxruntime graphs for {len(carried)} candidate configs over one copy of the weights "
            f"({sharing['bytes_in_graphs'] / 2**20:.1f} MiB of initializers in {sharing['graphs']} graphs -> "
            f"{sharing['bytes_shared'] / 2**20:.1f} MiB)"
        )
        floats = [c for c in configs if "options" not in c]  # the IREE module's configs
        xb, _ = next(iterate(splits.test, splits.norm, 8))
        g = model.cfg.num_gates
        rng = np.random.default_rng(0)
        extra = [(True,) * g, (False,) * g] + [tuple(bool(v) for v in rng.integers(0, 2, g)) for _ in range(3)]
        onnx_check = verify_onnx(model, xb, gated_onnx, extra, static)
        if quantized:
            xq, _ = next(iterate(splits.test, splits.norm, 32))  # a quantile needs more images than the float check
            onnx_check.update({f"int8_{k}": v for k, v in verify_int8(model, xq, quantized).items()})

        images = xb.numpy().astype(np.float32)
        if unavailable:
            iree_check: dict[str, Any] = {"available": False, "reason": unavailable}
        else:
            log("verifying compiled modules ...")
            iree_check = _verify_iree(tmp, lat.targets, images, floats, extra, log)
        for name, why in lat.dropped.items():  # a target IREE could not compile; the others stand
            iree_check[name] = {"compiled": False, "reason": why}

        log("measuring onnxruntime" + ("" if unavailable else " vs IREE") + " on the front ...")
        ort_lat = ort_static_latency(model, [doc_options(c) for c in configs], tmp / "onnx", repeats=repeats)
        if int8:  # one interleaved IREE run over its configs (the front's were timed apart from the others)
            iree_lat = host_latency(tmp, floats, (model.cfg.in_channels, *model.cfg.input_size), repeats)
            for c, t in zip(floats, iree_lat):
                c["latency_s"] = t
        for c, o in zip(configs, ort_lat):
            c["latency_s_onnxruntime"] = o
            if "options" in c or unavailable:
                c["latency_s"] = o  # onnxruntime is the only back end that runs it
            else:
                c["iree_over_onnxruntime"] = c["latency_s"] / o
        faster = (
            "onnxruntime"
            if unavailable or sum(c["latency_s_onnxruntime"] for c in floats) < sum(c["latency_s"] for c in floats)
            else "iree"
        )
        fronts = {}
        if int8:
            fronts = {
                "iree": [floats[i]["index"] for i in backend_front(floats, "latency_s")],
                "onnxruntime": backend_front(configs, "latency_s_onnxruntime"),
            }
            if fastest_front(configs, fronts["onnxruntime"]) < fastest_front(configs, fronts["iree"], "latency_s"):
                faster = "onnxruntime"

        write_design(tmp, sens, front)
        if frac is not None:
            write_json(tmp / "fractional.json", frac)
        ck.save(tmp / "model.pt", slim=True)
        sample = write_sample(tmp, splits)
        cfg = model.cfg
        functions = tuple(lat.functions)  # every measured candidate: the front's configs and the others
        iree_entry = (
            None
            if unavailable
            else IreeEntry(
                "iree/weights.irpa",
                "model.vmfb",
                functions,
                common_flags=tuple(f for f in COMMON_FLAGS if all(f in t.flags() for t in lat.targets)),
            )
        )
        target_entries = {} if unavailable else targets_manifest(lat.targets)  # as compiled: raised stack limits
        int8_doc = None
        if calibration is not None:
            int8_doc = {
                "blocks": {str(b): q.to_dict() for b, q in calibration.items()},
                **({"rest": rest_calibration.to_dict()} if rest_calibration is not None else {}),
                "calibration": {"split": "train", "images": calibration_images, "method": "minmax"},
                "scheme": "QDQ: activations uint8 per tensor, weights int8 symmetric per tensor, BN folded",
                "iree": IREE_INT8,
                "weight_bytes": int8_weight_bytes(model),
            }
        manifest = Manifest(
            kind="edgeskip",
            model=cfg.to_dict(),
            input=InputSpec(("N", cfg.in_channels, *cfg.input_size)),
            normalization=Normalization(tuple(ck.norm.mean), tuple(ck.norm.std)),
            class_names=tuple(ck.class_names),
            dataset_id=ck.dataset_id,
            num_gates=g,
            gated_blocks=tuple(cfg.gated_blocks),
            configs=tuple(
                ConfigEntry(
                    c["index"],
                    c["module"],
                    c["n_skipped"],
                    c["val_accuracy"],
                    c["test_accuracy"],
                    c["macs"],
                    c["latency_s"],
                    tuple(int(v) for v in c["skip"]),
                    {"latency_s_onnxruntime": c["latency_s_onnxruntime"]},
                    tuple(c["options"]) if "options" in c else None,
                    bool(c.get("int8_rest")),
                )
                for c in configs
            ),
            targets=target_entries,
            iree=iree_entry,
            host_fastest=faster,
            onnx={
                "gated": "onnx/gated.onnx",
                **{m: f"onnx/{m}.onnx" for m in carried},  # the configs' among them
            },
            onnx_weights=f"onnx/{ONNX_WEIGHTS}",
            sample=sample,
            extra={
                "created_unix": int(time.time()),
                "tools": tool_versions(),
                "gated": {"inputs": ["image", "skip"], "skip": {"dtype": "bool", "shape": [g]}},
                "backend": {
                    "latency_source": source.name,
                    "onnxruntime_threads": 1,
                    **({"iree_unavailable": unavailable} if unavailable else {"iree_driver": "local-sync"}),
                },
                "verification": {"tolerance": TOLERANCE, "onnx": onnx_check, "iree": iree_check},
                "onnx_sharing": sharing,
                "build_seconds": round(time.time() - t0, 1),
            },
            fronts={k: tuple(v) for k, v in fronts.items()},
            int8=int8_doc,
        )
        finish_bundle(tmp, out, manifest)
    return out


def host_latency(bundle: Path, configs: Sequence[dict[str, Any]], shape: Sequence[int], repeats: int) -> list[float]:
    """Batch-1 latency of each config's function in the bundle's merged host module (interleaved medians)."""
    from edgeskip.pareto.latency import interleaved_median

    weights = bundle / "iree" / "weights.irpa"
    ex = SharedIreeExecutor(
        weights, [bundle / "iree" / "host" / "model.vmfb"], functions=["gated", *[c["module"] for c in configs]]
    )
    x = np.random.default_rng(0).standard_normal((1, *shape), np.float32)
    return interleaved_median([lambda k=k: ex.run(k, x) for k in range(1, len(configs) + 1)], repeats, 3)
