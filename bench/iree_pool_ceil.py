"""Reproducer (issue #35): IREE llvm-cpu computes ceil-mode ``AveragePool`` wrong in two cases; edgeskip's rewrite.

One ONNX ``AveragePool`` node (opset 18, ``ceil_mode=1``) on a float32 [N, 3, H, H] input, imported with
``iree-import-onnx`` and compiled for the host with the bundle's flags (IREE 3.13, llvm-cpu, local-sync), against
PyTorch's ``avg_pool2d`` (the reference; onnxruntime agrees with it in every case). Found on timm's ``resnet10t``
(its ``avg_down`` shortcut: ``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)``), whose bundle failed
verification by 1.15e+02.

Every case of H in {7, 8}, kernel in {2, 3}, stride in {1, 2}, padding in {0, 1}, ``count_include_pad`` in
{0, 1}, batch dynamic or static, is compiled twice: as it is, and after
:func:`edgeskip.export.onnx_export.fix_average_pools`. A case is wrong where the largest difference from PyTorch
exceeds 1e-5.

    python bench/iree_pool_ceil.py --out bench/results
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeskip.utils.atomic import write_json


def pool_model(h: int, k: int, s: int, p: int, cip: int, dynamic: bool):
    from onnx import TensorProto, helper

    from edgeskip.export.onnx_export import _pool_out

    b: int | str = "N" if dynamic else 2
    out = _pool_out(h, k, s, p, p, True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, 3, h, h])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, 3, out, out])
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, ceil_mode=1,
        count_include_pad=cip,
    )  # fmt: skip
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()

    import onnx
    import torch

    from edgeskip.backends.iree import IreeModule
    from edgeskip.backends.ort import ort_session
    from edgeskip.export.iree_compile import TARGETS, compile_mlir, import_onnx
    from edgeskip.export.onnx_export import _pool_out, fix_average_pools

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for dynamic, h, k, s, p, cip in itertools.product([True, False], [7, 8], [2, 3], [1, 2], [0, 1], [0, 1]):
            if p > k // 2:
                continue  # ONNX and PyTorch require padding <= kernel / 2
            x = rng.standard_normal((2, 3, h, h)).astype(np.float32)
            ref = torch.nn.functional.avg_pool2d(
                torch.from_numpy(x), k, s, p, ceil_mode=True, count_include_pad=bool(cip)
            ).numpy()
            row = {
                "batch": "dynamic" if dynamic else "static",
                "H": h, "kernel": k, "stride": s, "pad": p, "count_include_pad": cip,
                "ceil_changes_output": _pool_out(h, k, s, p, p, True) != _pool_out(h, k, s, p, p, False),
            }  # fmt: skip
            model = pool_model(h, k, s, p, cip, dynamic)
            for name in ("as_is", "rewritten"):
                if name == "rewritten":
                    row["rewrites"] = fix_average_pools(model)
                path = work / f"{name}.onnx"
                onnx.save(model, str(path))
                got_ort = ort_session(path).run(None, {"x": x})[0]
                vmfb = compile_mlir(import_onnx(path, work / f"{name}.mlir"), TARGETS["host"], work / f"{name}.vmfb")
                got = np.asarray(IreeModule(vmfb, function="g")(x))
                row[f"onnxruntime_{name}"] = float(np.abs(got_ort - ref).max())
                row[f"iree_{name}"] = float(np.abs(got - ref).max()) if got.shape == ref.shape else "shape"
            rows.append(row)
            print({k: v for k, v in row.items()}, flush=True)

    def wrong(r, key):
        return r[key] == "shape" or r[key] > 1e-5

    doc = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "tolerance": 1e-5,
        "cases": len(rows),
        "iree_wrong_as_is": sum(wrong(r, "iree_as_is") for r in rows),
        "iree_wrong_rewritten": sum(wrong(r, "iree_rewritten") for r in rows),
        "onnxruntime_wrong": sum(wrong(r, "onnxruntime_as_is") or wrong(r, "onnxruntime_rewritten") for r in rows),
        "rows": rows,
    }
    for key in ("cases", "iree_wrong_as_is", "iree_wrong_rewritten", "onnxruntime_wrong"):
        print(key, doc[key])
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "iree_pool_ceil.json", doc)


if __name__ == "__main__":
    main()
