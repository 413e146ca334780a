"""What measuring energy costs the thing measured: inference latency with a power source sampled beside it.

The meter samples on its own thread at 20 Sa/s while the executor runs config 0 of a bundle, batch 1, in
blocks of ``--block`` inferences; blocks with and without a running meter alternate (``--rounds`` pairs) and
the median per-inference time of each kind is compared. Sources: a sysfs counter (a RAPL-shaped tree written
once; reading it is what a board's powercap/hwmon/INA231 costs), a streaming meter command, and a one-shot
meter command (a process started per sample: the costly kind on a small board).

    python bench/power_overhead.py bench/work/bundle_r20_sd200 --out bench/results
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeskip.runtime.executor import open_executor
from edgeskip.runtime.power import EnergyMeter, open_power
from edgeskip.utils.atomic import write_json


def sources(tmp: Path) -> dict[str, str]:
    zone = tmp / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("123456789\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    stream = tmp / "stream.py"
    stream.write_text("import time\nwhile True:\n    print('3.2 W', flush=True)\n    time.sleep(0.05)\n")
    return {
        "sysfs counter (powercap)": "powercap",
        "meter command, streaming": f"cmd:{sys.executable} {stream}",
        "meter command, one-shot": "cmd:echo 3.2 W",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--backend", default="iree")
    ap.add_argument("--block", type=int, default=2000, help="inferences per timed block")
    ap.add_argument("--rounds", type=int, default=7, help="pairs of blocks (without, with) per source")
    args = ap.parse_args()
    ex = open_executor(args.bundle, args.backend)
    x = np.random.default_rng(0).standard_normal((1, *ex.input_shape)).astype(np.float32)

    def block() -> float:
        t0 = time.perf_counter()
        for _ in range(args.block):
            ex.infer(x, 0)
        return (time.perf_counter() - t0) / args.block

    for _ in range(3):
        block()  # warm-up
    results = {}
    with tempfile.TemporaryDirectory() as d:
        specs = sources(Path(d))
        for name, spec in specs.items():
            source = open_power(spec, Path(d) / "sys")
            assert source is not None
            meter = EnergyMeter(source)
            off, on = [], []
            for _ in range(args.rounds):
                off.append(block())
                meter.start()
                on.append(block())
                e = meter.stop()
            meter.close()
            a, b = statistics.median(off), statistics.median(on)
            results[name] = {
                "spec": spec.replace(sys.executable, "python"),
                "without_ms": 1e3 * a,
                "with_ms": 1e3 * b,
                "ratio": b / a,
                "samples_per_block": e.samples,
            }
            print(f"{name:>28}: {1e3 * a:.4f} -> {1e3 * b:.4f} ms per inference ({b / a:.3f}x), {e.samples} samples")
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "host": platform.processor() or platform.machine(),
        "backend": ex.backend,
        "block": args.block,
        "rounds": args.rounds,
        "results": results,
    }
    write_json(args.out / "power_overhead.json", doc)


if __name__ == "__main__":
    main()
