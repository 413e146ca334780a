"""The daemon's own overhead per request (decision + HTTP + decoding) as a fraction of inference time.

Starts ``edgeskip serve BUNDLE`` on 127.0.0.1, sends sequential raw-tensor requests over one
keep-alive connection (never two in flight, so none is dropped), and compares the client's round
trip with the inference latency the server reports for the same request.

    python bench/serve_overhead.py bench/work/bundle_r20_sd --count 500 --out bench/results
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgeskip.utils.atomic import write_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    shape = manifest["input"]["shape"][1:]
    proc = subprocess.Popen([sys.executable, "-m", "edgeskip.cli", "serve", str(args.bundle), "--port", "0",
                             "--backend", args.backend], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[2]
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = np.random.default_rng(0).standard_normal(shape).astype(np.float32).tobytes()
        rtt, inf = [], []
        for i in range(args.count + 20):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/infer", body, {"Content-Type": "application/octet-stream"})
            doc = json.loads(conn.getresponse().read())
            dt = time.perf_counter() - t0
            if i >= 20:  # warm-up
                rtt.append(dt)
                inf.append(doc["latency_s"])
        over = [r - i for r, i in zip(rtt, inf)]
        res = {
            "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
            "bundle": str(args.bundle), "requests": args.count, "client": "http.client keep-alive, sequential",
            "median_round_trip_s": statistics.median(rtt), "median_inference_s": statistics.median(inf),
            "median_overhead_s": statistics.median(over),
            "overhead_over_inference": statistics.median(over) / statistics.median(inf),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    write_json(args.out / "serve_overhead.json", res)
    print(f"round trip {1e3 * res['median_round_trip_s']:.3f} ms = inference {1e3 * res['median_inference_s']:.3f} ms "
          f"+ overhead {1e3 * res['median_overhead_s']:.3f} ms ({res['overhead_over_inference']:.2f}x inference)")


if __name__ == "__main__":
    main()
