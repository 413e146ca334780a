"""Measured batch-1 latency of compiled configs on this host: IREE (shared-weight modules) and onnxruntime."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeskip.backends.iree import SharedIreeExecutor
from edgeskip.backends.ort import ort_session
from edgeskip.export.iree_compile import TARGETS
from edgeskip.export.onnx_export import export_gated, export_static
from edgeskip.export.shared_weights import build_shared_modules, module_name
from edgeskip.models import BlockNet
from edgeskip.pareto.latency import interleaved_median
from edgeskip.skip import normalize_options


class IreeLatency:
    """Latency source for :func:`edgeskip.pareto.design.design_space`: compiles each config's static
    module for the host (all sharing one weight archive) and times them round-robin. The built
    modules are kept in ``out_dir`` for the bundle."""

    name = "iree-host-local-sync-b1"

    def __init__(
        self,
        model: BlockNet,
        out_dir: str | os.PathLike,
        work_dir: str | os.PathLike,
        repeats: int = 30,
        warmup: int = 3,
    ) -> None:
        self.model, self.out, self.work = model, Path(out_dir), Path(work_dir)
        self.repeats, self.warmup = repeats, warmup
        cfg = model.cfg
        self.image = np.random.default_rng(0).standard_normal((1, cfg.in_channels, *cfg.input_size), np.float32)
        self.built: dict[str, tuple[Path, Path, Path]] = {}  # module name -> (vmfb, onnx, mlir)
        self.weights: Path | None = None
        self.gated: Path | None = None  # the gated graph, exported once: every static graph is cut from it

    def measure(self, skip_arrays: Sequence[object]) -> list[float]:
        skips = [normalize_options(s, self.model.cfg.num_gates) for s in skip_arrays]
        if self.gated is None:
            self.work.mkdir(parents=True, exist_ok=True)
            self.gated = export_gated(self.model, self.work / "gated.onnx")
        built = build_shared_modules(self.model, skips, TARGETS["host"], self.out, self.work, self.gated, self.weights)
        self.weights = built.weights
        self.built.update({module_name(s): paths for s, *paths in zip(skips, built.modules, built.onnx, built.mlir)})
        ex = SharedIreeExecutor(built.weights, built.modules)
        return interleaved_median(
            [lambda k=k: ex.run(k, self.image) for k in range(len(ex))], self.repeats, self.warmup
        )


def ort_static_latency(
    model: BlockNet,
    skip_arrays: Sequence[object],
    work_dir: str | os.PathLike,
    repeats: int = 30,
    warmup: int = 3,
    threads: int = 1,
) -> list[float]:
    """onnxruntime batch-1 latency of each config's static graph (interleaved medians); skip or option arrays
    (an int8 block runs onnxruntime's int8 kernels).

    One thread by default, like IREE's single-threaded local-sync driver: a like-for-like comparison.
    """
    cfg = model.cfg
    image = np.random.default_rng(0).standard_normal((1, cfg.in_channels, *cfg.input_size), np.float32)
    sessions = []
    for s in skip_arrays:
        path = Path(work_dir) / f"{module_name(normalize_options(s, cfg.num_gates))}.onnx"
        if not path.exists():
            export_static(model, s, path)
        sessions.append(ort_session(path, threads))
    return interleaved_median([lambda s=s: s.run(None, {"image": image}) for s in sessions], repeats, warmup)


class OrtLatency:
    """Latency source over skip or option arrays: each config's static graph on onnxruntime (int8 blocks run
    its int8 kernels), one thread, batch 1, interleaved; graphs are exported once into ``work_dir``."""

    name = "onnxruntime-host-1thread-b1"

    def __init__(
        self, model: BlockNet, work_dir: str | os.PathLike, repeats: int = 30, warmup: int = 3, threads: int = 1
    ) -> None:
        self.model, self.work = model, Path(work_dir)
        self.repeats, self.warmup, self.threads = repeats, warmup, threads

    def measure(self, skip_arrays: Sequence[object]) -> list[float]:
        return ort_static_latency(self.model, skip_arrays, self.work, self.repeats, self.warmup, self.threads)
