"""Triton's perf_analyzer against `edgeskip serve`, beside `edgeskip bench`'s figures on the same daemon (issue #31).

    python bench/perf_analyzer.py BUNDLE --perf-analyzer PATH [--rates 200,400] [--count 2000] [--out DIR]

perf_analyzer is the standard load generator for KServe v2 servers; it runs here unmodified. One daemon
(``edgeskip serve BUNDLE --port 0 --grpc-port 0 --queue-depth 16``, its default adaptive policy) answers, in turn:
- perf_analyzer, closed loop, concurrency 1-4, over HTTP and over gRPC (``--input-data zero``: its random bytes
  include NaNs, which the daemon refuses; it stops at the first non-200, hence the queue);
- at each of ``--rates``, open loop with Poisson arrivals:
  - perf_analyzer (``--request-rate-range R --request-distribution poisson``, HTTP);
  - ``edgeskip bench --url ... --loadgen --rate R`` (MLPerf LoadGen's server scenario, HTTP, the bundle's test
    images).
At a rate, both tools offer the same load to the same daemon, so their throughputs and latency percentiles should
agree up to each client's own cost. perf_analyzer's server-side split (queue, compute input/infer/output, from
the daemon's statistics extension) says where a request's time goes.

Getting perf_analyzer (Debian 12, x86-64; no GPU is used):
    pip download --no-deps tritonclient==2.44.0 nvidia-cuda-runtime-cu12 -d /tmp/pa
    unzip tritonclient-2.44.0-*.whl; unzip nvidia_cuda_runtime_cu12-*.whl; apt-get install libb64-0d
    PATH: tritonclient-2.44.0.data/data/bin/perf_analyzer; LD_LIBRARY_PATH: nvidia/cuda_runtime/lib
(newer wheels' binaries need a newer glibc than Debian 12's).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeskip.utils.atomic import write_json, write_with

CSV_FIELDS = {  # perf_analyzer's CSV column -> our key (latencies in us)
    "Inferences/Second": "infer_per_s",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p99 latency": "p99_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_input_us",
    "Server Compute Infer": "server_infer_us",
    "Server Compute Output": "server_output_us",
}


def perf_analyzer(exe: str, url: str, protocol: str, load: list[str], seconds: float) -> list[dict]:
    """One perf_analyzer run; a row per load level of its CSV."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        cmd = [exe, "-m", "m", "-u", url, "-i", protocol, "--input-data", "zero", *load]
        cmd += ["--measurement-interval", str(int(seconds * 1000)), "-f", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise SystemExit(f"perf_analyzer failed ({res.returncode}): {(res.stdout + res.stderr)[-2000:]}")
        rows = list(csv.DictReader(out.open()))
    got = [
        {"level": float(r.get("Concurrency") or r.get("Request Rate") or 0)}
        | {k: float(r[c]) for c, k in CSV_FIELDS.items() if c in r}
        for r in rows
    ]
    return sorted(got, key=lambda r: r["level"])  # its CSV is sorted by throughput


def loadgen(bundle: Path, url: str, rate: float, count: int, backend: str) -> dict:
    """``edgeskip bench --loadgen`` at ``rate``: its JSON plus LoadGen's latency percentiles (us)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "edgeskip", "bench", str(bundle), "--url", url, "--loadgen", "--rate", str(rate)]
        cmd += ["--count", str(count), "--backend", backend, "--out", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise SystemExit(f"edgeskip bench failed: {res.stderr[-2000:]}")
        doc = json.loads((Path(tmp) / "loadgen.json").read_text())
        summary = (Path(tmp) / "mlperf_log_summary.txt").read_text()
    pct = {  # "50.00 percentile latency (ns)   : 2341889" (99.90 is left out: it would overwrite 99.00)
        f"p{m[1]}_us": int(m[2]) / 1e3
        for m in re.finditer(r"^(\d+)\.00 percentile latency \(ns\)\s*:\s*(\d+)", summary, re.M)
    }
    return {
        "infer_per_s": float(doc["loadgen_completed_per_s"]),
        "processed": doc["processed"],
        "dropped": doc["dropped"],
        **{k: pct[k] for k in ("p50_us", "p90_us", "p99_us") if k in pct},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--perf-analyzer", default=os.environ.get("PERF_ANALYZER", "perf_analyzer"))
    ap.add_argument("--backend", default="iree")
    ap.add_argument("--rates", default="200,400", help="open-loop rates (requests/s), comma-separated")
    ap.add_argument("--count", type=int, default=2000, help="requests per edgeskip bench run")
    ap.add_argument("--seconds", type=float, default=3.0, help="perf_analyzer's measurement interval")
    ap.add_argument("--out", type=Path, default=Path("bench/results/perf_analyzer"))
    a = ap.parse_args()
    serve = [sys.executable, "-m", "edgeskip", "serve", str(a.bundle), "--port", "0", "--grpc-port", "0"]
    serve += ["--queue-depth", "16", "--backend", a.backend, "--model-name", "m"]
    proc = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    banner = proc.stdout.readline() if proc.stdout else ""
    res: dict = {"banner": banner.strip(), "closed_loop": {}, "open_loop": []}
    try:
        http_url = banner.split()[2].removeprefix("http://")
        grpc_url = banner.split("grpc ", 1)[1].split()[0]
        for protocol, url in (("http", http_url), ("grpc", grpc_url)):
            rows = perf_analyzer(a.perf_analyzer, url, protocol, ["--concurrency-range", "1:4"], a.seconds)
            res["closed_loop"][protocol] = rows
            for r in rows:
                print(
                    f"perf_analyzer {protocol:4s} concurrency {r['level']:.0f}: {r['infer_per_s']:7.1f} infer/s  "
                    f"p50 {r['p50_us']:5.0f} us  p99 {r['p99_us']:5.0f} us  (server: queue {r['server_queue_us']:.0f}"
                    f" infer {r['server_infer_us']:.0f} us)"
                )
        for rate in [float(r) for r in a.rates.split(",")]:
            load = ["--request-rate-range", str(rate), "--request-distribution", "poisson"]
            pa = perf_analyzer(a.perf_analyzer, http_url, "http", load, a.seconds)[0]
            lg = loadgen(a.bundle, f"http://{http_url}", rate, a.count, a.backend)
            res["open_loop"].append({"rate": rate, "perf_analyzer": pa, "edgeskip_bench_loadgen": lg})
            for name, r in (("perf_analyzer", pa), ("edgeskip bench", lg)):
                print(
                    f"{rate:5.0f}/s Poisson, HTTP, {name:14s}: {r['infer_per_s']:7.1f} infer/s  "
                    f"p50 {r['p50_us']:5.0f} us  p90 {r['p90_us']:5.0f} us  p99 {r['p99_us']:5.0f} us"
                )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res["command"] = "python " + " ".join(shlex.quote(s) for s in sys.argv)
    res["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "perf_analyzer.json", res)
    plot(res, a.out / "perf_analyzer.png")


def plot(res: dict, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for protocol, rows in res["closed_loop"].items():
        ax1.plot([r["level"] for r in rows], [r["infer_per_s"] for r in rows], "o-", label=f"perf_analyzer {protocol}")
    ax1.set_xlabel("concurrency (closed loop)")
    ax1.set_ylabel("inferences / s")
    ax1.legend()
    rates = [o["rate"] for o in res["open_loop"]]
    for key, style in (("perf_analyzer", "o-"), ("edgeskip_bench_loadgen", "s--")):
        for p, color in (("p50_us", "tab:blue"), ("p99_us", "tab:red")):
            ax2.plot(rates, [o[key][p] / 1e3 for o in res["open_loop"]], style, color=color, label=f"{key} {p[:3]}")
    ax2.set_xlabel("offered rate, Poisson (requests/s)")
    ax2.set_ylabel("latency (ms)")
    ax2.legend(fontsize=7)
    fig.suptitle("one edgeskip serve daemon, two load generators", fontsize=10)
    fig.tight_layout()
    write_with(dest, lambda p: fig.savefig(p, format="png", dpi=120))


if __name__ == "__main__":
    main()
