"""Executors over a bundle: run a Pareto config through its static executable, any other skip array
through the gated graph. All of a backend's graphs are loaded once; switching configs never reloads
weights. Back ends: IREE (the bundle's modules for this machine's target) and onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeskip.errors import EdgeskipError
from edgeskip.export.bundle import load_manifest
from edgeskip.models.skip import normalize_skip

BACKENDS = ("auto", "iree", "onnxruntime")


class BundleExecutor:
    """Common validation and dispatch; subclasses provide ``_static(k, x)`` and ``_gated(x, skip)``."""

    backend = "?"

    def __init__(self, bundle: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
        self.bundle = Path(bundle)
        self.manifest = manifest or load_manifest(bundle)
        self.configs = self.manifest["configs"]
        self.num_gates = self.manifest["num_gates"]
        self.input_shape = tuple(self.manifest["input"]["shape"][1:])
        self._by_skip = {tuple(bool(v) for v in c["skip"]): i for i, c in enumerate(self.configs)}

    def check_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 4 or tuple(image.shape[1:]) != self.input_shape:
            raise EdgeskipError(f"input must have shape [N, {', '.join(map(str, self.input_shape))}], got {list(image.shape)}")
        return np.ascontiguousarray(image, dtype=np.float32)

    def infer(self, image: np.ndarray, config: int | None = None, skip: Sequence[object] | str | None = None) -> np.ndarray:
        """Logits for ``image`` with Pareto config ``config`` or an arbitrary skip array (default: config 0)."""
        x = self.check_image(image)
        if skip is not None:
            s = normalize_skip(skip, self.num_gates)
            if s in self._by_skip:
                return self._static(self._by_skip[s], x)
            return self._gated(x, s)
        k = 0 if config is None else int(config)
        if not 0 <= k < len(self.configs):
            raise EdgeskipError(f"config {k} out of range 0..{len(self.configs) - 1}")
        return self._static(k, x)

    def _static(self, k: int, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _gated(self, x: np.ndarray, skip: tuple[bool, ...]) -> np.ndarray:
        raise NotImplementedError


class IreeBundleExecutor(BundleExecutor):
    """The gated and every static module of one target, in one VmContext over ``weights.irpa``."""

    backend = "iree"

    def __init__(self, bundle: str | os.PathLike, target: str = "host", driver: str = "local-sync",
                 manifest: dict[str, Any] | None = None) -> None:
        super().__init__(bundle, manifest)
        from edgeskip.export.shared_weights import SharedIreeExecutor

        if target not in self.manifest["targets"]:
            raise EdgeskipError(f"bundle has no modules for target {target!r} (has {', '.join(self.manifest['targets'])})")
        tdir = self.bundle / self.manifest["targets"][target]["dir"]
        modules = [tdir / "gated.vmfb", *[tdir / f"{c['module']}.vmfb" for c in self.configs]]
        self.iree = SharedIreeExecutor(self.bundle / self.manifest["iree"]["weights"], modules, driver=driver)

    def _static(self, k: int, x: np.ndarray) -> np.ndarray:
        return self.iree.run(k + 1, x)

    def _gated(self, x: np.ndarray, skip: tuple[bool, ...]) -> np.ndarray:
        return np.asarray(self.iree.invokers[0](x, np.array(skip, dtype=bool)).to_host())


class OrtBundleExecutor(BundleExecutor):
    """onnxruntime sessions for the gated and every static graph over one initializer pool."""

    backend = "onnxruntime"

    def __init__(self, bundle: str | os.PathLike, threads: int = 1, manifest: dict[str, Any] | None = None) -> None:
        super().__init__(bundle, manifest)
        from edgeskip.export.ort_shared import OrtSharedSessions

        graphs = {"gated": self.bundle / self.manifest["gated"]["onnx"]}
        graphs.update({c["module"]: self.bundle / "onnx" / f"{c['module']}.onnx" for c in self.configs})
        self.ort = OrtSharedSessions(graphs, threads=threads)

    def _static(self, k: int, x: np.ndarray) -> np.ndarray:
        return self.ort.run(self.configs[k]["module"], x)

    def _gated(self, x: np.ndarray, skip: tuple[bool, ...]) -> np.ndarray:
        return self.ort.run("gated", x, skip)


def open_executor(bundle: str | os.PathLike, backend: str = "auto", **kwargs: Any) -> BundleExecutor:
    """An executor for ``bundle``; ``auto`` picks the back end the bundle measured fastest on its host."""
    manifest = load_manifest(bundle)
    if backend == "auto":
        backend = manifest["backend"]["host_fastest"]
    if backend == "iree":
        return IreeBundleExecutor(bundle, manifest=manifest, **kwargs)
    if backend == "onnxruntime":
        return OrtBundleExecutor(bundle, manifest=manifest, **kwargs)
    raise EdgeskipError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
