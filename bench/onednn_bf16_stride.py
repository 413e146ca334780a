"""Reproducer: PyTorch's CPU bf16 autocast returns a wrong weight gradient for a convolution that strides past its
input (torch 2.13.0+cpu, oneDNN, a CPU with native bf16: AVX512-BF16/AMX); edgeskip's workaround.

One ``nn.Conv2d(16, 32, k, stride=s, padding=p)`` on a [128, 16, H, H] input, forward under
``torch.autocast("cpu", dtype=torch.bfloat16)``, backward of ``mean(y**2)``, against the same layer in fp32. The
output and the input gradient agree to bf16's rounding (~0.5%); the weight gradient does not where the stride
exceeds the input (s > H, k > 1): it holds stale memory (relative error up to 1e38, or NaN), different from one call
to the next. Found when ``edgeskip train --model timm:resnet18`` on 8x8 digits (layer4's stride-2 3x3 convolution
on a 1x1 map) diverged in 6 of 6 runs and, worse, trained on garbage without diverging in others.

Each case runs ``--trials`` times with fresh weights; a trial is wrong where the weight gradient's largest
difference from fp32 exceeds 10% of fp32's largest entry. ``plain`` is torch's autocast, ``edgeskip`` is
:func:`edgeskip.train.precision.autocast` (those convolutions in fp32, every other op in bf16).

    python bench/onednn_bf16_stride.py --out bench/results
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from edgeskip.train.precision import autocast, cpu_has_native_bf16
from edgeskip.utils.atomic import write_json

# (H, kernel, stride, padding): the stride exceeds the input in the first five, not in the rest
CASES = [(1, 3, 2, 1), (1, 3, 3, 1), (1, 5, 2, 2), (2, 3, 3, 1), (3, 3, 4, 1), (2, 3, 2, 1), (4, 3, 2, 1)]
CASES += [(7, 3, 1, 1), (1, 1, 2, 0), (1, 3, 1, 1)]


def trial(h: int, k: int, s: int, p: int, context, channels_last: bool, seed: int) -> dict:
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(16, 32, k, stride=s, padding=p)
    x = torch.randn(128, 16, h, h, requires_grad=True)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    with context():
        y = conv(x)
    y.float().square().mean().backward()
    got = {"y": y.detach().float(), "dx": x.grad.clone(), "dw": conv.weight.grad.clone()}
    x.grad = conv.weight.grad = None
    ref_y = conv(x)
    ref_y.square().mean().backward()
    ref = {"y": ref_y.detach(), "dx": x.grad, "dw": conv.weight.grad}
    return {
        n: float(((got[n] - ref[n]).abs().max() / ref[n].abs().max().clamp_min(1e-12)).nan_to_num(1e30)) for n in ref
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    contexts = {
        "plain": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        "edgeskip": lambda: autocast("bf16"),
    }
    rows = []
    for h, k, s, p in CASES:
        for layout in ("channels_last", "nchw"):
            row = {"input": h, "kernel": k, "stride": s, "padding": p, "layout": layout}
            for name, ctx in contexts.items():
                errs = [trial(h, k, s, p, ctx, layout == "channels_last", seed) for seed in range(args.trials)]
                row[name] = {
                    "wrong": sum(e["dw"] > 0.1 for e in errs),
                    "worst_dw": max(e["dw"] for e in errs),
                    "worst_y": max(e["y"] for e in errs),
                    "worst_dx": max(e["dx"] for e in errs),
                }
            rows.append(row)
            print(
                f"H={h} k={k} s={s} p={p} {layout:13s}  plain: {row['plain']['wrong']}/{args.trials} wrong "
                f"(worst dW {row['plain']['worst_dw']:.2g})  edgeskip: {row['edgeskip']['wrong']}/{args.trials} "
                f"(worst dW {row['edgeskip']['worst_dw']:.2g})",
                flush=True,
            )
    doc = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "torch": torch.__version__,
        "native_bf16": cpu_has_native_bf16(),
        "trials": args.trials,
        "rows": rows,
    }
    write_json(args.out / "onednn_bf16_stride.json", doc)


if __name__ == "__main__":
    main()
