"""The zoo matrix (issue #35): each model family from `train` to a verified bundle, on CIFAR-10-sized images.

For every family, one `edgeskip compile --model ...` (a user's process: train one epoch on a CIFAR-10 subset as an
image folder at 32x32, rank, measure, export, compile for host and aarch64, verify under qemu), with a time limit.
Per family it records whether a bundle came out (else the one-line error), the gated blocks, the compiled targets,
parity (gated ONNX vs PyTorch, host IREE vs onnxruntime, aarch64 under qemu vs host), the fastest front config's
speed-up over the full network on IREE, and IREE's latency over onnxruntime's for the full network. One epoch on
a subset trains nothing worth a front's accuracy: the matrix is about what compiles, what agrees and how fast.
The JSON is rewritten after every family, so an interrupted run keeps what it measured.

    python bench/zoo_matrix.py --data-dir ../shared/datasets/cifar10-jpeg --out bench/results
    python bench/zoo_matrix.py --families timm:resnet10t,user --out bench/results   # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from edgeskip.utils.atomic import write_json

USER_MODULE = """
    # a user's own pre-activation ResNet (He et al., 2016): y = x + F(BN-ReLU-conv, BN-ReLU-conv)
    from torch import nn

    class PreAct(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1, bias=False))

        def forward(self, x):
            return x + self.body(x)

    def preact(num_classes, in_channels, width=16, blocks=3):
        layers = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)]
        for stage in range(3):
            c = width << stage
            if stage:
                layers.append(nn.Conv2d(c // 2, c, 3, 2, 1, bias=False))
            layers += [PreAct(c) for _ in range(blocks)]
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
        return nn.Sequential(*layers)
"""

# (label, --model, --model-arg values): small widths where the factory takes one; smallest first
FAMILIES: list[tuple[str, str, list[str]]] = [
    ("user", "usermodels:preact", []),
    ("timm:resnet10t", "timm:resnet10t", []),
    ("timm:mobilenetv3_small_050", "timm:mobilenetv3_small_050", []),
    ("torchvision:mobilenet_v3_small", "torchvision:mobilenet_v3_small", ["width_mult=0.5"]),
    ("torchvision:mobilenet_v2", "torchvision:mobilenet_v2", ["width_mult=0.5"]),
    ("timm:resnet18", "timm:resnet18", []),
    ("timm:efficientnet_b0", "timm:efficientnet_b0", []),
    ("torchvision:mobilenet_v3_large", "torchvision:mobilenet_v3_large", ["width_mult=0.5"]),
    ("torchvision:regnet_x_400mf", "torchvision:regnet_x_400mf", []),
    ("torchvision:regnet_y_400mf", "torchvision:regnet_y_400mf", []),
    ("torchvision:efficientnet_b0", "torchvision:efficientnet_b0", []),
    ("torchvision:resnet18", "torchvision:resnet18", []),
    ("timm:resnet26d", "timm:resnet26d", []),
    ("timm:seresnext26d_32x4d", "timm:seresnext26d_32x4d", []),
    ("torchvision:shufflenet_v2_x0_5", "torchvision:shufflenet_v2_x0_5", []),
    ("torchvision:resnet50", "torchvision:resnet50", []),
    ("torchvision:resnext50_32x4d", "torchvision:resnext50_32x4d", []),
    ("torchvision:wide_resnet50_2", "torchvision:wide_resnet50_2", []),
    ("torchvision:convnext_tiny", "torchvision:convnext_tiny", []),
]


def subset(src: Path, dest: Path, train: int, test: int) -> Path:
    """An image-folder tree of the first ``train``/``test`` images per class of ``src`` (symlinks)."""
    for split, n in (("train", train), ("test", test)):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            out = dest / split / cls.name
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:n]:
                link = out / f.name
                if not link.exists():
                    link.symlink_to(f.resolve())
    return dest


def summarise(bundle: Path) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    v = m["verification"]
    configs = m["configs"]
    full = configs[0]
    fastest = min(configs, key=lambda c: c["latency_s"])
    iree = v["iree"]
    aarch64 = iree.get("aarch64", {})
    flags = {t: [f for f in d["flags"] if "stack-allocation" in f] for t, d in m["targets"].items()}
    if "iree" not in m:  # IREE could not compile it: an onnxruntime-only bundle, with IREE's reason
        return {
            "gated_blocks": m["num_gates"],
            "targets": [],
            "onnxruntime_only": True,
            "iree_unavailable": m["backend"]["iree_unavailable"],
            "gated_vs_torch": v["onnx"].get("gated_vs_torch"),
            "front_configs": len(configs),
            "full_ms_onnxruntime": 1e3 * full["latency_s_onnxruntime"],
            "fastest_skipped": fastest["n_skipped"],
            "fastest_speedup_onnxruntime": full["latency_s"] / fastest["latency_s"],
        }
    return {
        "gated_blocks": m["num_gates"],
        "targets": sorted(m["targets"]),
        "gated_vs_torch": v["onnx"].get("gated_vs_torch"),
        "iree_vs_onnxruntime": iree["host"]["iree_vs_onnxruntime"],
        "aarch64_executed": aarch64.get("executed", False),
        "aarch64_vs_host": aarch64.get("aarch64_vs_host"),
        "raised_stack_limits": {t: f for t, f in flags.items() if f},
        "front_configs": len(configs),
        "full_ms_iree": 1e3 * full["latency_s"],
        "full_ms_onnxruntime": 1e3 * full["latency_s_onnxruntime"],
        "iree_over_onnxruntime_full": full["latency_s"] / full["latency_s_onnxruntime"],
        "fastest_skipped": fastest["n_skipped"],
        "fastest_speedup_iree": full["latency_s"] / fastest["latency_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/datasets/cifar10-jpeg"))
    ap.add_argument("--work", type=Path, default=Path("bench/work/zoo"))
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--families", default="", help="comma-separated labels (default: all)")
    ap.add_argument("--train-per-class", type=int, default=50)
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per family")
    ap.add_argument("--targets", default="host,aarch64")
    args = ap.parse_args()

    wanted = [f.strip() for f in args.families.split(",") if f.strip()]
    families = [f for f in FAMILIES if not wanted or f[0] in wanted]
    args.work.mkdir(parents=True, exist_ok=True)
    data = subset(args.data_dir, args.work / "cifar10-subset", args.train_per_class, args.test_per_class)
    (args.work / "usermodels.py").write_text(textwrap.dedent(USER_MODULE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.work.resolve()), os.environ.get("PYTHONPATH", "")])}
    doc: dict = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "data": f"{args.data_dir}: {args.train_per_class} train / {args.test_per_class} test images per class, 32x32",
        "rows": [],
    }
    out_json = args.out / "zoo_matrix.json"
    args.out.mkdir(parents=True, exist_ok=True)
    for label, spec, margs in families:
        bundle = args.work / label.replace(":", "_")
        cmd = [sys.executable, "-m", "edgeskip", "compile", "--model", spec]
        cmd += [a for m in margs for a in ("--model-arg", m)]
        cmd += ["--dataset", "imagefolder", "--data-dir", str(data), "--image-size", "32x32", "--epochs", "1"]
        cmd += ["--target", args.targets, "--repeats", "5", "--out", str(bundle), "--force", "--quiet"]
        cmd += ["--threads", "1"]
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            rc, err = None, f"timed out after {args.timeout} s"
        row: dict = {"family": label, "model_args": margs, "seconds": round(time.time() - t0, 1), "exit": rc}
        lines = [line for line in (err or "").splitlines() if line.strip()]
        if rc == 0:
            row.update({"bundle": True, **summarise(bundle)})
        else:
            row.update({"bundle": False, "error": lines[-1][:400] if lines else "", "error_lines": len(lines)})
        doc["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_json(out_json, doc)


if __name__ == "__main__":
    main()
