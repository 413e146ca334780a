"""The daemon's footprint and per-request overhead, old and new code side by side in one run.

For each variant (``new``: this checkout; ``old``: the package at git revision ``--old``, checked out into a
temporary worktree) it starts ``edgeskip serve BUNDLE`` on 127.0.0.1 and measures:

- start-up: process start to the first answered inference request (the daemon measures Delta_req first);
- resident memory (VmRSS, and the peak VmHWM) after 100 requests;
- its own cost per request: a sequential keep-alive client (``http.client``, never two requests in flight,
  so nothing is dropped) sends raw-tensor requests; overhead = round trip - the inference time the daemon
  reports. Variants alternate in blocks, so drift of the machine hits both alike.

Floors measured with the same client in the same run, to say where the time goes: a bare asyncio server
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
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


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in l)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class Daemon:
    def __init__(self, name: str, code_root: Path, bundle: Path, backend: str) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeskip.cli", "serve", str(bundle), "--port", "0",
                                      "--backend", backend], stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=code_root)
        url = self.proc.stdout.readline().split()[2]
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.body = None
        self.ready_s = time.perf_counter() - t0

    def first_answer(self, body: bytes, t_start: float) -> float:
        self.request(body)
        return time.perf_counter() - t_start

    def request(self, body: bytes) -> tuple[float, float | None]:
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/infer", body, {"Content-Type": "application/octet-stream"})
        raw = self.conn.getresponse().read()
        dt = time.perf_counter() - t0
        doc = json.loads(raw)
        return dt, doc.get("latency_s")

    def stop(self) -> None:
        self.conn.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


class Floor:
    """A server answering every POST with ``reply`` (bare asyncio, or a bare aiohttp handler), in a thread."""

    def __init__(self, kind: str, reply: bytes) -> None:
        self.kind, self.reply = kind, reply
        self.port = 0
        started = threading.Event()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        started.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        if self.kind == "asyncio":
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(self.reply)}\r\n"
                    "\r\n").encode()
            reply = head + self.reply

            class Proto(asyncio.Protocol):
                def connection_made(self, transport):
                    self.t, self.buf = transport, b""

                def data_received(self, data):  # requests of a known size: answer once the body is in
                    self.buf += data
                    end = self.buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    n = int([l for l in self.buf[:end].split(b"\r\n") if l.lower().startswith(b"content-length")][0]
                            .split(b":")[1])
                    if len(self.buf) >= end + 4 + n:
                        self.buf = self.buf[end + 4 + n:]
                        self.t.write(reply)

            server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
        else:
            from aiohttp import web

            async def handler(request: web.Request) -> web.Response:
                await request.read()
                return web.Response(body=self.reply, content_type="application/json")

            app = web.Application()
            app.router.add_post("/v1/infer", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]

    def request(self, body: bytes) -> tuple[float, float]:
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/infer", body, {"Content-Type": "application/octet-stream"})
        self.conn.getresponse().read()
        return time.perf_counter() - t0, 0.0

    def stop(self) -> None:
        self.conn.close()
        self.loop.call_soon_threadsafe(self.loop.stop)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        old_root = work / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_root), args.old],
                       check=True, capture_output=True)
        bundle = v1_copy(args.bundle, work / args.bundle.name)
        res: dict = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
                     "bundle": str(args.bundle), "old": args.old,
                     "new": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip() + "+worktree",
                     "backend": args.backend, "client": "http.client keep-alive, sequential", "variants": {}}
        for name, root in (("old", old_root), ("new", REPO)):
            t0 = time.perf_counter()
            d = Daemon(name, root, bundle, args.backend)
            first = d.first_answer(body, t0)
            for _ in range(99):
                d.request(body)
            rss, hwm = rss_kib(d.proc.pid)
            daemons[name] = d
            res["variants"][name] = {"start_to_listening_s": d.ready_s, "start_to_first_answer_s": first,
                                     "rss_after_100_requests_mib": rss / 1024, "peak_rss_mib": hwm / 1024}
        floor_reply = json.dumps({"top": [{"class": "airplane", "index": 0, "score": 0.5}] * 5, "config": 0,
                                  "skipped_blocks": 0, "latency_s": 0.001}).encode()
        servers: dict = {**daemons, "floor_asyncio": Floor("asyncio", floor_reply),
                         "floor_aiohttp": Floor("aiohttp", floor_reply)}
        over: dict[str, list[float]] = {k: [] for k in servers}
        rtt: dict[str, list[float]] = {k: [] for k in servers}
        inf: dict[str, list[float]] = {k: [] for k in servers}
        for s in servers.values():  # warm-up
            for _ in range(50):
                s.request(body)
        done = 0
        while done < args.count:
            n = min(args.block, args.count - done)
            for name, s in servers.items():
                for _ in range(n):
                    dt, lat = s.request(body)
                    rtt[name].append(dt)
                    inf[name].append(lat or 0.0)
                    over[name].append(dt - (lat or 0.0))
            done += n
        for name in servers:
            v = res["variants"].setdefault(name, {})
            v.update(median_round_trip_ms=1e3 * statistics.median(rtt[name]),
                     median_inference_ms=1e3 * statistics.median(inf[name]),
                     median_overhead_ms=1e3 * statistics.median(over[name]),
                     p90_overhead_ms=1e3 * float(np.percentile(over[name], 90)))
        o, n_ = res["variants"]["old"], res["variants"]["new"]
        res["new_over_old"] = {k: n_[k] / o[k] for k in ("median_overhead_ms", "rss_after_100_requests_mib",
                                                         "start_to_first_answer_s")}
        for s in servers.values():
            s.stop()
    finally:
        for d in daemons.values():
            if d.proc.poll() is None:
                d.proc.kill()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "old")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.out / "serve_footprint.json", res)
    for name, v in res["variants"].items():
        extra = (f"  start->first answer {v['start_to_first_answer_s']:.2f} s  RSS {v['rss_after_100_requests_mib']:.0f} MiB"
                 if "start_to_first_answer_s" in v else "")
        print(f"{name:14s} round trip {v['median_round_trip_ms']:.3f} ms  inference {v['median_inference_ms']:.3f} ms  "
              f"overhead {v['median_overhead_ms']:.3f} ms (p90 {v['p90_overhead_ms']:.3f}){extra}")
    print("new/old: " + ", ".join(f"{k} {v:.2f}x" for k, v in res["new_over_old"].items()))


if __name__ == "__main__":
    main()
