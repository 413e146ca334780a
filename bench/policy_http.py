"""Policies over HTTP: one real `edgeskip serve` daemon per policy, the same arrivals sent to each.

For every daemon setting (the original = ``--config 0``, then ``--policy paper|rate|mix`` with optional
queue) a daemon is started on 127.0.0.1, and the paper's workload is replayed at each load and seed with the
open-loop HTTP client of `edgeskip bench --url`. Loads are relative to the original's capacity *over HTTP*
(its median sequential round trip). Writes policy_http.json and policy_http.png.

    python bench/policy_http.py bench/work/bundle_r20_sd --min-acc 0.703 --out bench/results
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_footprint import REPO, Daemon  # noqa: E402

from edgeskip.bench.drivers import probe_daemon, run_http  # noqa: E402
from edgeskip.bench.report import format_sweep, plot_sweep, summarize, sweep_table  # noqa: E402
from edgeskip.bench.run import http_service_time, sweep_row, test_images  # noqa: E402
from edgeskip.bench.sweep import parse_run  # noqa: E402
from edgeskip.bench.workload import arrivals  # noqa: E402
from edgeskip.utils.atomic import write_json  # noqa: E402


def daemon_args(label: str, min_acc: float) -> list[str]:
    spec = parse_run(label)
    if spec.policy == "fixed":
        return ["--config", str(spec.fixed)]
    args = ["--policy", spec.policy, "--min-acc", str(min_acc)]
    if spec.queue_depth:
        args += ["--queue-depth", str(spec.queue_depth)]
    if spec.deadline:
        args += ["--deadline-ms", f"{spec.deadline * 1e3:g}"]
    return args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--runs", default="original,paper,rate,mix")
    ap.add_argument("--loads", default="0.9,1.25,2")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--min-acc", type=float, default=0.0)
    ap.add_argument("--serve-args", default="", help="more `edgeskip serve` arguments, e.g. '--inline-max-ms 1'")
    ap.add_argument(
        "--lean", action="store_true", help="send the requests to the daemon's lean listener (serve --lean-port 0)"
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    a = ap.parse_args()
    labels = [x for x in a.runs.split(",") if x]
    if labels[0] != "original":
        labels = ["original"] + [x for x in labels if x != "original"]
    loads = [float(x) for x in a.loads.split(",")]
    images, ys = test_images(a.bundle, 2000)
    from edgeskip.manifest import load_manifest

    test_acc = [c.test_accuracy for c in load_manifest(a.bundle).configs]
    t0 = time.time()
    rows: dict = {}
    daemons = {}
    service_time = None
    for label in labels:
        extra = daemon_args(label, a.min_acc) + shlex.split(a.serve_args) + (["--lean-port", "0"] if a.lean else [])
        daemons[label] = ["edgeskip", "serve", str(a.bundle), "--backend", "iree", *extra]
        d = Daemon(label, REPO, a.bundle, "iree", tuple(extra))
        url = d.banner.split("  lean ", 1)[1].split()[0] if a.lean else f"http://127.0.0.1:{d.port}"
        try:
            probe_daemon(url)
            if service_time is None:  # the original's end-to-end service time over HTTP (loads are relative to it)
                service_time = http_service_time(url, images[0], repeats=100)
            for load in loads:
                for seed in range(a.seeds):
                    arr = arrivals("paper", a.count, service_time / load, seed)
                    s = summarize(run_http(url, arr, images, ys), test_acc)
                    rows.setdefault(f"{load:g}", {}).setdefault(label, []).append(
                        {**sweep_row(s), "errors": s["errors"]}
                    )
                    print(
                        f"{label:>10} load {load:g} seed {seed}: {s['processed']} processed, {s['dropped']} dropped, "
                        f"{s['errors']} errors, accuracy {s['accuracy']:.4f}",
                        flush=True,
                    )
        finally:
            d.stop()
    table = sweep_table(rows)
    doc = {
        "command": "python " + " ".join(shlex.quote(x) for x in sys.argv),
        "bundle": str(a.bundle),
        "pattern": "paper",
        "count": a.count,
        "seeds": a.seeds,
        "loads": loads,
        "min_acc": a.min_acc,
        "target": "http, lean listener (one daemon per run)" if a.lean else "http (one daemon per run)",
        "service_time_s": service_time,
        "daemons": daemons,
        "seconds": time.time() - t0,
        "table": table,
        "rows": rows,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "policy_http.json", doc)
    plot_sweep(table, a.out / "policy_http.png", f"paper workload over HTTP, {a.seeds} seeds, one daemon per run")
    print(format_sweep(table))
    print(f"original's HTTP service time {service_time * 1e3:.3f} ms; wrote {a.out / 'policy_http.json'}")


if __name__ == "__main__":
    main()
