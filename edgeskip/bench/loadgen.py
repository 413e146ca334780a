"""MLPerf LoadGen (``mlcommons-loadgen``) server scenario driving an ``edgeskip serve`` daemon.

LoadGen issues queries at Poisson arrival times for a target QPS; the SUT forwards each sample to
the daemon over HTTP from a thread pool (so queries overlap as in the server scenario), each thread over its own
kept-alive connection (``KeptAlive``, as ``edgeskip bench --url`` sends; a connection per request added ~0.6 ms to
every latency LoadGen reported, bench/README section 15.4). LoadGen has
no notion of a dropped query, so a 503 "dropped" answer completes the query at once and is counted
separately; LoadGen's own log (mlperf_log_summary.txt, ...) goes to the output folder.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from edgeskip.bench.drivers import KeptAlive, check_loopback
from edgeskip.errors import EdgeskipError


def run_loadgen(
    url: str,
    images: np.ndarray,
    labels: np.ndarray,
    target_qps: float,
    count: int,
    out: str | os.PathLike,
    seed: int = 0,
    timeout: float = 30.0,
    max_in_flight: int = 64,
) -> dict[str, Any]:
    """Run LoadGen's server scenario (performance mode) against the daemon at ``url``."""
    try:
        import mlperf_loadgen as lg
    except ImportError:
        raise EdgeskipError(
            "MLPerf LoadGen mode needs the mlcommons-loadgen package (pip install mlcommons-loadgen)"
        ) from None
    check_loopback(url)
    if target_qps <= 0 or count < 1:
        raise EdgeskipError("LoadGen needs a positive --rate and --count")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    client = KeptAlive(url, timeout)
    path = urlparse(url).path.rstrip("/") + "/v1/infer"
    headers = {"Content-Type": "application/octet-stream"}
    lock = threading.Lock()
    stats = {"processed": 0, "dropped": 0, "errors": 0, "correct": 0}
    configs: dict[int, int] = {}
    pool = ThreadPoolExecutor(max_workers=max_in_flight)

    def one(sample_id: int, index: int) -> None:
        body = np.ascontiguousarray(images[index], np.float32).tobytes()
        outcome, cfg, correct = "errors", None, False
        try:
            status, raw = client.post(path, body, headers)
            doc = json.loads(raw or b"{}")
            if status == 200:
                outcome, cfg, correct = "processed", doc["config"], doc["top"][0]["index"] == int(labels[index])
            elif status == 503 and doc.get("dropped"):
                outcome = "dropped"
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError):
            pass
        with lock:
            stats[outcome] += 1
            stats["correct"] += int(correct)
            if cfg is not None:
                configs[cfg] = configs.get(cfg, 0) + 1
        lg.QuerySamplesComplete([lg.QuerySampleResponse(sample_id, 0, 0)])

    def issue(samples: list) -> None:
        for s in samples:
            pool.submit(one, s.id, s.index)

    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server
    settings.mode = lg.TestMode.PerformanceOnly
    settings.server_target_qps = float(target_qps)
    settings.min_query_count = count
    settings.max_query_count = count
    settings.min_duration_ms = 0
    settings.max_duration_ms = int(1000 * (count / target_qps) * 3 + 10_000)
    settings.schedule_rng_seed = seed
    settings.qsl_rng_seed = seed
    settings.sample_index_rng_seed = seed
    log = lg.LogSettings()
    log.log_output.outdir = str(out)
    log.log_output.copy_summary_to_stdout = False
    sut = lg.ConstructSUT(issue, lambda: None)
    n = len(images)
    qsl = lg.ConstructQSL(n, n, lambda idx: None, lambda idx: None)
    t0 = time.perf_counter()
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log)
    finally:
        pool.shutdown(wait=True)
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    wall = time.perf_counter() - t0
    summary_file = out / "mlperf_log_summary.txt"
    summary = summary_file.read_text() if summary_file.exists() else ""
    line = next((l for l in summary.splitlines() if "Completed samples per second" in l), "")
    return {
        "harness": "mlperf-loadgen server scenario",
        "target_qps": target_qps,
        "queries": count,
        "wall_s": wall,
        "processed": stats["processed"],
        "dropped": stats["dropped"],
        "errors": stats["errors"],
        "accuracy": stats["correct"] / stats["processed"] if stats["processed"] else None,
        "per_config": dict(sorted(configs.items())),
        "loadgen_completed_per_s": line.split(":")[-1].strip() or None,
        "loadgen_log": str(summary_file),
    }
