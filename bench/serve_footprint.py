"""The daemon's footprint and per-request overhead, old and new code side by side in one run.

For each variant (``new``: this checkout; ``new_uvloop``: the same with ``--event-loop uvloop``; ``old``: the
package at git revision ``--old``, checked out into a temporary worktree) it starts ``edgeskip serve BUNDLE`` on 127.0.0.1 and measures:

- start-up: process start to the first answered inference request (the daemon measures Delta_req first);
- resident memory (VmRSS, and the peak VmHWM) after 100 requests;
- its own cost per request: a sequential keep-alive client (never two requests in flight, so nothing is
  dropped) sends raw-tensor requests; overhead = round trip - the inference time the daemon reports.
  Two clients: Python's ``http.client`` (what the first measurement used; its response parsing alone costs
  ~0.1 ms here) and a lean one (one pre-built request per send, the reply read by its Content-Length).
  Variants and clients alternate in blocks, so drift of the machine hits all alike.

Floors measured with the same clients in the same run, to say where the time goes: a bare asyncio server
answering a canned response of the same size (loopback + client), and a bare aiohttp handler (+ aiohttp).

Both variants serve one copy of the bundle with a version-1 manifest (the old reader knows only version 1;
the new one upgrades it on reading; same artifacts).

    python bench/serve_footprint.py bench/work/bundle_r20_sd --old ca6f8df --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIENTS = ("http.client", "lean")
sys.path.insert(0, str(REPO))

from edgeskip.utils.atomic import write_json  # noqa: E402


def v1_copy(bundle: Path, dest: Path) -> Path:
    """``bundle`` with its manifest in version-1 form (artifacts hard-linked, not copied)."""
    shutil.copytree(bundle, dest, copy_function=os.link)
    doc = json.loads((bundle / "manifest.json").read_text())
    if doc["version"] == 2:
        doc["version"] = 1
        doc.pop("kind", None)
        doc["gated"] = {"onnx": doc.pop("onnx")["gated"], **doc.get("gated", {})}
    (dest / "manifest.json").unlink()
    (dest / "manifest.json").write_text(json.dumps(doc))
    return dest


def add_old_worktree(rev: str, work: Path) -> Path:
    """``work/old``: a git worktree of this repository at ``rev``, for old-vs-new runs (see :func:`drop_work`)."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(work / "old"), rev], check=True, capture_output=True
    )
    return work / "old"


def drop_work(work: Path) -> None:
    """Remove the worktree ``work/old`` (if any) and the folder ``work``."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "old")], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in l)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class LeanClient:
    """Keep-alive HTTP/1.1 over one socket: a pre-built request, the reply read by its Content-Length."""

    def __init__(self, port: int, body: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.req = (
            f"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def post(self) -> bytes:
        self.sock.sendall(self.req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.sock.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        n = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
        while len(rest) < n:
            rest += self.sock.recv(65536)
        return rest

    def close(self) -> None:
        self.sock.close()


class Daemon:
    def __init__(self, name: str, code_root: Path, bundle: Path, backend: str, extra: tuple[str, ...] = ()) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeskip.cli", "serve", str(bundle), "--port", "0", "--backend", backend, *extra],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=code_root,
        )
        self.banner = self.proc.stdout.readline()
        url = self.banner.split()[2]
        host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.conn = http.client.HTTPConnection(host, self.port, timeout=30)
        self.ready_s = time.perf_counter() - t0

    def first_answer(self, body: bytes, t_start: float) -> float:
        self.request(body)
        return time.perf_counter() - t_start

    def request(self, body: bytes, lean: LeanClient | None = None) -> tuple[float, float]:
        t0 = time.perf_counter()
        if lean is not None:
            raw = lean.post()
        else:
            self.conn.request("POST", "/v1/infer", body, {"Content-Type": "application/octet-stream"})
            raw = self.conn.getresponse().read()
        dt = time.perf_counter() - t0
        return dt, json.loads(raw).get("latency_s") or 0.0

    def stop(self) -> None:
        self.conn.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


class Floor(Daemon):
    """A bare server in its own process answering every POST with a canned reply: ``asyncio`` (a Protocol)
    or ``aiohttp`` (one handler)."""

    def __init__(self, kind: str) -> None:  # noqa: D107 - same client side as a daemon
        self.name = f"floor_{kind}"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-floor", kind], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        url = self.proc.stdout.readline().split()[2]
        self.port = int(url.rsplit(":", 1)[1])
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.ready_s = 0.0


FLOOR_REPLY = json.dumps(
    {"top": [{"class": "airplane", "index": 0, "score": 0.5}] * 5, "config": 0, "skipped_blocks": 0, "latency_s": 0.0}
).encode()


async def serve_floor(kind: str) -> None:
    """Serve the canned reply until killed (``--serve-floor``)."""
    if kind == "asyncio":
        reply = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(FLOOR_REPLY)}\r\n\r\n"
        ).encode() + FLOOR_REPLY

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                self.t, self.buf = transport, b""

            def data_received(self, data):  # requests of a known size: answer once the body is in
                self.buf += data
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                n = next(
                    int(l.split(b":")[1])
                    for l in self.buf[:end].split(b"\r\n")
                    if l.lower().startswith(b"content-length:")
                )
                if len(self.buf) >= end + 4 + n:
                    self.buf = self.buf[end + 4 + n :]
                    self.t.write(reply)

        server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    else:
        from aiohttp import web

        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=FLOOR_REPLY, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/infer", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def plot(res: dict, dest: Path) -> None:
    """Per-request overhead (both clients) and resident memory of every variant, floors beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["variants"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(names))
    for j, c in enumerate(CLIENTS):
        a.bar(x + (j - 0.5) * 0.38, [res["variants"][n][c]["median_overhead_ms"] for n in names], 0.38, label=c)
    a.axhline(0.15, color="k", ls="--", lw=1, label="target 0.15 ms")
    a.set_xticks(x, names, rotation=20)
    a.set_ylabel("median overhead per request (ms)")
    a.set_title("round trip - reported inference (sequential keep-alive)")
    a.legend(fontsize=8)
    daemons = [n for n in names if "rss_after_100_requests_mib" in res["variants"][n]]
    b.bar(daemons, [res["variants"][n]["rss_after_100_requests_mib"] for n in daemons], color="tab:gray")
    b.axhline(60e6 / 2**20, color="k", ls="--", lw=1, label="target 60 MB")
    b.set_ylabel("resident memory after 100 requests (MiB)")
    b.legend(fontsize=8)
    fig.suptitle(f"edgeskip serve on {Path(res['bundle']).name}: old ({res['old']}) vs new", fontsize=10)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if argv is None and sys.argv[1:2] == ["--serve-floor"]:
        asyncio.run(serve_floor(sys.argv[2]))
        return
    if argv is None and sys.argv[1:2] == ["--replot"]:  # --replot RESULT.json: the PNG again from its JSON
        path = Path(sys.argv[2])
        plot(json.loads(path.read_text()), path.with_suffix(".png"))
        return
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--old", required=True, help="git revision of the old daemon")
    ap.add_argument("--count", type=int, default=2000, help="timed requests per variant")
    ap.add_argument("--block", type=int, default=200, help="requests per variant before switching")
    ap.add_argument("--backend", default="iree")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    shape = json.loads((args.bundle / "manifest.json").read_text())["input"]["shape"][1:]
    body = np.random.default_rng(0).standard_normal(shape).astype(np.float32).tobytes()
    work = Path(tempfile.mkdtemp(prefix="serve-footprint-"))
    daemons: dict[str, Daemon] = {}
    try:
        old_root = add_old_worktree(args.old, work)
        bundle = v1_copy(args.bundle, work / args.bundle.name)
        res: dict = {
            "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
            "bundle": str(args.bundle),
            "old": args.old,
            "new": subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            + "+worktree",
            "backend": args.backend,
            "clients": "sequential keep-alive: http.client, lean socket client",
            "variants": {},
        }
        for name, root, extra in (
            ("old", old_root, ()),
            ("new", REPO, ()),
            ("new_uvloop", REPO, ("--event-loop", "uvloop")),
        ):
            t0 = time.perf_counter()
            d = Daemon(name, root, bundle, args.backend, extra)
            first = d.first_answer(body, t0)
            for _ in range(99):
                d.request(body)
            rss, hwm = rss_kib(d.proc.pid)
            daemons[name] = d
            res["variants"][name] = {
                "start_to_listening_s": d.ready_s,
                "start_to_first_answer_s": first,
                "rss_after_100_requests_mib": rss / 1024,
                "peak_rss_mib": hwm / 1024,
            }
        for kind in ("asyncio", "aiohttp"):
            daemons[f"floor_{kind}"] = Floor(kind)
        servers: dict = dict(daemons)
        leans = {name: LeanClient(s.port, body) for name, s in servers.items()}
        runs = [(name, client) for name in servers for client in CLIENTS]
        rtt: dict = {r: [] for r in runs}
        inf: dict = {r: [] for r in runs}
        for name, client in runs:  # warm-up
            for _ in range(50):
                servers[name].request(body, leans[name] if client == "lean" else None)
        done = 0
        while done < args.count:
            n = min(args.block, args.count - done)
            for name, client in runs:
                s, lean = servers[name], leans[name] if client == "lean" else None
                for _ in range(n):
                    dt, lat = s.request(body, lean)
                    rtt[name, client].append(dt)
                    inf[name, client].append(lat)
            done += n
        for name, client in runs:
            over = [r - i for r, i in zip(rtt[name, client], inf[name, client])]
            v = res["variants"].setdefault(name, {})
            v[client] = {
                "median_round_trip_ms": 1e3 * statistics.median(rtt[name, client]),
                "median_inference_ms": 1e3 * statistics.median(inf[name, client]),
                "median_overhead_ms": 1e3 * statistics.median(over),
                "p90_overhead_ms": 1e3 * float(np.percentile(over, 90)),
            }
        for name in servers:
            for client in CLIENTS:  # what the daemon adds above a bare asyncio server, same client
                v = res["variants"][name][client]
                v["above_asyncio_floor_ms"] = (
                    v["median_overhead_ms"] - res["variants"]["floor_asyncio"][client]["median_overhead_ms"]
                )
        o, n_ = res["variants"]["old"], res["variants"]["new"]
        res["new_over_old"] = {
            **{f"median_overhead_{c}": n_[c]["median_overhead_ms"] / o[c]["median_overhead_ms"] for c in CLIENTS},
            **{k: n_[k] / o[k] for k in ("rss_after_100_requests_mib", "start_to_first_answer_s")},
        }
        for s in servers.values():
            s.stop()
        for c in leans.values():
            c.close()
    finally:
        for d in daemons.values():
            if d.proc.poll() is None:
                d.proc.kill()
        drop_work(work)
    write_json(args.out / "serve_footprint.json", res)
    plot(res, args.out / "serve_footprint.png")
    for name, v in res["variants"].items():
        if "start_to_first_answer_s" in v:
            print(
                f"{name:14s} start->first answer {v['start_to_first_answer_s']:.2f} s  "
                f"RSS after 100 requests {v['rss_after_100_requests_mib']:.1f} MiB (peak {v['peak_rss_mib']:.1f})"
            )
        for c in CLIENTS:
            w = v[c]
            print(
                f"{name:14s} {c:11s} round trip {w['median_round_trip_ms']:.3f} ms  inference "
                f"{w['median_inference_ms']:.3f} ms  overhead {w['median_overhead_ms']:.3f} ms "
                f"(p90 {w['p90_overhead_ms']:.3f}; above the bare-asyncio floor {w['above_asyncio_floor_ms']:.3f})"
            )
    print("new/old: " + ", ".join(f"{k} {v:.2f}x" for k, v in res["new_over_old"].items()))


if __name__ == "__main__":
    main()
