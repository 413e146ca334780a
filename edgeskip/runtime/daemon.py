"""Start-up and shutdown of the daemon: open the bundle, measure Delta_req, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.choices import EVENT_LOOPS
from edgeskip.runtime.connections import IDLE_TIMEOUT, MAX_CONNECTIONS, Guard, GuardedSite, GuardedUnixSite
from edgeskip.runtime.dispatch import Dispatcher, check_queue, service_model_for
from edgeskip.runtime.executor import BundleExecutor, open_executor
from edgeskip.runtime.policies import make_policy
from edgeskip.runtime.power import EnergyMeter, open_meter
from edgeskip.runtime.server import InferenceService, make_app


def measure_no_skip_latency(executor: BundleExecutor, repeats: int = 20) -> float:
    """Median batch-1 latency of config 0 (no skipping) with this executor, after :func:`check_module`."""
    check_module(executor)
    x = np.zeros((1, *executor.input_shape), np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        executor.infer(x, config=0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check_module(executor: BundleExecutor) -> None:
    """The bundle against its manifest: the module must take the manifest's input shape and give one logit
    per class name (one-line errors instead of a failure on the first request)."""
    x = np.zeros((1, *executor.input_shape), np.float32)
    try:
        logits = np.asarray(executor.infer(x, config=0))
    except Exception as e:  # noqa: BLE001 - each engine raises its own types; any failure here is the bundle's
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise EdgeskipError(
            f"the bundle's module does not run on its manifest's input shape {[1, *executor.input_shape]}: {first}"
        ) from None
    classes = len(executor.manifest.class_names)
    if logits.ndim != 2 or logits.shape[1] != classes:
        raise EdgeskipError(f"the bundle's module gives {list(logits.shape)} logits for {classes} class names")


def measure_config_latencies(executor: BundleExecutor, repeats: int = 10) -> list[float]:
    """Median batch-1 latency of every config with this executor, round-robin (the rate policies' priors)."""
    x = np.zeros((1, *executor.input_shape), np.float32)
    times: list[list[float]] = [[] for _ in executor.configs]
    for _ in range(repeats):
        for k in range(len(executor.configs)):
            t0 = time.perf_counter()
            executor.infer(x, config=k)
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def measure_service_time(executor: BundleExecutor, repeats: int = 20) -> float:
    """Median end-to-end service time of the no-skip config: what occupies the executor per request in the
    daemon (a raw body handed to a worker thread, decoded, run and checked by the daemon's own
    :func:`edgeskip.runtime.workers.execute`, handed back)."""
    import queue
    import threading

    from edgeskip.runtime.preprocess import MAX_PIXELS
    from edgeskip.runtime.workers import Job, execute

    job = Job("v1", np.zeros(executor.input_shape, np.float32).tobytes(), {"ctype": "application/octet-stream"})
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    done = threading.Event()

    def work() -> None:
        while jobs.get() is not None:
            execute(executor, job, 0, MAX_PIXELS)
            done.set()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    times = []
    try:
        for _ in range(repeats):
            done.clear()
            t0 = time.perf_counter()
            jobs.put(1)
            done.wait()
            times.append(time.perf_counter() - t0)
    finally:
        jobs.put(None)
        thread.join()
    return statistics.median(times)


def make_service(
    bundle: str,
    min_acc: float,
    delta_req: float | None,
    fixed: int | None,
    backend: str = "auto",
    policy: str = "paper",
    queue_depth: int = 0,
    deadline: float | None = None,
    policy_params: dict[str, float] | None = None,
    **executor_options: object,
) -> InferenceService:
    """Open the bundle and build the daemon's service: ``fixed`` (a config index) or the adaptation ``policy``.

    The end-to-end service time of the no-skip config (decoding a raw body, inference, checks: what the
    executor is occupied with per request) is measured here; it is ``paper``'s Delta_req unless given, and
    with the other configs' latencies the prior of the ``rate``/``mix`` service model."""
    check_queue(queue_depth, deadline)
    if delta_req is not None and (fixed is not None or policy != "paper"):
        raise EdgeskipError("--delta-req applies to policy paper only")
    executor = open_executor(bundle, backend, **executor_options)  # type: ignore[arg-type]
    check_module(executor)
    if fixed is not None:
        if not 0 <= fixed < len(executor.configs):
            raise EdgeskipError(f"--config {fixed} out of range 0..{len(executor.configs) - 1}")
        if policy_params:
            raise EdgeskipError("--config N (a fixed config) takes no policy parameters")
    name = "fixed" if fixed is not None else policy
    e2e = measure_service_time(executor)
    # priors: measured where a policy or a deadline uses them (the others need none at start-up)
    uses_prior = name in ("rate", "mix") or deadline is not None
    latencies = measure_config_latencies(executor) if uses_prior else [c.latency_s for c in executor.configs]
    prior = [t + max(e2e - latencies[0], 0.0) for t in latencies]  # the same per-request overhead on each
    chosen = make_policy(
        name,
        [c.val_accuracy for c in executor.configs],
        min_acc,
        delta_req=e2e if delta_req is None else delta_req,
        service_prior=prior,
        fixed=fixed,
        queue_depth=queue_depth,
        **(policy_params or {}),
    )
    dispatcher = Dispatcher(chosen, service_model_for(chosen, prior), queue_depth, deadline)
    return InferenceService(executor, dispatcher, None if fixed is not None else min_acc, service_time_s=e2e)


def run(coro: Coroutine[Any, Any, None], event_loop: str = "asyncio") -> None:
    """Run the daemon's coroutine on asyncio's own event loop or on uvloop (``pip install uvloop``; measured
    in bench/serve_footprint.py: a little less time per request for ~8 MB more resident memory)."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            coro.close()
            raise EdgeskipError("--event-loop uvloop needs uvloop (pip install uvloop)") from None
        uvloop.run(coro)
    elif event_loop == "asyncio":
        asyncio.run(coro)
    else:
        coro.close()
        raise EdgeskipError(f"unknown event loop {event_loop!r}; choose from {', '.join(EVENT_LOOPS)}")


def release_startup_memory() -> None:
    """Give back what start-up (imports, opening the bundle, measuring Delta_req) freed: a full collection,
    then glibc's ``malloc_trim`` (a no-op elsewhere). Measured: ~1.2 MiB less resident on ResNet-20."""
    import gc

    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_kib() -> int:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


async def memory_janitor(baseline_kib: int, period: float = 5.0) -> None:
    """After a burst (many uploads or connections at once), the heap keeps its freed pages, and aborted uploads
    leave their buffers in reference cycles (exception -> traceback -> frame -> buffer) that only the cycle
    collector frees: every ``period`` seconds, if resident memory is more than 10% over the baseline, collect
    them and give the free pages back (measured: 1,000 stalled 8 MiB uploads, bench/README §7)."""
    import gc

    while True:
        await asyncio.sleep(period)
        if baseline_kib and resident_kib() > baseline_kib * 1.1:
            gc.collect()
            trim_heap()


def default_model_name(bundle: str | os.PathLike) -> str:
    """The KServe v2 model name of a bundle: its folder's name."""
    return Path(bundle).resolve().name or "model"


LOOP_NICE = 5  # the event loop thread runs this much nicer than the inference thread (Linux)


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (Linux, where nice values are per thread; threads
    made earlier keep theirs). The daemon does it on its event loop thread, so that under overload the
    inference thread gets the CPU before the loop answers yet more drops: measured in bench/README §7."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    import threading

    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


SHUTDOWN_TIMEOUT = 3.0  # seconds for handlers in flight once SIGTERM/SIGINT arrives; then connections close


def start_energy(service: InferenceService, spec: str) -> tuple[EnergyMeter | None, str]:
    """Open ``--power SPEC`` and sample it for /metrics: (meter, a note for the readiness line)."""
    import logging

    log = logging.getLogger("edgeskip.serve")
    meter, line = open_meter(spec)
    if meter is None:
        log.warning(line)
        return None, "  energy none"

    def stopped(why: str) -> None:
        log.warning("power source %s stopped: %s; edgeskip_energy_joules keeps its last value", line, why)

    meter.on_error = stopped
    try:
        meter.start()
    except BaseException:
        meter.close()
        raise
    service.metrics.watch_energy(meter)
    return meter, f"  energy {line}"


def start_lean(
    service: InferenceService,
    name: str,
    host: str,
    port: int | None,
    path: str | None,
    max_body: int,
    max_connections: int,
    idle_timeout: float,
) -> tuple[Any, str]:
    """The lean listener on ``path`` and/or ``host:port``, and the readiness line's note; one-line errors."""
    from edgeskip.runtime.kserve import KServeV2
    from edgeskip.runtime.lean import LeanListener

    lean = LeanListener(service, KServeV2(service, name), max_body, max_connections, idle_timeout)
    notes = ""
    try:
        if path is not None:
            try:
                lean.listen_unix(path)
            except OSError as e:
                raise EdgeskipError(f"cannot listen on --lean-uds {path}: {e.strerror or e}") from None
            notes += f"  lean-uds {path}"
        if port is not None:
            try:
                bound = lean.listen_tcp(host, port)
            except OSError as e:
                raise EdgeskipError(f"cannot listen on --lean-port {host}:{port}: {e.strerror or e}") from None
            notes += f"  lean http://{host}:{bound}"
    except EdgeskipError:
        lean.close()
        raise
    return lean, notes


async def run_daemon(
    bundle: str,
    min_acc: float,
    delta_req: float | None,
    fixed: int | None,
    backend: str,
    host: str,
    port: int,
    max_body: int,
    on_ready: Callable[[str], None] = print,
    model_name: str | None = None,
    max_pixels: int | None = None,
    max_inflight_bytes: int | None = None,
    body_timeout: float | None = None,
    policy: str = "paper",
    queue_depth: int = 0,
    deadline: float | None = None,
    policy_params: dict[str, float] | None = None,
    max_connections: int = MAX_CONNECTIONS,
    idle_timeout: float = IDLE_TIMEOUT,
    loop_nice: int = LOOP_NICE,
    inline_max_s: float = 0.0,
    grpc_port: int | None = None,
    uds: str | None = None,
    grpc_uds: str | None = None,
    lean_uds: str | None = None,
    lean_port: int | None = None,
    power: str | None = None,
    **executor_options: object,
) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting, answer the request in flight, close every
    connection (slow and idle ones included) and return, within ``SHUTDOWN_TIMEOUT`` + the inference.
    ``grpc_port``: also serve KServe v2 over gRPC there (:mod:`edgeskip.runtime.kserve_grpc`; 0: a free port).
    ``uds``/``grpc_uds``: also listen for HTTP/gRPC on these Unix-domain socket paths (a stale socket of a dead
    daemon is replaced; anything else there is refused). ``lean_uds``/``lean_port``: the lean listener
    (:mod:`edgeskip.runtime.lean`, inference answered on each connection's thread) on that socket path / port of
    ``host``. ``power``: a power source
    (:mod:`edgeskip.runtime.power`) whose energy /metrics exports; one that fails while serving is logged and its
    counter stops (the service goes on).

    The signal handlers are installed first: a signal during start-up (or right after the readiness line)
    ends the daemon cleanly too."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    name = model_name or default_model_name(bundle)
    if not name or "/" in name or name.strip() != name:
        raise EdgeskipError(f"--model-name must be a non-empty name without '/' or surrounding spaces, got {name!r}")
    service = make_service(
        bundle, min_acc, delta_req, fixed, backend, policy, queue_depth, deadline, policy_params, **executor_options
    )
    for attr, value in (
        ("max_pixels", max_pixels),
        ("max_inflight_bytes", max_inflight_bytes),
        ("body_timeout", body_timeout),
        ("inline_max_s", inline_max_s),
    ):
        if value is not None:
            setattr(service, attr, value)
    service.loop = loop  # where requests queued by the lean listener's threads are handed over
    lean, lean_notes = None, ""
    if lean_uds is not None or lean_port is not None:  # before the loop's priority drops: its threads keep theirs
        try:
            lean, lean_notes = start_lean(
                service, name, host, lean_port, lean_uds, max_body, max_connections, idle_timeout
            )
        except EdgeskipError:
            service.close()  # the executor released before exit: one line of error, no binding's leak report
            raise
    lower_priority(loop_nice)  # this thread, the event loop's; the inference thread, made before, keeps its own
    runner = web.AppRunner(
        make_app(service, max_body, name),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=idle_timeout,
        lingering_time=0,
    )  # a body the daemon refused is not read: the answer, then close
    grpc_server = None
    meter, notes = None, ""
    try:
        if power:
            meter, notes = start_energy(service, power)
        notes += lean_notes
        await runner.setup()
        site = GuardedSite(runner, host, port, Guard(max_connections, service.count_status, idle_timeout))
        try:
            await site.start()
        except OSError as e:
            raise EdgeskipError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        if uds is not None:
            try:
                await GuardedUnixSite(runner, uds, Guard(max_connections, service.count_status, idle_timeout)).start()
            except OSError as e:
                raise EdgeskipError(f"cannot listen on --uds {uds}: {e.strerror or e}") from None
            notes += f"  uds {uds}"
        if grpc_port is not None or grpc_uds is not None:
            try:
                from edgeskip.runtime.kserve_grpc import start_grpc
            except ImportError as e:
                raise EdgeskipError(
                    f"--grpc-port needs grpcio: pip install 'edgeskip[grpc]' ({e.name} missing)"
                ) from None
            if grpc_uds is not None:
                from edgeskip.runtime.connections import claim_socket_path

                try:
                    claim_socket_path(grpc_uds)
                except OSError as e:
                    raise EdgeskipError(f"cannot listen on --grpc-uds {grpc_uds}: {e}") from None
            addresses = ([f"{host}:{grpc_port}"] if grpc_port is not None else []) + (
                [f"unix:{grpc_uds}"] if grpc_uds is not None else []
            )
            try:
                grpc_server, bound_grpc = await start_grpc(service, name, addresses, max_body)
            except (OSError, RuntimeError) as e:
                raise EdgeskipError(f"cannot listen for gRPC on {', '.join(addresses)}: {e}") from None
            if grpc_port is not None:
                notes += f"  grpc {host}:{bound_grpc[0]}"
            if grpc_uds is not None:
                notes += f"  grpc-uds {grpc_uds}"
        if not stop.is_set():
            bound = runner.addresses[0][1]
            c, d = service.policy, service.dispatcher
            extra = f"  delta_req {c.delta_req * 1e3:.3f} ms" if c.name == "paper" else ""
            queue = (
                f"  queue {d.queue_depth}" + (f" deadline {d.deadline * 1e3:g} ms" if d.deadline else "")
                if d.queue_depth
                else ""
            )
            measured = service.executor.manifest.extra.get("profile")
            front = f"profile {measured['machine']}" if measured else "compile-host"
            on_ready(
                f"listening on http://{host}:{bound}{notes}  model {name}  backend {service.executor.backend}  target "
                f"{service.executor.target}  policy {c.name}{extra}{queue}  service "
                f"{service.service_time_s * 1e3:.3f} ms  configs {list(c.allowed)}  front {front}"
            )
            sys.stdout.flush()
            release_startup_memory()
            janitor = asyncio.ensure_future(memory_janitor(resident_kib()))
            await stop.wait()
            janitor.cancel()
    finally:
        if lean is not None:  # no new connection; a request in flight finishes (the loop hands queued ones over)
            await loop.run_in_executor(None, lean.close)
        if grpc_server is not None:
            await grpc_server.stop(SHUTDOWN_TIMEOUT)  # refuses new RPCs, lets those in flight finish
            if grpc_uds is not None and os.path.exists(grpc_uds):
                os.unlink(grpc_uds)
        await runner.cleanup()  # closes the listener, waits for handlers in flight, closes connections
        service.close()
        if meter is not None:
            meter.close()
