"""Attack and overload figures of the daemon, old and new code side by side in one run (127.0.0.1 only,
every loop bounded in count and time).

- **stall**: one client repeats a PNG declaring 13000x13000 black pixels (~0.5 MB on the wire) while another
  polls ``/healthz`` every 10 ms; p50/p99/max of the health checks and the attacker's answers.
- **stalled uploads**: clients each declare an 8 MiB body, send all of it but the last byte and stall (the
  issue's attack): 100 against the old daemon (more would take GBs), 100 and 1,000 against the new one; the
  daemon's resident-memory growth, what the clients were answered, a good request meanwhile, memory 6 s
  after they close.
- **overload**: useful throughput (200 answers per second) of 40 concurrent keep-alive clients sending raw
  tensors as fast as they can, vs one sequential client, for a few seconds each, ``--rounds`` times, the
  variants in turn: each daemon as started by default (adaptive: under overload Algorithm 1 moves to faster
  configs) and pinned to the original network (``--config 0``: the drop path alone); the new one also with
  the event loop at the inference thread's priority (``--loop-nice 0``) and at nice 10.

    python bench/attacks.py bench/work/bundle_r20_sd200 --old 6099bbd --rounds 3 --out bench/results
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_footprint import REPO, Daemon, add_old_worktree, drop_work, rss_kib, v1_copy  # noqa: E402

from edgeskip.utils.atomic import write_json  # noqa: E402


def big_png(side: int = 13000) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def stall(port: int, png: bytes, seconds: float) -> dict:
    """/healthz latency while another connection repeats the big PNG."""
    stop = time.perf_counter() + seconds
    attacker: list[tuple[int, float]] = []

    def attack() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            conn.request("POST", "/v1/infer", png, {"Content-Type": "image/png"})
            r = conn.getresponse()
            r.read()
            attacker.append((r.status, time.perf_counter() - t))
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    th = threading.Thread(target=attack)
    th.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    health = []
    while time.perf_counter() < stop:
        t = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        health.append(time.perf_counter() - t)
        time.sleep(0.01)
    th.join()
    conn.close()
    h = np.array(health) * 1e3
    return {
        "healthz_checks": len(h),
        "healthz_p50_ms": float(np.percentile(h, 50)),
        "healthz_p99_ms": float(np.percentile(h, 99)),
        "healthz_max_ms": float(h.max()),
        "attacker_requests": len(attacker),
        "attacker_statuses": sorted({s for s, _ in attacker}),
        "attacker_median_s": statistics.median([d for _, d in attacker]) if attacker else None,
    }


def throughput(port: int, body: bytes, clients: int, seconds: float) -> dict:
    """200 answers per second with ``clients`` concurrent keep-alive connections sending back to back."""
    stop = time.perf_counter() + seconds
    counts = [{"200": 0, "503": 0, "other": 0} for _ in range(clients)]

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.perf_counter() < stop:
            conn.request("POST", "/v1/infer", body, {"Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            r.read()
            counts[k][str(r.status) if r.status in (200, 503) else "other"] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    total = {k: sum(c[k] for c in counts) for k in ("200", "503", "other")}
    return {"clients": clients, "seconds": dt, **total, "useful_per_s": total["200"] / dt}


def rss_mib(pid: int) -> float:
    return rss_kib(pid)[0] / 1024


def stalled_uploads(port: int, pid: int, body: bytes, conns: int, sent: int, declared: int = 8 * 2**20) -> dict:
    """``conns`` clients declare ``declared`` bytes, send ``sent`` of them and stall; the daemon's RSS growth,
    the first answers they got, a good request's answer meanwhile, and RSS once they close."""
    import socket

    base = rss_mib(pid)
    head = (
        f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    chunk = b"\0" * sent
    socks, peak, answers = [], base, {}
    t0 = time.perf_counter()
    for _ in range(conns):
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError as e:
            answers[type(e).__name__] = answers.get(type(e).__name__, 0) + 1
            continue
        try:
            c.sendall(head + chunk)
        except OSError:  # answered (503/413) and closed while sending
            pass
        socks.append(c)
        peak = max(peak, rss_mib(pid)) if len(socks) % 50 == 0 else peak
    sending_s = time.perf_counter() - t0
    time.sleep(1.0)
    peak = max(peak, rss_mib(pid))
    for c in socks:  # what each stalled client has been answered by now (nothing: still open, waiting)
        c.setblocking(False)
        try:
            data = c.recv(64)
            key = data.split(b"\r\n", 1)[0].decode(errors="replace")[9:12] if data else "closed"
        except BlockingIOError:
            key = "open, unanswered"
        except OSError as e:
            key = type(e).__name__
        answers[key] = answers.get(key, 0) + 1
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t = time.perf_counter()
    conn.request("POST", "/v1/infer", body, {"Content-Type": "application/octet-stream"})
    status = conn.getresponse().status
    good = time.perf_counter() - t
    conn.close()
    for c in socks:
        c.close()
    time.sleep(6.0)  # the daemon gives freed heap pages back every 5 s when over its baseline
    return {
        "connections": conns,
        "bytes_sent_each": sent,
        "declared_each": declared,
        "sending_s": sending_s,
        "rss_before_mib": base,
        "rss_growth_mib": peak - base,
        "answers": answers,
        "good_request_status": status,
        "good_request_s": good,
        "rss_after_close_mib": rss_mib(pid),
    }


def overload(port: int, body: bytes, seconds: float) -> dict:
    v: dict = {"sequential": throughput(port, body, 1, seconds), "overload_40": throughput(port, body, 40, seconds)}
    v["overload_over_sequential"] = v["overload_40"]["useful_per_s"] / v["sequential"]["useful_per_s"]
    return v


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--old", required=True, help="git revision of the old daemon")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    ap.add_argument("--rounds", type=int, default=3, help="overload measurements per variant, interleaved")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument(
        "--queue-depth",
        type=int,
        default=0,
        help="also measure overload on the new daemon with this --queue-depth (requests wait, no drops)",
    )
    args = ap.parse_args(argv)
    shape = json.loads((args.bundle / "manifest.json").read_text())["input"]["shape"][1:]
    body = np.random.default_rng(0).standard_normal(shape).astype(np.float32).tobytes()
    png = big_png()
    work = Path(tempfile.mkdtemp(prefix="attacks-"))
    res: dict = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "bundle": str(args.bundle),
        "old": args.old,
        "png_bytes": len(png),
        "variants": {},
    }
    runs = [
        ("old", work / "old", (), 100),
        ("new", REPO, (), 1000),  # as started by default: adaptive (paper)
        ("old --config 0", work / "old", ("--config", "0"), 0),
        ("new --config 0", REPO, ("--config", "0"), 0),
        ("new --config 0 --loop-nice 0", REPO, ("--config", "0", "--loop-nice", "0"), 0),
        ("new --config 0 --loop-nice 10", REPO, ("--config", "0", "--loop-nice", "10"), 0),
    ]
    if args.queue_depth:
        runs.append((f"new --queue-depth {args.queue_depth}", REPO, ("--queue-depth", str(args.queue_depth)), 0))
    try:
        add_old_worktree(args.old, work)
        bundle = v1_copy(args.bundle, work / args.bundle.name)
        for name, _root, _extra, _ in runs:  # attacks: once each
            res["variants"][name] = {"overload": []}
        for _ in range(args.rounds):  # overload: the variants in turn, each round
            for name, root, extra, _ in runs:
                d = Daemon(name, root, bundle, "iree", extra)
                try:
                    res["variants"][name]["overload"].append(overload(d.port, body, args.seconds))
                finally:
                    d.stop()
        for name, root, extra, big in runs:
            if not big:
                continue
            d = Daemon(name, root, bundle, "iree", extra)
            try:
                v = res["variants"][name]
                v["stall"] = stall(d.port, png, args.seconds)
            finally:
                d.stop()
            v["stalled_uploads"] = []
            for n in sorted({100, big}):
                d = Daemon(name, root, bundle, "iree", extra)
                try:
                    v["stalled_uploads"].append(stalled_uploads(d.port, d.proc.pid, body, n, 8 * 2**20 - 1))
                finally:
                    d.stop()
    finally:
        drop_work(work)
    write_json(args.out / "attacks.json", res)
    for name, v in res["variants"].items():
        ratios = [o["overload_over_sequential"] for o in v["overload"]]
        print(
            f"{name}: useful throughput 40 clients / sequential: "
            + ", ".join(
                f"{o['overload_40']['useful_per_s']:.0f}/{o['sequential']['useful_per_s']:.0f}" for o in v["overload"]
            )
            + f" = {min(ratios):.2f}-{max(ratios):.2f}x"
        )
        if "stall" not in v:
            continue
        s = v["stall"]
        print(
            f"{name}: big PNG: /healthz p99 {s['healthz_p99_ms']:.1f} ms (max {s['healthz_max_ms']:.1f}), attacker "
            f"answers {s['attacker_statuses']} in {s['attacker_median_s']:.3f} s"
        )
        for u in v["stalled_uploads"]:
            print(
                f"{name}: {u['connections']} stalled uploads: RSS +{u['rss_growth_mib']:.0f} MiB (from "
                f"{u['rss_before_mib']:.0f}), answers {u['answers']}, good request {u['good_request_status']} in "
                f"{u['good_request_s']:.3f} s, RSS after close {u['rss_after_close_mib']:.0f} MiB"
            )


if __name__ == "__main__":
    main()
