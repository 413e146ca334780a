"""Issue #15, the first question: at batch 1, is an int8 residual block faster than the float block, on which
back end? One gated block per stage of a trained ResNet-20 (16/32/64 channels at 32x32/16x16/8x8), exported
alone as ONNX (float) and as QDQ ONNX (onnxruntime's static quantisation: weights and activations int8,
per-tensor; weights symmetric int8, activations symmetric int8 ("s8s8") or asymmetric uint8 ("u8s8")),
then timed side by side, interleaved, in one run:

- onnxruntime on this host (1 thread; its int8 kernels use VNNI where the CPU has it),
- IREE llvm-cpu for this host (the QDQ graph through iree-import-onnx; a failure is recorded, not hidden).

Calibration here is on random normal activations: it sets the scales, which do not change the work done, so
the latencies are those of a properly calibrated block; accuracy is not measured here (that is #15's PTQ).

    python bench/int8_blocks.py --checkpoint bench/results/r20_sd.pt --out bench/results
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgeskip.pareto.latency import interleaved_median
from edgeskip.train import load_checkpoint
from edgeskip.utils.atomic import write_json


class Block(torch.nn.Module):
    """One residual block as a network of its own: x -> relu(x + F(x))."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.block.branch(x))


def export(module: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    torch.onnx.export(
        module, (torch.zeros(shape),), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False
    )


QUANT = {"s8s8": "QInt8", "u8s8": "QUInt8"}  # activation type (weights are int8, symmetric, per tensor)


def quantize(
    src: Path, dst: Path, shape: tuple[int, ...], act: str, n: int = 32, calibration: list[np.ndarray] | None = None
) -> None:
    """QDQ int8 of ``src``: onnxruntime's pre-processing first (BN folded into initializer biases: without
    it the biases stay float and the convolutions are not fused into int8 kernels), then static
    quantisation with ``act`` activations ("s8s8": symmetric int8; "u8s8": asymmetric uint8, the pairing
    x86 VNNI kernels take natively), calibrated on ``calibration`` (default: ``n`` random normal batches)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            data = calibration or [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]
            self.batches = iter([{"x": b} for b in data])

        def get_next(self):  # noqa: ANN201 - onnxruntime's interface
            return next(self.batches, None)

    pre = dst.with_name(dst.stem + "_pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(
        str(pre),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        activation_type=getattr(QuantType, QUANT[act]),
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": act == "s8s8", "WeightSymmetric": True},
    )


def time_interleaved(fns: dict[str, object], repeats: int, warmup: int = 20) -> dict[str, float]:
    """Median seconds per call of each named function, called round-robin (edgeskip's interleaved timing)."""
    return dict(zip(fns, interleaved_median(list(fns.values()), repeats, warmup)))  # type: ignore[arg-type]


def iree_host(onnx_path: Path, work: Path) -> tuple[object | None, str | None]:
    """A callable running the graph with IREE on this host, or (None, why not)."""
    from edgeskip.backends.iree import IreeModule
    from edgeskip.errors import EdgeskipError
    from edgeskip.export.iree_compile import TARGETS, compile_mlir, import_onnx

    try:
        mlir = import_onnx(onnx_path, work / (onnx_path.stem + ".mlir"))
        vmfb = compile_mlir(mlir, TARGETS["host"], work / (onnx_path.stem + ".vmfb"))
    except EdgeskipError as e:
        return None, str(e)[:300]
    return IreeModule(vmfb), None


def measure_block(label: str, model: torch.nn.Module, i: int, work: Path, repeats: int) -> dict:
    """Float vs int8 of block ``i`` on onnxruntime and IREE (host), timed round-robin."""
    import onnxruntime as ort

    block = model.blocks[str(i)]
    ch = block.conv1.in_channels
    side = model.cfg.input_size[0] >> (i // ((model.cfg.depth - 2) // 6))
    shape = (1, ch, side, side)
    stem = re.sub(r"\W+", "_", f"{label} block{i}")
    f32 = work / f"{stem}.onnx"
    export(Block(block), shape, f32)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    graphs = {"fp32": f32}
    for act in QUANT:
        graphs[act] = work / f"{stem}_{act}.onnx"
        quantize(f32, graphs[act], shape, act)
    row: dict = {"model": label, "block": i, "shape": list(shape), "macs": 2 * 9 * ch * ch * side * side}
    fns = {}
    y32 = None
    for kind, path in graphs.items():
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        fns[f"ort_{kind}"] = lambda s=sess: s.run(None, {"x": x})
        y = sess.run(None, {"x": x})[0]
        y32 = y if y32 is None else y32
        row[f"ort_{kind}_rel_error"] = float(np.abs(y - y32).max() / (np.abs(y32).max() + 1e-12))
        mod, why = iree_host(path, work)
        if mod is None:
            row[f"iree_{kind}_error"] = why
            continue
        fns[f"iree_{kind}"] = lambda m=mod: m(x)
        row[f"iree_{kind}_rel_error"] = float(np.abs(np.asarray(mod(x)) - y32).max() / (np.abs(y32).max() + 1e-12))
    med = time_interleaved(fns, repeats)
    row["median_s"] = med
    row["int8_over_fp32"] = {
        f"{be}_{act}": med[f"{be}_{act}"] / med[f"{be}_fp32"]
        for be in ("ort", "iree")
        for act in QUANT
        if f"{be}_{act}" in med and f"{be}_fp32" in med
    }
    print(
        f"{label}: block {i} {shape}: "
        + "  ".join(f"{k} {v * 1e6:.1f} us" for k, v in med.items())
        + "  int8/fp32: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in row["int8_over_fp32"].items())
        + "".join(f"  [{k}: {v[:120]}]" for k, v in row.items() if k.endswith("_error") and isinstance(v, str)),
        flush=True,
    )
    return row


def whole_network(ck_path: Path, work: Path, repeats: int, calib_images: int = 512) -> dict:
    """The whole trained network in int8 (u8s8 and s8s8) vs float on onnxruntime: top-1 on the validation
    and test splits, batch-1 latency. Calibration on a seeded random subset of the *training* split."""
    import onnxruntime as ort

    from edgeskip.data.batches import iterate

    ck = load_checkpoint(ck_path)
    model = ck.model()
    splits = ck.data.load()
    shape = (1, *splits.shape)
    f32 = work / "net.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(shape),),
        str(f32),  # every block executed (no skip input)
        input_names=["x"],
        output_names=["y"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    calib = [xb.numpy() for xb, _ in iterate(splits.train, splits.norm, 64, shuffle=True, seed=12345)]
    calib = calib[: max(1, calib_images // 64)]
    graphs = {"fp32": f32}
    for act in QUANT:
        graphs[act] = work / f"net_{act}.onnx"
        quantize(f32, graphs[act], shape, act, calibration=calib)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = {k: ort.InferenceSession(str(v), opts, providers=["CPUExecutionProvider"]) for k, v in graphs.items()}
    out: dict = {"checkpoint": str(ck_path), "calibration_images": len(calib) * 64, "accuracy": {}}
    for split in ("val", "test"):
        ds = getattr(splits, split)
        correct = {k: 0 for k in sess}
        for xb, yb in iterate(ds, splits.norm, 250):
            for k, s_ in sess.items():
                correct[k] += int((s_.run(None, {"x": xb.numpy()})[0].argmax(1) == yb.numpy()).sum())
        out["accuracy"][split] = {k: c / len(ds) for k, c in correct.items()}
    x = np.ascontiguousarray(next(iterate(splits.test, splits.norm, 1))[0].numpy())
    med = time_interleaved({k: (lambda s_=s_: s_.run(None, {"x": x})) for k, s_ in sess.items()}, repeats)
    out["median_s"] = med
    out["int8_over_fp32"] = {act: med[act] / med["fp32"] for act in QUANT}
    acc = out["accuracy"]
    print(
        "whole network, onnxruntime: "
        + "  ".join(f"{k}: val {acc['val'][k]:.4f} test {acc['test'][k]:.4f} {med[k] * 1e6:.0f} us" for k in sess),
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("bench/results/r20_sd.pt"))
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument(
        "--wide",
        type=int,
        default=4,
        help="also time the blocks of a randomly initialised ResNet-20 this many times wider "
        "(0: skip), to see where int8 starts to pay",
    )
    ap.add_argument(
        "--network",
        action="store_true",
        help="also the whole network in int8 on onnxruntime: accuracy (val/test) and latency",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from edgeskip.models import ResNetConfig, build_model

    torch.set_num_threads(1)
    trained = load_checkpoint(args.checkpoint).model()
    models = [("trained ResNet-20", trained)]
    if args.wide:
        torch.manual_seed(0)
        cfg = trained.cfg
        wide = ResNetConfig(**{**cfg.to_dict(), "widths": tuple(w * args.wide for w in cfg.widths)})
        models.append((f"ResNet-20 x{args.wide} random", build_model(wide).eval()))
    work = Path(tempfile.mkdtemp(prefix="int8-"))
    res: dict = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "checkpoint": str(args.checkpoint),
        "onnxruntime": ort.__version__,
        "cpu_flags": sorted(
            {
                f
                for f in Path("/proc/cpuinfo").read_text().split()
                if f in ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
            }
        ),
        "calibration": "random normal activations (scales only; accuracy not measured)",
        "blocks": [],
    }
    try:
        for label, model in models:
            per_stage = (model.cfg.depth - 2) // 6
            gated = [int(k) for k, b in model.blocks.items() if isinstance(b.shortcut, torch.nn.Identity)]
            for stage in range(3):  # each stage's first gated block
                i = next(k for k in gated if k // per_stage == stage)
                res["blocks"].append(measure_block(label, model, i, work, args.repeats))
        if args.network:
            res["network"] = whole_network(args.checkpoint, work, args.repeats)
    finally:
        subprocess.run(["rm", "-rf", str(work)])
    write_json(args.out / "int8_blocks.json", res)


if __name__ == "__main__":
    main()
