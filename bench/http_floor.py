"""The floor under the daemon's own cost per request (issue #31): what the kernel and aiohttp cost alone.

In one run, nothing else running, each a median over ``--requests`` round trips after a warm-up tenth:
- ``socket pair``: two processes ping-pong one byte over a Unix socket pair (two wake-ups, no Python stack);
- ``thread pipe``: two threads of one process ping-pong one byte over two pipes;
- ``aiohttp/<loop>/<inline|thread>``: a bare aiohttp server in its own process on a Unix socket, whose handler
  reads the body (a CIFAR image's 12,288 bytes) and answers 8 bytes, either on the loop (``inline``) or after
  handing the body to a thread and back (``thread``: a ``SimpleQueue`` put, ``call_soon_threadsafe`` back, as
  the daemon's worker does), on asyncio's loop and on uvloop; the client is ``http.client`` on a kept-alive
  connection (the client of ``request_paths.py``).
edgeskip's daemon does all of this plus admission, decoding, inference and its answer: the difference between
its own cost (``request_paths.py``) and these rows is what edgeskip adds.

    python bench/http_floor.py --out bench/results
"""

from __future__ import annotations

import argparse
import http.client
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgeskip.utils.atomic import write_json

SERVER = r"""
import asyncio, queue, sys, threading
from aiohttp import web
mode, loop_kind, path = sys.argv[1:4]
jobs = queue.SimpleQueue()
def worker():
    while True:
        loop, fut, body = jobs.get()
        loop.call_soon_threadsafe(fut.set_result, body)
threading.Thread(target=worker, daemon=True).start()
async def handle(request):
    body = await request.read()
    if mode == "thread":
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        jobs.put((loop, fut, body))
        await fut
    return web.Response(body=b'{"ok":1}', content_type="application/json")
if loop_kind == "uvloop":
    import uvloop
    uvloop.install()
app = web.Application()
app.router.add_post("/x", handle)
web.run_app(app, path=path, print=None)
"""


def median_us(times: list[float]) -> float:
    return round(statistics.median(times[len(times) // 10 :]) * 1e6, 1)


def socket_pair(n: int) -> float:
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        for _ in range(n):
            b.send(b.recv(16))
        os._exit(0)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        a.send(b"x")
        a.recv(16)
        times.append(time.perf_counter() - t0)
    os.waitpid(pid, 0)
    return median_us(times)


def thread_pipe(n: int) -> float:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()

    def echo() -> None:
        for _ in range(n):
            os.read(r1, 1)
            os.write(w2, b"x")

    t = threading.Thread(target=echo)
    t.start()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        os.write(w1, b"x")
        os.read(r2, 1)
        times.append(time.perf_counter() - t0)
    t.join()
    return median_us(times)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def aiohttp_round_trip(mode: str, loop_kind: str, n: int, tmp: str) -> float:
    path = os.path.join(tmp, f"{mode}-{loop_kind}.sock")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, mode, loop_kind, path])
    try:
        for _ in range(100):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        conn = UnixHTTPConnection(path)
        body = bytes(12288)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("POST", "/x", body, {"Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            r.read()
            times.append(time.perf_counter() - t0)
        return median_us(times)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    a = ap.parse_args()
    rows = {"socket pair": socket_pair(a.requests * 5), "thread pipe": thread_pipe(a.requests * 5)}
    with tempfile.TemporaryDirectory(prefix="floor") as tmp:
        for loop_kind in ("asyncio", "uvloop"):
            for mode in ("inline", "thread"):
                rows[f"aiohttp/{loop_kind}/{mode}"] = aiohttp_round_trip(mode, loop_kind, a.requests, tmp)
    for k, v in rows.items():
        print(f"{k:24s} {v:8.1f} us per round trip", flush=True)
    doc = {"command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]), "median_us": rows}
    write_json(a.out / "http_floor.json", doc)


if __name__ == "__main__":
    main()
