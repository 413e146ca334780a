"""ONNX export (torch dynamo exporter) and parity checks against PyTorch with onnxruntime.

Graphs: inputs ``image`` float32 [N, C, H, W] (dynamic batch) and, for the gated graph, ``skip``
bool [B_s]; output ``logits`` [N, classes]. Weights are stored inside the .onnx file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgeskip.backends.ort import ort_session
from edgeskip.errors import EdgeskipError
from edgeskip.export.graphs import GatedGraph, StaticGraph
from edgeskip.models import CifarResNet, normalize_skip
from edgeskip.utils.atomic import atomic_path

OPSET = 20
TOLERANCE = 1e-4
# int8 graphs (QDQ): PyTorch simulates onnxruntime's integer kernels in float, so a value on a rounding boundary
# may land one quantisation step apart, and the step carries through the later blocks. Relative to the largest
# logit. Measured: tiny digits model 2e-7 (every value agrees), CIFAR ResNet-20 0.005 (bench/README §9).
INT8_TOLERANCE = 0.01


def export_graph(module: torch.nn.Module, args: tuple, names: list[str], dest: str | os.PathLike,
                 outputs: list[str] | None = None, dynamic_batch: bool = True) -> Path:
    """Export ``module`` quietly to a single self-contained .onnx file, atomically.

    ``names`` are the input names; ``image`` gets a dynamic batch dimension unless ``dynamic_batch`` is off.
    """
    import onnx

    dest = Path(dest)
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("N", min=1, max=4096)
        shapes = {n: ({0: batch} if n == "image" else None) for n in names}
    with atomic_path(dest, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            program = torch.onnx.export(module, args, dynamo=True, input_names=names,
                                        output_names=outputs or ["logits"], dynamic_shapes=shapes,
                                        opset_version=OPSET, optimize=True)
        model = program.model_proto
        onnx.checker.check_model(model)
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return dest


def export_gated(model: CifarResNet, dest: str | os.PathLike) -> Path:
    """Gated graph: one ONNX ``If`` per gate; any skip array is an input."""
    model.eval()
    cfg = model.cfg
    image = torch.zeros(2, cfg.in_channels, *cfg.input_size)
    skip = torch.ones(cfg.num_gates, dtype=torch.bool)
    return export_graph(GatedGraph(model), (image, skip), ["image", "skip"], dest)


def export_static(model: CifarResNet, skip: Sequence[object], dest: str | os.PathLike) -> Path:
    """Static graph of one config: bypassed blocks removed, no control flow."""
    model.eval()
    cfg = model.cfg
    image = torch.zeros(2, cfg.in_channels, *cfg.input_size)
    return export_graph(StaticGraph(model, skip), (image,), ["image"], dest)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def verify_onnx(model: CifarResNet, images: torch.Tensor, gated: str | os.PathLike | None = None,
                skip_arrays: Sequence[object] = (), static: dict[tuple[bool, ...], str | os.PathLike] | None = None,
                tol: float = TOLERANCE) -> dict[str, float]:
    """onnxruntime vs PyTorch for each skip array (gated graph) and each static graph at its config.

    Also checks every static graph against the gated graph at its config. Returns the worst
    differences; raises EdgeskipError if any exceeds ``tol``.
    """
    model.eval()
    worst = {"gated_vs_torch": 0.0, "static_vs_torch": 0.0, "static_vs_gated": 0.0}
    x = images.numpy().astype(np.float32)
    g_sess = ort_session(gated) if gated is not None else None
    gated_out: dict[tuple[bool, ...], np.ndarray] = {}
    with torch.no_grad():
        arrays = [normalize_skip(s, model.cfg.num_gates) for s in skip_arrays] + list((static or {}).keys())
        for s in dict.fromkeys(arrays):
            ref = model(images, s).numpy()
            if g_sess is not None:
                out = g_sess.run(None, {"image": x, "skip": np.array(s, dtype=bool)})[0]
                gated_out[s] = out
                worst["gated_vs_torch"] = max(worst["gated_vs_torch"], max_abs_diff(out, ref))
            if static and s in static:
                out = ort_session(static[s]).run(None, {"image": x})[0]
                worst["static_vs_torch"] = max(worst["static_vs_torch"], max_abs_diff(out, ref))
                if s in gated_out:
                    worst["static_vs_gated"] = max(worst["static_vs_gated"], max_abs_diff(out, gated_out[s]))
    bad = {k: v for k, v in worst.items() if v > tol}
    if bad:
        raise EdgeskipError(f"exported graph does not match PyTorch: {', '.join(f'{k} {v:.2e}' for k, v in bad.items())} > {tol:g}")
    return worst


def verify_int8(model: CifarResNet, images: torch.Tensor, graphs: dict[tuple[int, ...], str | os.PathLike],
                tol: float = INT8_TOLERANCE) -> float:
    """onnxruntime's int8 kernels vs PyTorch's simulation of them, for each option array's static graph: the worst
    difference relative to the largest logit (raises EdgeskipError above ``tol``)."""
    worst = 0.0
    x = images.numpy().astype(np.float32)
    with torch.no_grad():
        for options, path in graphs.items():
            ref = model(images, options).numpy()
            out = ort_session(path).run(None, {"image": x})[0]
            worst = max(worst, max_abs_diff(out, ref) / max(1.0, float(np.abs(ref).max())))
    if worst > tol:
        raise EdgeskipError(f"int8 graph does not match PyTorch: {worst:.2e} (relative) > {tol:g}")
    return worst
