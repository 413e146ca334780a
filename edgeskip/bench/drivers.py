"""Drive a workload: in-process against an executor, or over HTTP against a running daemon.

Both are open-loop: requests are released at their arrival times whatever the server is doing, so a
request that arrives while one is in flight meets a busy executor. Every request yields a record.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import numpy as np

from edgeskip.errors import EdgeskipError
from edgeskip.runtime.dispatch import Dispatcher, Drop, Start, service_model_for
from edgeskip.runtime.executor import BundleExecutor
from edgeskip.runtime.policies import Policy


@dataclass
class Record:
    """One request: when it was sent (s from start), what happened, with which config, how long, right or not."""

    sent: float
    outcome: str  # processed | dropped | error
    config: int | None
    latency_s: float | None  # inference alone (as the executor or the daemon reports it)
    correct: bool | None
    skipped: float | None = None  # blocks skipped for this request (per input for SkipNet)
    reason: str | None = None  # why it was dropped (busy | queue_full | deadline)
    e2e_s: float | None = None  # arrival to answer: queueing + service (+ HTTP, over HTTP)

    def to_dict(self) -> dict:
        return asdict(self)


def to_columns(records: Sequence[Record]) -> dict[str, list]:
    """Records as columns (compact JSON): times rounded to the microsecond."""
    r6 = lambda v: None if v is None else round(v, 6)  # noqa: E731
    return {
        "sent": [r6(r.sent) for r in records],
        "outcome": [r.outcome for r in records],
        "config": [r.config for r in records],
        "latency_s": [r6(r.latency_s) for r in records],
        "correct": [r.correct for r in records],
        "skipped": [r.skipped for r in records],
        "reason": [r.reason for r in records],
        "e2e_s": [r6(r.e2e_s) for r in records],
    }


def _sleep_until(t0: float, t: float, spin: float = 0.0) -> None:
    """Sleep until ``t0 + t``; the last ``spin`` seconds busy-wait (a sleep overshoots by ~0.1 ms here)."""
    delay = t0 + t - time.perf_counter() - spin
    if delay > 0:
        time.sleep(delay)
    while spin and time.perf_counter() < t0 + t:
        pass


SPIN = 3e-4  # in-process: busy-wait the last 0.3 ms before an arrival (the thread has nothing else to do)


def run_inprocess(
    executor: BundleExecutor,
    policy: Policy,
    arrivals: Sequence[float],
    images: np.ndarray,
    labels: np.ndarray,
    queue_depth: int = 0,
    deadline: float | None = None,
    prior: Sequence[float] | None = None,
) -> list[Record]:
    """Real-time replay against ``executor`` on this thread, in event order, through the daemon's Dispatcher.

    Requests are released at their arrival times; one runs at a time on the real executor. Arrivals that
    fall while it runs are admitted (dropped or queued) with their own arrival times as soon as it returns,
    before its completion is handled: the order of events, and so every decision, is that of a server whose
    admission costs nothing. Service time = the inference call (the executor's own cost, no thread handoff
    or HTTP); queued requests start the moment the previous one ends. ``prior``: per-config service times
    for deadline estimates when the policy keeps none (``paper``, fixed configs)."""
    n = len(arrivals)
    if prior is None:
        prior = [c.latency_s for c in executor.configs]
    disp = Dispatcher(policy, service_model_for(policy, prior), queue_depth, deadline)
    records: list[Record | None] = [None] * n
    nxt = 0
    t0 = time.perf_counter()

    def drop(a: Drop) -> None:
        records[a.rid] = Record(arrivals[a.rid], "dropped", a.config, None, None, reason=a.reason)  # type: ignore[index]

    def run(start: Start) -> None:
        nonlocal nxt
        while start is not None:
            i = start.rid
            s = time.perf_counter()
            logits = executor.infer(images[i % len(images)][None], config=start.config)  # type: ignore[index]
            f = time.perf_counter()
            end = f - t0
            records[i] = Record(
                arrivals[i],
                "processed",
                start.config,
                f - s,  # type: ignore[index]
                bool(logits[0].argmax() == labels[i % len(labels)]),
                executor.last_skipped,  # type: ignore[index]
                e2e_s=end - arrivals[i],
            )  # type: ignore[index]
            while nxt < n and arrivals[nxt] < end:  # arrived while it ran: admitted in order, at their times
                a = disp.arrive(arrivals[nxt], nxt)
                if isinstance(a, Drop):
                    drop(a)
                nxt += 1
            start = None  # type: ignore[assignment]
            for a in disp.finish(end, f - s):
                if isinstance(a, Drop):
                    drop(a)
                else:
                    start = a

    while nxt < n:
        _sleep_until(t0, arrivals[nxt], spin=SPIN)
        a = disp.arrive(arrivals[nxt], nxt)
        nxt += 1
        if isinstance(a, Drop):
            drop(a)
        elif isinstance(a, Start):
            run(a)
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


class KeptAlive:
    """HTTP/1.1 POSTs to a loopback daemon over one kept-alive connection per calling thread, as a serving client
    sends them (a connection per request costs a TCP handshake and an accept on both sides each time). A
    connection the daemon closed meanwhile (its idle timeout) is opened again, once."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        check_loopback(url)
        parsed = urlparse(url)
        self.host, self.port, self.timeout = parsed.hostname, parsed.port or 80, timeout
        self._local = threading.local()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body) of one POST; connection errors raise OSError or http.client.HTTPException."""
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                raise
        raise AssertionError("unreachable")


def run_http(
    url: str,
    arrivals: Sequence[float],
    images: np.ndarray,
    labels: np.ndarray,
    timeout: float = 30.0,
    max_in_flight: int = 64,
    pin: int | None = None,
) -> list[Record]:
    """Open-loop HTTP replay against a daemon at ``url`` (raw float32 bodies); ``pin``: every request pinned
    to that config (``/v1/infer?config=K``; still admitted by the daemon's own policy and queue). Each sending
    thread keeps its connection alive (HTTP/1.1), as a serving client does: a connection per request cost the
    client and the daemon a TCP handshake and an accept each time (bench/README section 15.3)."""
    check_loopback(url)
    path = urlparse(url).path.rstrip("/") + "/v1/infer" + ("" if pin is None else f"?config={int(pin)}")
    headers = {"Content-Type": "application/octet-stream"}
    records: list[Record | None] = [None] * len(arrivals)
    client = KeptAlive(url, timeout)
    t0 = time.perf_counter()

    def send(i: int, sent: float) -> None:
        body = np.ascontiguousarray(images[i % len(images)], np.float32).tobytes()
        try:
            status, raw = client.post(path, body, headers)
            doc = json.loads(raw or b"{}")
        except (OSError, http.client.HTTPException, ValueError):
            records[i] = Record(sent, "error", None, None, None)
            return
        if status == 200:
            records[i] = Record(
                sent,
                "processed",
                doc["config"],
                doc["latency_s"],
                doc["top"][0]["index"] == int(labels[i % len(labels)]),
                doc.get("skipped_blocks"),
                e2e_s=time.perf_counter() - t0 - sent,
            )
        elif status == 503 and doc.get("dropped"):
            records[i] = Record(sent, "dropped", doc.get("config"), None, None, reason=doc.get("reason"))
        else:
            records[i] = Record(sent, "error", None, None, None)

    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        for i, t in enumerate(arrivals):
            _sleep_until(t0, t)
            pool.submit(send, i, time.perf_counter() - t0)
    return [r for r in records if r is not None]
