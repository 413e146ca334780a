"""ONNX export time with a model's in-place activations traced as they are, and run out of place (issue #35).

torch.export functionalises every in-place op it traces (``ReLU6(inplace=True)`` becomes ``hardtanh_``, decomposed
through torch's reference implementations), and with a dynamic batch each of those steps does symbolic-shape
arithmetic. ``edgeskip.export.onnx_export.export_graph`` now sets every ``inplace`` flag off while it exports
(``out_of_place``; the same numbers) and restores them. This times ``export_graph`` on torchvision models (untrained,
32x32, batch dynamic) both ways, alternating, and checks the two graphs compute the same.

    python bench/export_inplace.py --repeats 2 --out bench/results
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeskip.utils.atomic import write_json

MODELS = [("mobilenet_v2", {"width_mult": 0.25}), ("mobilenet_v3_small", {"width_mult": 0.25}), ("resnet18", {})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()

    import torch

    from edgeskip.backends.ort import ort_session
    from edgeskip.export import onnx_export
    from edgeskip.models.zoo import import_torchvision

    torch.set_num_threads(1)
    import_torchvision()
    import torchvision

    class Image(torch.nn.Module):  # export_graph names its input "image"
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.net(image)

    shipped = onnx_export.out_of_place
    rows = []
    x = torch.randn(2, 3, 32, 32)
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in MODELS:
            net = Image(getattr(torchvision.models, name)(num_classes=10, **kw).eval())
            flags = sum(1 for m in net.modules() if getattr(m, "inplace", None) is True)
            times: dict[str, list[float]] = {"in_place": [], "out_of_place": []}
            for _ in range(args.repeats):
                for mode in times:
                    onnx_export.out_of_place = (
                        shipped if mode == "out_of_place" else (lambda m: contextlib.nullcontext())
                    )
                    t0 = time.perf_counter()
                    onnx_export.export_graph(net, (x,), ["image"], Path(tmp) / f"{name}_{mode}.onnx")
                    times[mode].append(time.perf_counter() - t0)
            onnx_export.out_of_place = shipped
            outs = [ort_session(Path(tmp) / f"{name}_{m}.onnx").run(None, {"image": x.numpy()})[0] for m in times]
            row = {
                "model": f"torchvision:{name}",
                "kwargs": kw,
                "inplace_modules": flags,
                "seconds_in_place": min(times["in_place"]),
                "seconds_out_of_place": min(times["out_of_place"]),
                "ratio": min(times["out_of_place"]) / min(times["in_place"]),
                "max_abs_diff": float(np.abs(outs[0] - outs[1]).max()),
            }
            print(row, flush=True)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "rows": rows}
    write_json(args.out / "export_inplace.json", doc)


if __name__ == "__main__":
    main()
