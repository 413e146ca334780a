"""Drive a workload: in-process against an executor, or over HTTP against a running daemon.

Both are open-loop: requests are released at their arrival times whatever the server is doing, so a
request that arrives while one is in flight meets a busy executor. Every request yields a record.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.adaptation import AdaptiveController, FixedController
from edgeskip.runtime.executor import BundleExecutor


@dataclass
class Record:
    """One request: when it was sent (s from start), what happened, with which config, how long, right or not."""

    sent: float
    outcome: str  # processed | dropped | error
    config: int | None
    latency_s: float | None
    correct: bool | None
    skipped: float | None = None  # blocks skipped for this request (per input for SkipNet)

    def to_dict(self) -> dict:
        return asdict(self)


def to_columns(records: Sequence[Record]) -> dict[str, list]:
    """Records as columns (compact JSON): times rounded to the microsecond."""
    r6 = lambda v: None if v is None else round(v, 6)  # noqa: E731
    return {"sent": [r6(r.sent) for r in records], "outcome": [r.outcome for r in records],
            "config": [r.config for r in records], "latency_s": [r6(r.latency_s) for r in records],
            "correct": [r.correct for r in records], "skipped": [r.skipped for r in records]}


def _sleep_until(t0: float, t: float) -> None:
    delay = t0 + t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def run_inprocess(executor: BundleExecutor, controller: AdaptiveController | FixedController, arrivals: Sequence[float],
                  images: np.ndarray, labels: np.ndarray) -> list[Record]:
    """Real-time replay against ``executor`` with one worker thread (the daemon's model, minus HTTP)."""
    records: list[Record | None] = [None] * len(arrivals)
    busy = threading.Event()
    worker = ThreadPoolExecutor(max_workers=1)
    t0 = time.perf_counter()

    def work(i: int, config: int, sent: float) -> None:
        try:
            s = time.perf_counter()
            logits = executor.infer(images[i % len(images)][None], config=config)
            lat = time.perf_counter() - s
            records[i] = Record(sent, "processed", config, lat, bool(logits[0].argmax() == labels[i % len(labels)]),
                                executor.last_skipped)
        finally:
            busy.clear()

    for i, t in enumerate(arrivals):
        _sleep_until(t0, t)
        now = time.perf_counter() - t0
        d = controller.on_request(now, busy.is_set())
        if d.dropped:
            records[i] = Record(now, "dropped", d.config, None, None)
        else:
            busy.set()
            worker.submit(work, i, d.config, now)
    worker.shutdown(wait=True)
    return [r for r in records if r is not None]


def check_loopback(url: str) -> None:
    """Benchmarks only ever target this machine: an http URL whose host is an address in 127.0.0.0/8, ::1,
    or the name localhost (parsed, not matched by prefix: 127.evil.example.com is refused)."""
    import ipaddress

    try:
        parts = urlparse(url)
        host, _ = parts.hostname or "", parts.port  # .port raises ValueError on a bad port
    except ValueError as e:
        raise EdgeskipError(f"bad --url {url!r}: {e}") from None
    if parts.scheme != "http":
        raise EdgeskipError(f"--url must be http://HOST:PORT on loopback, got {url!r}")
    if host != "localhost":
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = False
        if not ok:
            raise EdgeskipError(f"bench only targets loopback addresses (127.0.0.0/8, localhost, ::1), not {host!r}")


def probe_daemon(url: str) -> None:
    """A loopback URL where a daemon answers /healthz, or a one-line error (before any request is timed)."""
    check_loopback(url)
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=5) as r:
            r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise EdgeskipError(f"no edgeskip daemon answers at {url}: {reason}") from None


def run_http(url: str, arrivals: Sequence[float], images: np.ndarray, labels: np.ndarray,
             timeout: float = 30.0, max_in_flight: int = 64) -> list[Record]:
    """Open-loop HTTP replay against a daemon at ``url`` (raw float32 bodies)."""
    check_loopback(url)
    endpoint = url.rstrip("/") + "/v1/infer"
    records: list[Record | None] = [None] * len(arrivals)
    t0 = time.perf_counter()

    def send(i: int, sent: float) -> None:
        body = np.ascontiguousarray(images[i % len(images)], np.float32).tobytes()
        req = urllib.request.Request(endpoint, data=body, headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                doc = json.loads(r.read())
            pred = doc["top"][0]["index"]
            records[i] = Record(sent, "processed", doc["config"], doc["latency_s"], pred == int(labels[i % len(labels)]),
                                doc.get("skipped_blocks"))
        except urllib.error.HTTPError as e:
            doc = json.loads(e.read() or b"{}")
            if e.code == 503 and doc.get("dropped"):
                records[i] = Record(sent, "dropped", doc.get("config"), None, None)
            else:
                records[i] = Record(sent, "error", None, None, None)
        except (urllib.error.URLError, OSError, ValueError):
            records[i] = Record(sent, "error", None, None, None)

    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        for i, t in enumerate(arrivals):
            _sleep_until(t0, t)
            pool.submit(send, i, time.perf_counter() - t0)
    return [r for r in records if r is not None]
