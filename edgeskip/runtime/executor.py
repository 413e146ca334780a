"""Executors over a bundle: run a Pareto config through its static executable, any other skip array
through the gated graph. All of a backend's graphs are loaded once; switching configs never reloads
weights. Back ends: IREE (the bundle's modules for this machine's target) and onnxruntime."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from edgeskip.errors import EdgeskipError
from edgeskip.manifest import IreeEntry, Manifest, load_manifest
from edgeskip.runtime.choices import BACKENDS
from edgeskip.skip import normalize_skip

T = TypeVar("T")


def load_iree(make: Callable[[], T], target: str, driver: str, flags: Sequence[str] = ()) -> T:
    """``make()``, with IREE's load errors (a module for another CPU, an unknown driver) as one line; ``flags``, the
    target's compiler flags: a raised stack limit gets the stack it needs first."""
    from edgeskip.backends.iree import prepare_stack

    prepare_stack(flags, driver)
    try:
        return make()
    except (RuntimeError, ValueError) as e:
        text = str(e)
        why = (
            "it was compiled for another CPU"
            if "INCOMPATIBLE" in text
            else (text.strip().splitlines() or [type(e).__name__])[0][:160]
        )
        raise EdgeskipError(
            f"IREE cannot load the bundle's {target} module with driver {driver} on this machine: {why}"
        ) from None


def require_iree(manifest: Manifest) -> IreeEntry:
    """The bundle's IREE side, or a one-line error saying why it has none and what runs it."""
    if manifest.iree is None:
        raise EdgeskipError(
            f"this bundle has no IREE modules (IREE could not compile the model: {manifest.iree_unavailable}); "
            "it runs on onnxruntime: --backend onnxruntime, pip install 'edgeskip[onnxruntime]'"
        )
    return manifest.iree


class BundleExecutor:
    """Common validation and dispatch; subclasses provide ``_static(k, x)`` and ``_gated(x, skip)``."""

    backend = "?"

    def __init__(self, bundle: str | os.PathLike, manifest: Manifest | None = None) -> None:
        self.bundle = Path(bundle)
        self.manifest = (manifest or load_manifest(bundle)).for_backend(self.backend)  # this back end's front
        self.configs = self.manifest.configs
        self.num_gates = self.manifest.num_gates
        self.input_shape = self.manifest.input.chw
        self._by_skip = self.manifest.by_skip
        self.last_skipped: float | None = None  # blocks skipped by the latest call (per image for SkipNet/DFS)
        self.target = "host"  # whose compiled modules run (onnxruntime: the host's graphs)

    def target_dir(self, target: str) -> Path:
        """Folder of the bundle's IREE modules for ``target``."""
        targets = self.manifest.targets
        if target not in targets:
            raise EdgeskipError(f"bundle has no modules for target {target!r} (has {', '.join(targets)})")
        return self.bundle / targets[target].dir

    def check_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 4 or tuple(image.shape[1:]) != self.input_shape:
            raise EdgeskipError(
                f"input must have shape [N, {', '.join(map(str, self.input_shape))}], got {list(image.shape)}"
            )
        return np.ascontiguousarray(image, dtype=np.float32)

    def infer(
        self, image: np.ndarray, config: int | None = None, skip: Sequence[object] | str | None = None
    ) -> np.ndarray:
        """Logits for ``image`` with Pareto config ``config`` or an arbitrary skip array (default: config 0)."""
        x = self.check_image(image)
        if skip is not None:
            s = normalize_skip(skip, self.num_gates)
            self.last_skipped = s.count(False)
            if s in self._by_skip:
                return self._static(self._by_skip[s], x)
            return self._gated(x, s)
        k = 0 if config is None else int(config)
        if not 0 <= k < len(self.configs):
            raise EdgeskipError(f"config {k} out of range 0..{len(self.configs) - 1}")
        self.last_skipped = self.configs[k].n_skipped
        return self._static(k, x)

    def _static(self, k: int, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _gated(self, x: np.ndarray, skip: tuple[bool, ...]) -> np.ndarray:
        raise NotImplementedError


class IreeBundleExecutor(BundleExecutor):
    """One target's module (functions ``gated`` and one per candidate config, the Pareto configs among them) over
    ``weights.irpa``."""

    backend = "iree"

    def __init__(
        self,
        bundle: str | os.PathLike,
        target: str = "host",
        driver: str = "local-sync",
        manifest: Manifest | None = None,
    ) -> None:
        super().__init__(bundle, manifest)
        from edgeskip.backends.iree import SharedIreeExecutor

        iree, self.target = require_iree(self.manifest), target
        self.iree = load_iree(
            lambda: SharedIreeExecutor(
                self.bundle / iree.weights,
                [self.target_dir(target) / iree.module],
                driver=driver,
                functions=iree.functions,
                scope=iree.parameter_scope,
            ),
            target,
            driver,
            self.manifest.targets[target].flags if target in self.manifest.targets else (),
        )
        self._fn = {c.index: iree.functions.index(c.module) for c in self.configs}
        self._gated_fn = iree.functions.index("gated")

    def _static(self, k: int, x: np.ndarray) -> np.ndarray:
        return self.iree.run(self._fn[k], x)

    def _gated(self, x: np.ndarray, skip: tuple[bool, ...]) -> np.ndarray:
        return self.iree.run(self._gated_fn, x, np.array(skip, dtype=bool))


class OrtBundleExecutor(BundleExecutor):
    """onnxruntime sessions for the gated and every static graph (each session keeps its own copy of the
    weights: onnxruntime's CPU kernels pre-pack them per session; IREE is the path with one copy)."""

    backend = "onnxruntime"

    def __init__(self, bundle: str | os.PathLike, threads: int = 1, manifest: Manifest | None = None) -> None:
        super().__init__(bundle, manifest)
        from edgeskip.backends.ort import ort_session

        graphs = self.manifest.onnx
        self.sessions = {
            name: ort_session(self.bundle / graphs[name], threads)
            for name in ("gated", *(c.module for c in self.configs))
        }

    def _static(self, k: int, x: np.ndarray) -> np.ndarray:
        return self.sessions[self.configs[k].module].run(None, {"image": x})[0]

    def _gated(self, x: np.ndarray, skip: tuple[bool, ...]) -> np.ndarray:
        return self.sessions["gated"].run(None, {"image": x, "skip": np.array(skip, dtype=bool)})[0]


class SkipNetExecutor(BundleExecutor):
    """A learned-gate bundle (SkipNet, or DFS): one model whose gates pick the blocks per input (batch-1 graph,
    looped over N).

    ``infer`` returns logits; ``decisions`` holds the gates' outputs [N, B_s] of the latest call (SkipNet: bool,
    executed; DFS: the option index, 0 = skip) and ``executed`` whether each block ran.
    """

    def __init__(self, bundle: str | os.PathLike, manifest: Manifest | None = None) -> None:
        super().__init__(bundle, manifest)
        self.dtype = np.dtype(self.manifest.decisions[1])
        self.decisions = np.zeros((0, self.num_gates), self.dtype)
        self.executed = np.zeros((0, self.num_gates), bool)

    def infer(
        self, image: np.ndarray, config: int | None = None, skip: Sequence[object] | str | None = None
    ) -> np.ndarray:
        kind = self.manifest.kind
        if skip is not None:
            raise EdgeskipError(f"a {kind} bundle picks its blocks per input; it takes no skip array")
        if config not in (None, 0):
            raise EdgeskipError(f"a {kind} bundle has one config (0), not {config}")
        x = self.check_image(image)
        outs = [self._one(x[i : i + 1]) for i in range(len(x))]
        self.decisions = (
            np.stack([np.asarray(d).astype(self.dtype) for _, d in outs])
            if outs
            else np.zeros((0, self.num_gates), self.dtype)
        )
        self.executed = self.decisions != 0
        self.last_skipped = int((~self.executed[-1]).sum()) if outs else None
        return (
            np.concatenate([l for l, _ in outs]) if outs else np.zeros((0, len(self.manifest.class_names)), np.float32)
        )

    def _one(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class IreeSkipNetExecutor(SkipNetExecutor):
    backend = "iree"

    def __init__(
        self,
        bundle: str | os.PathLike,
        target: str = "host",
        driver: str = "local-sync",
        manifest: Manifest | None = None,
    ) -> None:
        super().__init__(bundle, manifest)
        from edgeskip.backends.iree import IreeSkipNet

        iree, self.target = require_iree(self.manifest), target
        self.module = load_iree(
            lambda: IreeSkipNet(
                self.bundle / iree.weights,
                self.target_dir(target) / iree.module,
                driver=driver,
                function=self.configs[0].module,
            ),
            target,
            driver,
            self.manifest.targets[target].flags if target in self.manifest.targets else (),
        )

    def _one(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.module.run(x)


class OrtSkipNetExecutor(SkipNetExecutor):
    backend = "onnxruntime"

    def __init__(self, bundle: str | os.PathLike, threads: int = 1, manifest: Manifest | None = None) -> None:
        super().__init__(bundle, manifest)
        from edgeskip.backends.ort import ort_session

        self.session = ort_session(self.bundle / self.manifest.onnx[self.configs[0].module], threads)

    def _one(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, decisions = self.session.run(None, {"image": x})
        return logits, decisions


def _armv7(machine: str) -> bool:
    """Whether ``platform.machine()`` (lower case) names a 32-bit ARM board (the Odroid XU4's armv7l)."""
    return machine.startswith("armv7") or machine == "arm"


def require_iree_runtime(machine: str | None = None) -> None:
    """A one-line error where IREE's Python runtime cannot be imported, saying what runs the bundle instead."""
    try:
        import iree.runtime  # noqa: F401
    except ImportError:
        import platform

        machine = (machine or platform.machine()).lower()
        if _armv7(machine):
            raise EdgeskipError(
                f"IREE publishes no Python runtime for {machine}: build it on a workstation with python -m "
                "edgeskip.export.emulate fetch-python --arch armv7 and copy its site/iree folder here, or run the "
                "bundle's odroid-xu4 module with iree-run-module (README, On the board)"
            ) from None
        raise EdgeskipError(
            "IREE's runtime is not installed: pip install iree-base-runtime (or --backend onnxruntime)"
        ) from None


def machine_target(manifest: Manifest, machine: str | None = None) -> str:
    """The bundle target whose modules run on this machine (x86-64: host; aarch64/armv7: the ARM target)."""
    import platform

    machine = (machine or platform.machine()).lower()
    targets = list(manifest.targets)
    if machine in ("x86_64", "amd64"):
        wanted = ["host"]
    elif machine in ("aarch64", "arm64"):
        wanted = [t for t in targets if t.startswith("aarch64")]
    elif _armv7(machine):
        wanted = [t for t in targets if manifest.targets[t].triple.startswith("armv7")]
    else:
        wanted = []
    for t in wanted:
        if t in targets:
            return t
    if _armv7(machine):
        how = ": compile it with --target odroid-xu4 (onnxruntime has no armv7 wheels)"
    elif machine in ("aarch64", "arm64"):
        how = ": compile it with --target aarch64, or serve its ONNX graphs (--backend onnxruntime)"
    else:
        how = ""
    raise EdgeskipError(f"bundle has no IREE modules for this machine ({machine}); it has {', '.join(targets)}{how}")


def open_executor(
    bundle: str | os.PathLike,
    backend: str = "auto",
    target: str = "auto",
    driver: str = "local-sync",
    threads: int = 1,
    digest: str | None = None,
    verify_key: str | os.PathLike | None = None,
    profile: str | None = "auto",
) -> BundleExecutor:
    """An executor for ``bundle``. ``backend`` auto: the one the bundle measured fastest on x86 hosts (IREE
    where onnxruntime is not installed), IREE elsewhere (onnxruntime graphs are not compiled per target).
    ``target`` auto: this machine's modules. ``driver`` is IREE's HAL driver, ``threads`` onnxruntime's
    intra-op threads. ``digest``: refuse the bundle unless its manifest has this digest; ``verify_key``:
    unless it is signed by this public key (:mod:`edgeskip.signing`). ``profile``: "auto" runs the fronts of this
    machine's profile in the bundle's ``profiles/`` where there is one (:mod:`edgeskip.runtime.profile`), a path
    that profile (refused unless it matches bundle and machine), None or "none" the compile host's fronts."""
    manifest = load_manifest(bundle, digest=digest, verify_key=verify_key)
    from edgeskip.runtime.profile import profiled

    manifest, _ = profiled(bundle, manifest, profile)
    if manifest.iree is None:  # an onnxruntime-only bundle: its graphs run on any machine onnxruntime runs on
        from edgeskip.backends.ort import available

        if backend == "auto" and not available():
            require_iree(manifest)  # the one-line error that says what to install
        backend, target = ("onnxruntime" if backend == "auto" else backend), "host"
    if backend == "onnxruntime":
        target = "host"  # ONNX graphs are not compiled per target: the same files run on x86-64 and aarch64
    if target == "auto":
        target = machine_target(manifest)
    if backend == "auto":
        from edgeskip.backends.ort import available

        fastest = manifest.host_fastest if target == "host" else "iree"
        backend = fastest if fastest != "onnxruntime" or available() else "iree"
    cls = executor_class(backend, manifest)
    if backend == "iree":
        require_iree_runtime()
        return cls(bundle, target=target, driver=driver, manifest=manifest)  # type: ignore[call-arg]
    return cls(bundle, threads=threads, manifest=manifest)  # type: ignore[call-arg]


def executor_class(backend: str, manifest: Manifest) -> type[BundleExecutor]:
    """The executor type of ``backend`` for this kind of bundle."""
    skipnet = manifest.learned_gates
    if backend == "iree":
        return IreeSkipNetExecutor if skipnet else IreeBundleExecutor
    if backend == "onnxruntime":
        return OrtSkipNetExecutor if skipnet else OrtBundleExecutor
    raise EdgeskipError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
