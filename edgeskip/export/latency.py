"""Measured batch-1 latency of compiled configs on this host: IREE (shared-weight modules) and onnxruntime."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgeskip.backends.iree import SharedIreeExecutor
from edgeskip.backends.ort import ort_session
from edgeskip.errors import EdgeskipError
from edgeskip.export.iree_compile import NO_DATA_TILING, TARGETS, IreeError, Target, compile_each
from edgeskip.export.onnx_export import export_gated, export_options, export_static
from edgeskip.export.shared_weights import import_configs, import_shared, merge_modules, write_weights
from edgeskip.models import BlockNet
from edgeskip.pareto.latency import interleaved_median
from edgeskip.skip import INT8, has_rest, module_name, normalize_options


class IreeLatency:
    """Latency source for :func:`edgeskip.pareto.design.design_space`: the bundle's own modules, timed.

    Every measured config's static function and the gated function are merged into one module
    (:func:`~edgeskip.export.shared_weights.merge_modules`, one weight archive), compiled for the host
    (``<out_dir>/host/model.vmfb``, over ``<out_dir>/weights.irpa``), and its functions are timed round-robin in
    one context, as the runtime runs them. Compiling one module of every candidate costs less than one module per
    candidate and then the front's module again, and the bundle then carries every candidate: a board can measure
    its own front from it. A later call adds configs and compiles the host's module again; :meth:`finish`
    compiles the other targets' modules once, side by side, when the configs are final."""

    name = "iree-host-local-sync-b1"

    def __init__(
        self,
        model: BlockNet,
        out_dir: str | os.PathLike,
        work_dir: str | os.PathLike,
        repeats: int = 30,
        warmup: int = 3,
        targets: Sequence[Target] = (TARGETS["host"],),
    ) -> None:
        self.model, self.out, self.work = model, Path(out_dir), Path(work_dir)
        self.repeats, self.warmup = repeats, warmup
        if not any(t.name == "host" for t in targets):
            raise EdgeskipError("IreeLatency measures on this host: the targets must include 'host'")
        self.targets = list(targets)
        cfg = model.cfg
        self.image = np.random.default_rng(0).standard_normal((1, cfg.in_channels, *cfg.input_size), np.float32)
        self.built: dict[str, tuple[Path, Path]] = {}  # module name -> (static onnx, imported mlir), in order
        self.weights = self.out / "weights.irpa"
        self.gated: Path | None = None  # the gated graph, exported once: every static graph is cut from it
        self.gated_mlir: Path | None = None
        self.dropped: dict[str, str] = {}  # target -> why IREE could not compile it (the host never is: it raises)
        self.merged: Path | None = None  # every measured config's function and the gated one, in one module
        self.finished = False  # the other targets' modules are compiled from the latest merged module
        self.tiling: dict[str, object] | None = None  # the host's measured data-tiling choice (_choose_tiling)

    @property
    def functions(self) -> list[str]:
        """The merged module's functions: ``gated``, then every measured config's."""
        return ["gated", *self.built]

    def module(self, target: str = "host") -> Path:
        return self.out / target / "model.vmfb"

    def measure(self, skip_arrays: Sequence[object]) -> list[float]:
        skips = [normalize_options(s, self.model.cfg.num_gates) for s in skip_arrays]
        self.work.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.gated is None:
            self.gated = export_gated(self.model, self.work / "gated.onnx")
            write_weights(self.model, self.weights, self.work, self.gated)
            self.gated_mlir = import_shared(self.gated, self.weights, self.work, "gated")
        new = list({module_name(s): s for s in skips if module_name(s) not in self.built}.values())
        if new:
            graphs, mlirs = import_configs(self.model, new, self.weights, self.work, self.gated)
            self.built.update({module_name(s): (g, m) for s, g, m in zip(new, graphs, mlirs)})
            assert self.gated_mlir is not None
            self.merged = merge_modules(
                {"gated": self.gated_mlir, **{k: m for k, (_, m) in self.built.items()}}, self.work / "model.mlir"
            )
            if self._host.static_data_tiling is None:
                self._choose_tiling()
            else:
                self._compile(["host"])  # the one module timed here; the others once, at the end (finish)
            self.finished = False
        ex = SharedIreeExecutor(self.weights, [self.module()], functions=[module_name(s) for s in skips])
        return interleaved_median(
            [lambda k=k: ex.run(k, self.image) for k in range(len(ex))], self.repeats, self.warmup
        )

    def finish(self) -> None:
        """Compile the module of every target besides the host (measuring needs the host's alone), once, from
        every config measured; a target IREE cannot compile is left out (``dropped``, with IREE's reason)."""
        others = [t.name for t in self.targets if t.name != "host"]
        if others and self.merged is not None and not self.finished:
            self._compile(others)
            self.finished = True

    @property
    def _host(self) -> Target:
        return next(t for t in self.targets if t.name == "host")

    def _choose_tiling(self) -> None:
        """The host's module compiled three ways, side by side: its static functions channels-last with and without
        data tiling (the gated function always with: :data:`~edgeskip.export.iree_compile.DATA_TILING_HINT`), and
        NCHW with it. Every static function is timed in each, round-robin; the fastest build in total is kept,
        and the host target keeps its choice for later compiles. ResNet-20 runs fastest channels-last untiled, a
        ResNet-18 at 224x224 channels-last tiled, MobileNetV2 NCHW (its depthwise convolutions are rewritten for
        IREE as elementwise multiply-adds, and in channels-last form transposes would surround each of them:
        bench/README 14.5). Where the channels-last pass fails, only the NCHW build remains."""
        assert self.merged is not None
        host = self._host
        self.module().parent.mkdir(parents=True, exist_ok=True)
        variants = {
            "channels-last, tiled": dataclasses.replace(host, static_data_tiling=True),
            "channels-last, untiled": dataclasses.replace(host, static_data_tiling=False),
            "NCHW": dataclasses.replace(host, static_data_tiling=True, channels_last=False),
        }
        paths = {name: self.work / f"host_{k}.vmfb" for k, name in enumerate(variants)}
        builds = compile_each([(self.merged, t, paths[n]) for n, t in variants.items()], channels_last=list(self.built))
        for r in builds:
            if isinstance(r, IreeError):
                raise r
        compiled = {n: r.target for n, r in zip(variants, builds)}  # type: ignore[union-attr]
        tiled = compiled["channels-last, tiled"]
        if not tiled.channels_last or NO_DATA_TILING in tiled.extra:  # the hint and the layout change nothing here
            compiled = {"NCHW": compiled["NCHW"]}
        fns = list(self.built)
        exs = {n: SharedIreeExecutor(self.weights, [paths[n]], functions=fns) for n in compiled}
        times = interleaved_median(
            [lambda e=e, k=k: e.run(k, self.image) for e in exs.values() for k in range(len(fns))],
            self.repeats,
            self.warmup,
        )
        del exs  # release the modules before one of them is moved
        totals = {n: sum(times[i * len(fns) : (i + 1) * len(fns)]) for i, n in enumerate(compiled)}
        keep = min(totals, key=totals.__getitem__)
        self.tiling = {"static": keep, "measured": len(totals) > 1, "seconds": totals}
        self._set_host(compiled[keep])
        os.replace(paths[keep], self.module())
        for p in paths.values():
            p.unlink(missing_ok=True)

    def _set_host(self, target: Target) -> None:
        self.targets = [target if t.name == "host" else t for t in self.targets]

    def _compile(self, names: Sequence[str]) -> None:
        """Compile the merged module for the targets ``names``, side by side; the host's error raises."""
        assert self.merged is not None
        jobs = [t for t in self.targets if t.name in names]
        for t in jobs:
            self.module(t.name).parent.mkdir(parents=True, exist_ok=True)
        results = compile_each(
            [(self.merged, t, self.module(t.name)) for t in jobs],
            channels_last=list(self.built),  # the static functions; the gated one keeps NCHW
        )
        done = dict(zip([t.name for t in jobs], results))
        kept = []
        for t in self.targets:
            r = done.get(t.name)
            if isinstance(r, IreeError):
                if t.name == "host":
                    raise r
                self.dropped[t.name] = str(r)  # the bundle goes on without this target and says why
                shutil.rmtree(self.module(t.name).parent, ignore_errors=True)
            else:
                kept.append(t if r is None else r.target)  # as compiled: a raised stack limit is kept
        self.targets = kept


def ort_static_latency(
    model: BlockNet,
    skip_arrays: Sequence[object],
    work_dir: str | os.PathLike,
    repeats: int = 30,
    warmup: int = 3,
    threads: int = 1,
    graph: str | os.PathLike | None = None,
) -> list[float]:
    """onnxruntime batch-1 latency of each config's static graph (interleaved medians); skip or option arrays
    (an int8 block runs onnxruntime's int8 kernels). A graph missing from ``work_dir`` is exported: cut from
    ``graph`` (a gated or option-array graph, :func:`export_static`) where given, else traced.

    One thread by default, like IREE's single-threaded local-sync driver: a like-for-like comparison.
    """
    cfg = model.cfg
    image = np.random.default_rng(0).standard_normal((1, cfg.in_channels, *cfg.input_size), np.float32)
    sessions = []
    for s in skip_arrays:
        path = Path(work_dir) / f"{module_name(normalize_options(s, cfg.num_gates))}.onnx"
        if not path.exists():
            export_static(model, s, path, graph)
        sessions.append(ort_session(path, threads))
    return interleaved_median([lambda s=s: s.run(None, {"image": image}) for s in sessions], repeats, warmup)


class OrtLatency:
    """Latency source over skip or option arrays: each config's static graph on onnxruntime (int8 blocks run
    its int8 kernels), one thread, batch 1, interleaved. Graphs are written into ``work_dir``, each cut from one
    option-array graph (:func:`~edgeskip.export.onnx_export.export_options`, exported at the first int8 array:
    one trace instead of one per config) or from ``gated``."""

    name = "onnxruntime-host-1thread-b1"

    def __init__(
        self,
        model: BlockNet,
        work_dir: str | os.PathLike,
        repeats: int = 30,
        warmup: int = 3,
        threads: int = 1,
        gated: str | os.PathLike | None = None,
    ) -> None:
        self.model, self.work = model, Path(work_dir)
        self.repeats, self.warmup, self.threads = repeats, warmup, threads
        self.graph = gated
        self.options_graph: Path | None = None
        self.rest_graph: Path | None = None  # the int8 rest's option-array graph, exported at the first such array

    def measure(self, skip_arrays: Sequence[object]) -> list[float]:
        arrays = [normalize_options(s, self.model.cfg.num_gates) for s in skip_arrays]
        self.work.mkdir(parents=True, exist_ok=True)
        if self.options_graph is None and any(INT8 in a for a in arrays):
            self.options_graph = self.graph = export_options(self.model, self.work / "options.onnx")
        rest = [a for a in arrays if has_rest(a)]
        if rest and self.rest_graph is None:
            self.rest_graph = export_options(self.model, self.work / "options_rest.onnx", rest=True)
        for a in rest:  # cut here: ort_static_latency cuts the others from the one graph it is given
            path = self.work / f"{module_name(a)}.onnx"
            if not path.exists():
                export_static(self.model, a, path, self.rest_graph)
        return ort_static_latency(self.model, arrays, self.work, self.repeats, self.warmup, self.threads, self.graph)


class IreeOrOrt:
    """Latency source: IREE's (:class:`IreeLatency`) while IREE compiles the model for the host, onnxruntime's
    (:class:`OrtLatency`, graphs cut from the gated graph already exported) from the first IREE error on. The
    bundle is then made for onnxruntime only, and ``unavailable`` keeps IREE's one-line error."""

    def __init__(self, iree: IreeLatency, ort: Callable[[Path | None], OrtLatency], log: Callable[[str], None]) -> None:
        self.iree, self._ort, self.log = iree, ort, log
        self.ort: OrtLatency | None = None
        self.unavailable: str | None = None

    @property
    def name(self) -> str:
        return self.iree.name if self.ort is None else self.ort.name

    def measure(self, skip_arrays: Sequence[object]) -> list[float]:
        if self.ort is None:
            try:
                return self.iree.measure(skip_arrays)
            except IreeError as e:
                self.unavailable = str(e)
                self.log(
                    f"IREE cannot compile this model ({e}); the bundle is made for onnxruntime only, and the "
                    "board needs onnxruntime to run it"
                )
                self.ort = self._ort(self.iree.gated)
        return self.ort.measure(skip_arrays)
