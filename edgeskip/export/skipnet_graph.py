"""SkipNet export: each gate's decision drives an ONNX ``If`` around its block (batch size 1).

Graph: input ``image`` float32 [1, C, H, W]; outputs ``logits`` [1, classes] and ``executed`` bool
[B_s] (the gates' decisions). Every gate runs; a block whose gate says skip costs nothing. Parameter
names are the checkpoint's (``blocks.4.conv1.weight``, ``gates.0.conv1.0.weight``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeskip.backends.ort import ort_session
from edgeskip.errors import EdgeskipError
from edgeskip.export.onnx_export import TOLERANCE, export_spliced, max_abs_diff
from edgeskip.export.splice import Switch, mark, with_marks
from edgeskip.models.blocknet import ExportView
from edgeskip.models.skipnet import SkipNetResNet


class SkipNetGraph(ExportView):
    """``forward(image) -> (logits, executed)`` with one ``torch.cond`` per gate (exported spliced,
    :func:`~edgeskip.export.onnx_export.export_spliced`)."""

    def __init__(self, model: SkipNetResNet) -> None:
        super().__init__(model)
        self.gates = model.gates
        if hasattr(model, "gate_core"):
            self.gate_core = model.gate_core
        self.gate_of = dict(model.gate_of)
        self.threshold = float(model.gate_cfg.threshold)
        self.marks: list[torch.Tensor] | None = None

    def switch(self, b: int) -> Switch:
        return Switch([self.blocks[str(b)], None], [1, 0])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state: list = [None]
        decisions = []

        def step(b: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            logit, state[0] = self.gates[self.gate_of[b]](h, state[0])
            run = (torch.sigmoid(logit) >= self.threshold).reshape(())
            decisions.append(run)
            if self.marks is not None:
                return mark(self, b, run, h)
            return torch.cond(run, lambda t: block(t), lambda t: t.clone(), (h,))

        return with_marks(self, (self.walk(image, step), torch.stack(decisions)))


def export_skipnet(model: SkipNetResNet, dest: str | os.PathLike) -> Path:
    """Export the batch-1 SkipNet graph to one self-contained .onnx file, atomically."""
    model.eval()
    cfg = model.cfg
    image = torch.zeros(1, cfg.in_channels, *cfg.input_size)
    return export_spliced(SkipNetGraph(model), (image,), ["image"], dest, ["logits", "executed"], dynamic_batch=False)


def verify_skipnet_onnx(
    model: SkipNetResNet, images: torch.Tensor, onnx_path: str | os.PathLike, tol: float = TOLERANCE
) -> dict[str, float]:
    """onnxruntime vs PyTorch per image: logits within ``tol`` and identical gate decisions."""
    model.eval()
    sess = ort_session(onnx_path)
    worst, flips = 0.0, 0
    with torch.no_grad():
        for x in images:
            ref = model.run(x[None], "hard")
            logits, executed = sess.run(None, {"image": x[None].numpy().astype(np.float32)})
            worst = max(worst, max_abs_diff(logits, ref.logits.numpy()))
            flips += int((np.asarray(executed, bool) != ref.execute[0].numpy()).sum())
    if worst > tol or flips:
        raise EdgeskipError(
            f"exported SkipNet does not match PyTorch: max diff {worst:.2e} (tol {tol:g}), "
            f"{flips} gate decisions differ"
        )
    return {"skipnet_vs_torch": worst, "decisions_differing": flips}
