"""The benchmark: one workload replayed against adaptive depth and against fixed configs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeskip.bench.drivers import probe_daemon, run_http, run_inprocess, to_columns
from edgeskip.bench.report import plot_timeline, summarize, table_rows
from edgeskip.bench.workload import load_trace, paper_arrivals, poisson_arrivals
from edgeskip.errors import EdgeskipError
from edgeskip.manifest import Manifest
from edgeskip.runtime.adaptation import AdaptiveController, FixedController
from edgeskip.runtime.daemon import measure_no_skip_latency
from edgeskip.runtime.executor import SkipNetExecutor, open_executor
from edgeskip.utils.atomic import write_json


def test_images(bundle: Path, limit: int, images: str | os.PathLike | None = None,
                manifest: Manifest | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised labelled images: from ``images`` (.npz, see :mod:`edgeskip.bench.images`), else the bundle's
    own evaluation sample (hashed in its manifest). Never from the data spec inside ``model.pt``: a bundle
    must not choose files for this process to read. ``manifest``: the bundle's, if already read and verified."""
    from edgeskip.bench.images import load_images
    from edgeskip.manifest import load_manifest

    manifest = manifest or load_manifest(bundle)
    if images is None:
        if manifest.sample is None:
            raise EdgeskipError(f"bundle {bundle} carries no evaluation sample (built before it had one); pass "
                                "--images FILE.npz")
        images = bundle / manifest.sample
    return load_images(images, manifest, limit)


def _images(bundle: Path, limit: int, images: str | os.PathLike | None, save: str | os.PathLike | None,
            manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = test_images(bundle, limit, images, manifest)
    if save is not None:
        from edgeskip.bench.images import save_images

        save_images(save, xs, ys)
    return xs, ys


def arrivals_for(pattern: str, count: int, period: float | None, rate: float | None, trace: str | None,
                 seed: int) -> list[float]:
    if pattern == "paper":
        return paper_arrivals(count, period, seed)  # type: ignore[arg-type]
    if pattern == "poisson":
        return poisson_arrivals(count, rate if rate else 1.0 / period, seed)  # type: ignore[operator]
    if pattern == "trace":
        if not trace:
            raise EdgeskipError("--pattern trace needs --trace FILE")
        return load_trace(trace)[:count]
    raise EdgeskipError(f"unknown pattern {pattern!r}")


def run_benchmark(bundle: str | os.PathLike, out: str | os.PathLike, pattern: str = "paper", count: int = 1000,
                  period: float | None = None, load: float = 1.25, rate: float | None = None, trace: str | None = None,
                  seed: int = 0, min_acc: float = 0.0, delta_req: float | None = None,
                  fixed: Sequence[int] | None = None, url: str | None = None, backend: str = "auto",
                  command: str = "", compare: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                  save_images: str | os.PathLike | None = None, **executor_options: Any) -> dict[str, Any]:
    """Replay one workload against adaptive depth and fixed configs; write bench.json and timeline.png.

    Default period: the no-skip latency divided by ``load`` (1.25: the original cannot keep up).
    ``compare``: a SkipNet bundle of the same data set, replayed on the same arrivals as run "skipnet".
    ``images``: labelled images (.npz) instead of the bundle's test split; ``save_images``: write the ones used.
    A SkipNet ``bundle`` on its own is replayed as run "skipnet" only (its gates decide per input).
    """
    bundle = Path(bundle)
    if url:
        probe_daemon(url)
    executor = open_executor(bundle, backend, **executor_options)
    if isinstance(executor, SkipNetExecutor):
        return _run_skipnet_only(executor, bundle, out, pattern, count, period, load, rate, trace, seed, command, url,
                                 images, save_images)
    other = None
    if compare is not None:
        other = open_executor(compare, backend, **{k: v for k, v in executor_options.items()
                                                   if k not in ("digest", "verify_key")})
        if not isinstance(other, SkipNetExecutor):
            raise EdgeskipError(f"--compare expects a SkipNet bundle; {compare} is an edgeskip bundle")
        if other.manifest.dataset_id != executor.manifest.dataset_id:
            raise EdgeskipError(f"--compare bundle was built on {other.manifest.dataset_id}, "
                                f"not {executor.manifest.dataset_id}")
    no_skip = measure_no_skip_latency(executor)
    period = period or no_skip / load
    delta = delta_req or no_skip
    arrivals = arrivals_for(pattern, count, period, rate, trace, seed)
    images, labels = _images(bundle, min(len(arrivals), 2000), images, save_images, executor.manifest)
    accs = [c.val_accuracy for c in executor.configs]
    fixed = list(range(len(executor.configs))) if fixed is None else list(fixed)
    runs: dict[str, Any] = {}
    if url:
        runs["adaptive"] = run_http(url, arrivals, images, labels)
    else:
        runs["adaptive"] = run_inprocess(executor, AdaptiveController(accs, min_acc, delta), arrivals, images, labels)
    for k in fixed:
        if not 0 <= k < len(executor.configs):
            raise EdgeskipError(f"fixed config {k} out of range 0..{len(executor.configs) - 1}")
        runs["original" if k == 0 else f"config {k}"] = run_inprocess(executor, FixedController(k), arrivals, images, labels)
    if "original" not in runs:
        runs["original"] = run_inprocess(executor, FixedController(0), arrivals, images, labels)
    if other is not None:
        runs["skipnet"] = run_inprocess(other, FixedController(0), arrivals, images, labels)
    summaries = {name: summarize(recs) for name, recs in runs.items()}
    doc = {
        "command": command, "bundle": str(bundle), "backend": executor.backend, "pattern": pattern, "count": len(arrivals),
        "seed": seed, "base_period_s": period, "no_skip_latency_s": no_skip, "delta_req_s": delta, "min_acc": min_acc,
        "target": url or "in-process", "configs": [c.to_dict() for c in executor.configs],
        "compare": None if other is None else {"bundle": str(compare),
                                               "configs": [c.to_dict() for c in other.configs]},
        "summaries": summaries,
        "table": table_rows(summaries), "records": {name: to_columns(recs) for name, recs in runs.items()},
    }
    out = Path(out)
    drawn = plot_timeline(runs["adaptive"], out / "timeline.png", f"adaptive depth, {pattern} workload, period "
                          f"{period * 1e3:.3f} ms (no-skip latency {no_skip * 1e3:.3f} ms)")
    doc["timeline_png"] = "timeline.png" if drawn else None
    write_json(out / "bench.json", doc)
    return doc


def _run_skipnet_only(executor: SkipNetExecutor, bundle: Path, out: str | os.PathLike, pattern: str, count: int,
                      period: float | None, load: float, rate: float | None, trace: str | None, seed: int,
                      command: str, url: str | None = None, images: str | os.PathLike | None = None,
                      save_images: str | os.PathLike | None = None) -> dict[str, Any]:
    """A SkipNet bundle alone: one fixed-policy run (the gates decide per input), in-process or at ``url``."""
    latency = measure_no_skip_latency(executor)
    period = period or latency / load
    arrivals = arrivals_for(pattern, count, period, rate, trace, seed)
    images, labels = _images(bundle, min(len(arrivals), 2000), images, save_images, executor.manifest)
    runs = {"skipnet": run_http(url, arrivals, images, labels) if url
            else run_inprocess(executor, FixedController(0), arrivals, images, labels)}
    summaries = {name: summarize(recs) for name, recs in runs.items()}
    doc = {
        "command": command, "bundle": str(bundle), "backend": executor.backend, "pattern": pattern,
        "count": len(arrivals), "seed": seed, "base_period_s": period, "no_skip_latency_s": latency,
        "delta_req_s": None, "min_acc": None, "target": url or "in-process",
        "configs": [c.to_dict() for c in executor.configs],
        "summaries": summaries, "table": table_rows(summaries, reference="skipnet"),
        "records": {name: to_columns(recs) for name, recs in runs.items()},
    }
    drawn = plot_timeline(runs["skipnet"], Path(out) / "timeline.png",
                          f"SkipNet (fixed policy), {pattern} workload, period {period * 1e3:.3f} ms")
    doc["timeline_png"] = "timeline.png" if drawn else None
    write_json(Path(out) / "bench.json", doc)
    return doc
