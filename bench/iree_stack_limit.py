"""Reproducer (issue #35): IREE llvm-cpu refuses timm's MobileNetV3 for its stack limit; a raised limit compiles it.

timm ``mobilenetv3_small_050`` (untrained, 1-channel 8x8 input, the digits size; 10 classes) is cut by edgeskip
(``ChainNet``, every gated block on), exported to ONNX (dynamic batch), imported and compiled with the bundle's
flags for the host. With IREE's default limit (32 KiB) ``iree-compile`` fails: "'func.func' op exceeded stack
allocation limit of 32768 bytes for function. Got 148480 bytes". The script then:

1. rewrites every 1x1 depthwise convolution (the 5x5 depthwise on a 1x1 map, after edgeskip's dead-tap crop) as a
   per-channel multiply-add, which is exact, to test whether those layers are the cause;
2. compiles the original graph with ``--iree-llvmcpu-stack-allocation-limit`` raised to the next power of two above
   what the compiler asked for, and compares the module's output with onnxruntime's on random inputs.

    python bench/iree_stack_limit.py --out bench/results
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeskip.utils.atomic import write_json


def depthwise_1x1_as_mul(src: Path, dest: Path) -> int:
    """Every 1x1, stride-1, unpadded depthwise Conv of ``src`` as Mul (+ Add for its bias); returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    nodes, changed = [], 0
    for n in m.graph.node:
        at = {a.name: a for a in n.attribute}
        group = at["group"].i if "group" in at else 1
        w = numpy_helper.to_array(inits[n.input[1]]) if n.op_type == "Conv" and n.input[1] in inits else None
        plain = (list(at["strides"].ints) if "strides" in at else [1, 1]) == [1, 1] and not any(
            at["pads"].ints if "pads" in at else []
        )
        if w is None or group == 1 or w.shape != (group, 1, 1, 1) or not plain:
            nodes.append(n)
            continue
        scale = n.input[1] + "__scale"
        m.graph.initializer.append(numpy_helper.from_array(w.reshape(1, group, 1, 1).copy(), scale))
        product = n.output[0] + "__product" if len(n.input) > 2 else n.output[0]
        nodes.append(helper.make_node("Mul", [n.input[0], scale], [product]))
        if len(n.input) > 2:
            bias = n.input[2] + "__bias"
            b = numpy_helper.to_array(inits[n.input[2]]).reshape(1, group, 1, 1).copy()
            m.graph.initializer.append(numpy_helper.from_array(b, bias))
            nodes.append(helper.make_node("Add", [product, bias], [n.output[0]]))
        changed += 1
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(dest))
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()

    import re

    import torch

    from edgeskip.backends.iree import IreeModule
    from edgeskip.backends.ort import ort_session
    from edgeskip.errors import EdgeskipError
    from edgeskip.export.iree_compile import TARGETS, compile_mlir, import_onnx
    from edgeskip.export.onnx_export import export_static
    from edgeskip.models import NetConfig, zoo
    from edgeskip.models.chain import ChainNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = "timm:mobilenetv3_small_050"
    source = zoo.create(spec, 10, 1, {})
    net = ChainNet(NetConfig(spec, input_size=(8, 8), in_channels=1), source).eval()
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    host = TARGETS["host"]
    doc: dict = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "model": spec}

    def attempt(onnx_path: Path, work: Path, name: str, extra: list[str]) -> dict:
        mlir = import_onnx(onnx_path, work / f"{name}.mlir")
        t0 = time.perf_counter()
        try:
            vmfb = compile_mlir(mlir, host, work / f"{name}.vmfb", extra=extra)
        except EdgeskipError as e:
            got = re.search(r"limit of (\d+) bytes.*Got (\d+) bytes", str(e))
            return {"compiled": False, "error": str(e)[-200:], "asked_bytes": int(got.group(2)) if got else None}
        ref = ort_session(onnx_path).run(None, {"image": x})[0]
        out = np.asarray(IreeModule(vmfb)(x))
        scale = max(1.0, float(np.abs(ref).max()))
        return {
            "compiled": True,
            "compile_s": round(time.perf_counter() - t0, 1),
            "iree_vs_onnxruntime": float(np.abs(out - ref).max() / scale),
        }

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        graph = export_static(net, [1] * net.cfg.num_gates, work / "mv3.onnx")
        doc["default_limit"] = attempt(graph, work, "default", [])
        rewritten = work / "mv3_mul.onnx"
        doc["depthwise_1x1_rewritten"] = {"count": depthwise_1x1_as_mul(graph, rewritten)}
        doc["depthwise_1x1_rewritten"].update(attempt(rewritten, work, "mul", []))
        asked = doc["default_limit"].get("asked_bytes") or 32768
        limit = 1 << (int(asked) - 1).bit_length()
        doc["raised_limit"] = {"limit_bytes": limit}
        doc["raised_limit"].update(attempt(graph, work, "raised", [f"--iree-llvmcpu-stack-allocation-limit={limit}"]))
    for k in ("default_limit", "depthwise_1x1_rewritten", "raised_limit"):
        print(k, doc[k])
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "iree_stack_limit.json", doc)


if __name__ == "__main__":
    main()
