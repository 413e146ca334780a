"""The benchmark: one workload replayed against adaptive depth and against fixed configs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from edgeskip.bench.drivers import KeptAlive, Record, probe_daemon, run_http, run_inprocess, to_columns
from edgeskip.bench.report import plot_sweep, plot_timeline, summarize, sweep_table, table_rows
from edgeskip.bench.sweep import RunSpec, parse_run, parse_runs
from edgeskip.bench.workload import arrivals as synthetic_arrivals
from edgeskip.bench.workload import load_trace
from edgeskip.errors import EdgeskipError
from edgeskip.manifest import Manifest
from edgeskip.runtime.daemon import measure_config_latencies, measure_no_skip_latency
from edgeskip.runtime.dispatch import check_queue
from edgeskip.runtime.executor import SkipNetExecutor, open_executor
from edgeskip.runtime.policies import FixedController
from edgeskip.runtime.power import Energy, EnergyMeter, open_meter
from edgeskip.utils.atomic import write_json


def test_images(
    bundle: Path, limit: int, images: str | os.PathLike | None = None, manifest: Manifest | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised labelled images: from ``images`` (.npz, see :mod:`edgeskip.bench.images`), else the bundle's
    own evaluation sample (hashed in its manifest). Never from the data spec inside ``model.pt``: a bundle
    must not choose files for this process to read. ``manifest``: the bundle's, if already read and verified."""
    from edgeskip.bench.images import load_images
    from edgeskip.manifest import load_manifest

    manifest = manifest or load_manifest(bundle)
    if images is None:
        if manifest.sample is None:
            raise EdgeskipError(
                f"bundle {bundle} carries no evaluation sample (built before it had one); pass --images FILE.npz"
            )
        images = bundle / manifest.sample
    return load_images(images, manifest, limit)


def _images(
    bundle: Path, limit: int, images: str | os.PathLike | None, save: str | os.PathLike | None, manifest: Manifest
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = test_images(bundle, limit, images, manifest)
    if save is not None:
        from edgeskip.bench.images import save_images

        save_images(save, xs, ys)
    return xs, ys


def arrivals_for(
    pattern: str, count: int, period: float | None, rate: float | None, trace: str | None, seed: int
) -> list[float]:
    if pattern == "trace":
        if not trace:
            raise EdgeskipError("--pattern trace needs --trace FILE")
        return load_trace(trace)[:count]
    if rate is not None and pattern != "poisson":
        raise EdgeskipError("--rate applies to --pattern poisson only (the others take --period or --load)")
    return synthetic_arrivals(pattern, count, 1.0 / rate if rate else period, seed)  # type: ignore[arg-type]


def http_service_time(url: str, image: np.ndarray, repeats: int = 30) -> float:
    """Median round trip of sequential requests pinned to config 0 at a daemon, over a kept-alive connection as
    the replay sends them: the original's end-to-end service time over HTTP, which ``--load`` is relative to
    there."""
    import statistics
    import time

    client = KeptAlive(url)
    path = urlparse(url).path.rstrip("/") + "/v1/infer?config=0"
    body = np.ascontiguousarray(image, np.float32).tobytes()
    times = []
    for _ in range(repeats + 3):
        t0 = time.perf_counter()
        status, raw = client.post(path, body, {"Content-Type": "application/octet-stream"})
        times.append(time.perf_counter() - t0)
        if status != 200:
            raise EdgeskipError(f"the daemon at {url} answered {status}: {raw[:200]!r}")
    return statistics.median(times[3:])


def default_runs(
    policy: str, queue_depth: int, deadline: float | None, fixed: Sequence[int], params: dict[str, float] | None
) -> list[RunSpec]:
    """The adaptive run (``--policy`` with the queue options, named "adaptive"), then the fixed configs."""
    runs = [replace(parse_run(policy, params), label="adaptive", queue_depth=queue_depth, deadline=deadline)]
    runs += [parse_run("original" if k == 0 else f"config {k}") for k in fixed]
    if not any(r.label == "original" for r in runs):
        runs.append(parse_run("original"))
    return runs


class _Power:
    """A run's energy from ``--power SPEC`` (None: not asked for), with the idle baseline if asked for."""

    def __init__(self, spec: str | None, idle_baseline: float = 0.0, interval: float = 0.05) -> None:
        self.meter: EnergyMeter | None = None
        self.note: str | None = None
        self.idle_w: float | None = None
        if spec is None:
            if idle_baseline:
                raise EdgeskipError("--idle-baseline needs --power")
            return
        if idle_baseline < 0:
            raise EdgeskipError(f"--idle-baseline must be seconds >= 0, got {idle_baseline}")
        self.meter, line = open_meter(spec, interval)
        if self.meter is None:
            self.note = line
            return
        if idle_baseline:
            self.idle_w = self.meter.measure_idle(idle_baseline)

    @property
    def source(self) -> str | None:
        return None if self.meter is None else self.meter.source.description

    def measured(self, run: Any) -> tuple[list[Record], Energy | None]:
        """``run()``'s records and the energy the machine used meanwhile."""
        if self.meter is None:
            return run(), None
        self.meter.start()
        try:
            records = run()
        finally:
            energy = self.meter.stop(self.idle_w)
        return records, energy

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "note": self.note,
            "idle_w": self.idle_w,
            "interval_s": None if self.meter is None else self.meter.interval,
        }

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close()


class _Bench:
    """What one benchmark needs once: the executor, its measured service times, images, and the runs."""

    def __init__(
        self,
        bundle: Path,
        backend: str,
        url: str | None,
        limit: int,
        images: Any,
        save_images: Any,
        compare: Any,
        executor_options: dict[str, Any],
        power: _Power | None = None,
    ) -> None:
        self.bundle, self.url = bundle, url
        self.power = power or _Power(None)
        if url:
            probe_daemon(url)
        self.executor = open_executor(bundle, backend, **executor_options)
        self.skipnet = isinstance(self.executor, SkipNetExecutor)
        self.other = None
        if compare is not None:
            other = open_executor(
                compare, backend, **{k: v for k, v in executor_options.items() if k not in ("digest", "verify_key")}
            )
            if not isinstance(other, SkipNetExecutor):
                raise EdgeskipError(f"--compare expects a SkipNet or DFS bundle; {compare} is an edgeskip bundle")
            if other.manifest.dataset_id != self.executor.manifest.dataset_id:
                raise EdgeskipError(
                    f"--compare bundle was built on {other.manifest.dataset_id}, "
                    f"not {self.executor.manifest.dataset_id}"
                )
            self.other = other
        # the learned-gate run's label: the kind of the learned-gate bundle ("skipnet" or "dfs"), if any
        learned = self.executor if self.skipnet else self.other
        self.gated = learned.manifest.kind if learned is not None else "skipnet"
        self.no_skip = measure_no_skip_latency(self.executor)
        self.latencies = measure_config_latencies(self.executor)
        self.images, self.labels = _images(bundle, limit, images, save_images, self.executor.manifest)
        # what --load is relative to: the original's end-to-end service time on the path driven
        self.service_time = http_service_time(url, self.images[0]) if url else self.no_skip
        self.accs = [c.val_accuracy for c in self.executor.configs]

    def test_accuracies(self, label: str) -> list[float]:
        """Per config, the test accuracy its bundle recorded (SkipNet's for run "skipnet")."""
        ex = self.other if label == self.gated else self.executor
        return [c.test_accuracy for c in ex.configs]  # type: ignore[union-attr]

    def run(
        self, spec: RunSpec, arrivals: Sequence[float], min_acc: float, delta_req: float | None
    ) -> tuple[list[Record], Energy | None]:
        """The run's records, and its energy where a power source measures it."""
        return self.power.measured(lambda: self._run(spec, arrivals, min_acc, delta_req))

    def _run(self, spec: RunSpec, arrivals: Sequence[float], min_acc: float, delta_req: float | None) -> list[Record]:
        if spec.label == self.gated:
            return run_inprocess(self.other, FixedController(0), arrivals, self.images, self.labels)
        if self.url:
            return run_http(
                self.url, arrivals, self.images, self.labels, pin=None if spec.label == "adaptive" else spec.fixed
            )
        policy, depth, deadline = spec.build(
            self.accs, min_acc, self.latencies, self.service_time if delta_req is None else delta_req
        )
        return run_inprocess(
            self.executor, policy, arrivals, self.images, self.labels, depth, deadline, prior=self.latencies
        )


def run_benchmark(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    pattern: str = "paper",
    count: int = 1000,
    period: float | None = None,
    load: float = 1.25,
    rate: float | None = None,
    trace: str | None = None,
    seed: int = 0,
    min_acc: float = 0.0,
    delta_req: float | None = None,
    fixed: Sequence[int] | None = None,
    url: str | None = None,
    backend: str = "auto",
    command: str = "",
    compare: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    save_images: str | os.PathLike | None = None,
    policy: str = "paper",
    policy_params: dict[str, float] | None = None,
    queue_depth: int = 0,
    deadline: float | None = None,
    runs: str | None = None,
    power: str | None = None,
    idle_baseline: float = 0.0,
    **executor_options: Any,
) -> dict[str, Any]:
    """Replay one workload against adaptive depth (``policy``) and fixed configs; write bench.json and timeline.png.

    Default period: the original's end-to-end service time (in-process: its inference; over HTTP: its round
    trip) divided by ``load`` (1.25: the original cannot keep up). ``runs``: run labels
    (:mod:`edgeskip.bench.sweep`) instead of the adaptive run + ``fixed``. With ``url`` every run goes to the
    daemon (fixed ones pinned with ``?config=K``), whose own policy and queue make the adaptive run.
    ``compare``: a SkipNet or DFS bundle of the same data set, replayed on the same arrivals as run "skipnet"/"dfs".
    ``images``: labelled images (.npz) instead of the bundle's test split; ``save_images``: write the ones used.
    A SkipNet (DFS) ``bundle`` on its own is replayed as run "skipnet" ("dfs") only (its gates decide per input).
    ``power``: a power source (:mod:`edgeskip.runtime.power`) measuring each run's energy; ``idle_baseline``:
    seconds of idle power measured first, also subtracted ("above idle").
    """
    bundle = Path(bundle)
    check_queue(queue_depth, deadline)
    if delta_req is not None and policy != "paper":
        raise EdgeskipError("--delta-req applies to policy paper only")
    b = _Bench(
        bundle,
        backend,
        url,
        2000 if count > 2000 else count,
        images,
        save_images,
        compare,
        executor_options,
        _Power(power, idle_baseline),
    )
    period = period or b.service_time / load
    arrivals = arrivals_for(pattern, count, period, rate, trace, seed)
    if b.skipnet:
        specs = [RunSpec(b.gated, "fixed", 0)]
        b.other = b.executor
    elif runs:
        specs = parse_runs(runs, policy_params)
        if url:
            raise EdgeskipError(
                "--runs drives policies in-process; over HTTP the daemon's own policy is the "
                "adaptive run (start one daemon per policy)"
            )
    else:
        n = len(b.executor.configs)
        ks = list(range(n)) if fixed is None else list(fixed)
        for k in ks:
            if not 0 <= k < n:
                raise EdgeskipError(f"fixed config {k} out of range 0..{n - 1}")
        specs = default_runs(policy, queue_depth, deadline, ks, policy_params)
    if b.other is not None and not b.skipnet:
        specs.append(RunSpec(b.gated, "fixed", 0))
    measured = {spec.label: b.run(spec, arrivals, min_acc, delta_req) for spec in specs}
    b.power.close()
    done = {name: recs for name, (recs, _) in measured.items()}
    reference = b.gated if b.skipnet else "original"
    tests = {name: b.test_accuracies(name) for name in done}
    summaries = {name: summarize(recs, tests[name], measured[name][1]) for name, recs in done.items()}
    doc = {
        "command": command,
        "bundle": str(bundle),
        "backend": b.executor.backend,
        "pattern": pattern,
        "count": len(arrivals),
        "seed": seed,
        "base_period_s": period,
        "no_skip_latency_s": b.no_skip,
        "service_time_s": b.service_time,
        "load": b.service_time / period,
        "config_latency_s": b.latencies,
        "policy": None if b.skipnet else policy,
        "policy_params": policy_params or {},
        "delta_req_s": (b.service_time if delta_req is None else delta_req) if policy == "paper" else None,
        "min_acc": None if b.skipnet else min_acc,
        "target": url or "in-process",
        "power": b.power.describe(),
        "front_profile": b.executor.manifest.extra.get("profile"),  # None: the compile host's fronts
        "runs": {s.label: s.describe() for s in specs},
        "configs": [c.to_dict() for c in b.executor.configs],
        "compare": None
        if b.other is None or b.skipnet
        else {"bundle": str(compare), "configs": [c.to_dict() for c in b.other.configs]},
        "summaries": summaries,
        "table": table_rows(summaries, reference=reference),
        "records": {name: to_columns(recs) for name, recs in done.items()},
    }
    first = next(iter(done))
    out = Path(out)
    title = f"{b.gated} (fixed policy)" if b.skipnet else f"{first} ({policy})" if first == "adaptive" else first
    drawn = plot_timeline(
        done[first],
        out / "timeline.png",
        f"{title}, {pattern} workload, period "
        f"{period * 1e3:.3f} ms (original's service time {b.service_time * 1e3:.3f} ms)",
    )
    doc["timeline_png"] = "timeline.png" if drawn else None
    write_json(out / "bench.json", doc)
    return doc


# what a sweep keeps of each run's summary (the energy figures only where a power source measured them)
SWEEP_KEYS = (
    "processed",
    "dropped",
    "accuracy",
    "expected_accuracy",
    "per_config",
    "drop_reasons",
    "latency_s",
    "e2e_s",
    "energy",
    "joules_per_inference",
    "inferences_per_joule",
    "inferences_per_joule_above_idle",
)


def sweep_row(summary: dict[str, Any]) -> dict[str, Any]:
    """What a load sweep keeps of one run's :func:`~edgeskip.bench.report.summarize` (:data:`SWEEP_KEYS`)."""
    return {k: summary[k] for k in SWEEP_KEYS if k in summary}


def _check_sweep(loads: Sequence[float], seeds: int) -> None:
    if not loads or any(not (x > 0) for x in loads):
        raise EdgeskipError(f"--loads must be positive numbers, got {list(loads)}")
    if seeds < 1:
        raise EdgeskipError(f"--seeds must be >= 1, got {seeds}")


def run_sweep(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    loads: Sequence[float],
    seeds: int = 3,
    runs: str = "original,paper,rate,mix",
    pattern: str = "paper",
    count: int = 1000,
    min_acc: float = 0.0,
    delta_req: float | None = None,
    url: str | None = None,
    backend: str = "auto",
    command: str = "",
    compare: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    policy_params: dict[str, float] | None = None,
    power: str | None = None,
    idle_baseline: float = 0.0,
    **executor_options: Any,
) -> dict[str, Any]:
    """A load sweep: every run at every load (× the original's capacity) and seed on the same arrivals;
    processed ratio and accuracy change vs the original with their spread; sweep.json and sweep.png.

    Over HTTP (``url``) the runs are the daemon as started ("daemon") and the original pinned to config 0."""
    _check_sweep(loads, seeds)
    b = _Bench(
        Path(bundle),
        backend,
        url,
        2000 if count > 2000 else count,
        images,
        None,
        compare,
        executor_options,
        _Power(power, idle_baseline),
    )
    if b.skipnet:
        raise EdgeskipError("a load sweep needs an edgeskip bundle (a SkipNet or DFS one goes in --compare)")
    specs = [parse_run("original"), RunSpec("adaptive", "daemon")] if url else parse_runs(runs, policy_params)
    if b.other is not None:
        specs.append(RunSpec(b.gated, "fixed", 0))
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for load in loads:
        for seed in range(seeds):
            arr = arrivals_for(pattern, count, b.service_time / load, None, None, seed)
            for spec in specs:
                recs, energy = b.run(spec, arr, min_acc, delta_req)
                s = summarize(recs, b.test_accuracies(spec.label), energy)
                rows.setdefault(f"{load:g}", {}).setdefault(spec.label, []).append(sweep_row(s))
    b.power.close()
    table = sweep_table(rows)
    doc = {
        "command": command,
        "bundle": str(bundle),
        "backend": b.executor.backend,
        "pattern": pattern,
        "count": count,
        "seeds": seeds,
        "loads": list(loads),
        "min_acc": min_acc,
        "target": url or "in-process",
        "power": b.power.describe(),
        "front_profile": b.executor.manifest.extra.get("profile"),
        "service_time_s": b.service_time,
        "config_latency_s": b.latencies,
        "configs": [c.to_dict() for c in b.executor.configs],
        "runs": {s.label: s.describe() for s in specs},
        "table": table,
        "rows": rows,
    }
    out = Path(out)
    drawn = plot_sweep(table, out / "sweep.png", f"{pattern} workload, {seeds} seeds, {url or 'in-process'}")
    doc["sweep_png"] = "sweep.png" if drawn else None
    write_json(out / "sweep.json", doc)
    return doc


def run_front_sweep(
    bundles: dict[str, str | os.PathLike],
    loads: Sequence[float],
    seeds: int = 3,
    runs: str = "original,paper,rate,mix",
    pattern: str = "paper",
    count: int = 1000,
    min_acc: float = 0.0,
    backend: str = "auto",
    **executor_options: Any,
) -> dict[str, Any]:
    """A load sweep over several bundles of one model (their fronts: e.g. float, int8 blocks, int8 everywhere), in
    one run: at each load and seed the same arrivals (relative to the first bundle's original) replay every run
    label of every bundle, bundles in turn (rotated per seed); rows ``NAME:LABEL``, and ``original`` (the first
    bundle's) as the reference of the table, run first at each load and seed. Each bundle's policies take their own
    measured service times as priors; the arrivals are the same for all. Returns the document :func:`run_sweep`
    writes, without writing it."""
    if not bundles:
        raise EdgeskipError("a front sweep needs at least one bundle")
    _check_sweep(loads, seeds)
    benches = {
        name: _Bench(Path(path), backend, None, 2000 if count > 2000 else count, None, None, None, executor_options)
        for name, path in bundles.items()
    }
    first = next(iter(benches.values()))
    ids = {b.executor.manifest.dataset_id for b in benches.values()}
    if len(ids) > 1:
        raise EdgeskipError(f"the bundles were built on different data sets: {sorted(ids)}")
    specs = [s for s in parse_runs(runs) if s.label != "original"]
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for load in loads:
        for seed in range(seeds):
            arr = arrivals_for(pattern, count, first.service_time / load, None, None, seed)
            order = list(benches.items())
            order = order[seed % len(order) :] + order[: seed % len(order)]
            jobs = [("original", first, parse_run("original"))]
            jobs += [(f"{name}:{spec.label}", b, spec) for name, b in order for spec in specs]
            for label, b, spec in jobs:
                recs, _ = b.run(spec, arr, min_acc, None)
                s = summarize(recs, b.test_accuracies(spec.label))
                rows.setdefault(f"{load:g}", {}).setdefault(label, []).append(sweep_row(s))
    return {
        "bundles": {name: str(path) for name, path in bundles.items()},
        "backend": {name: b.executor.backend for name, b in benches.items()},
        "pattern": pattern,
        "count": count,
        "seeds": seeds,
        "loads": list(loads),
        "min_acc": min_acc,
        "service_time_s": first.service_time,
        "fronts": {
            name: [{**c.to_dict(), "latency_measured_s": t} for c, t in zip(b.executor.configs, b.latencies)]
            for name, b in benches.items()
        },
        "table": sweep_table(rows),
        "rows": rows,
    }
