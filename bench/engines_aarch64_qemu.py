"""Both engines on aarch64, executed under qemu-user: a bundle's onnxruntime front (float and int8 configs) and,
where the bundle has an aarch64 target, its IREE front, run by the runtime in Debian's arm64 CPython (the
runtime's aarch64 wheels only) on the bundle's own test images, against the same back end on this x86 host.

    python bench/engines_aarch64_qemu.py BUNDLE [--images 64] [--out bench/results/engines_aarch64_qemu.json]

Correctness only: emulation says nothing about an ARM core's speed (no latency is reported; the wall time of the
emulated run is recorded to size CI tests, nothing else). Needs `python -m edgeskip.export.emulate fetch-python`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeskip.bench.images import load_images
from edgeskip.export import emulate
from edgeskip.export.onnx_export import logit_diff
from edgeskip.manifest import load_manifest
from edgeskip.runtime.executor import open_executor

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, platform, sys
import numpy as np
from edgeskip.runtime.executor import open_executor
out = {"machine": platform.machine()}
for backend in sys.argv[3].split(","):
    ex = open_executor(sys.argv[1], backend=backend)
    x = np.load(sys.argv[2])
    out[backend] = {"target": ex.target, "modules": [c.module for c in ex.configs],
                    "logits": [ex.infer(x, config=k).tolist() for k in range(len(ex.configs))]}
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", default="bench/results/engines_aarch64_qemu.json")
    args = ap.parse_args()
    bundle = Path(args.bundle)
    manifest = load_manifest(bundle)
    backends = ["onnxruntime"] + (["iree"] if any(t.startswith("aarch64") for t in manifest.targets) else [])
    x, labels = load_images(bundle / "eval" / "sample.npz", manifest, args.images)
    argv, env = emulate.python_command(extra_path=[REPO])
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        t0 = time.perf_counter()
        res = subprocess.run(
            [*argv, "-c", SCRIPT, str(bundle), str(Path(tmp) / "x.npy"), ",".join(backends)],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
        )
        wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"the aarch64 run failed: {res.stderr.strip()[-500:]}")
    arm = json.loads(res.stdout.strip().splitlines()[-1])
    doc: dict = {"bundle": str(bundle), "images": len(x), "machine": arm["machine"], "emulated_wall_s": round(wall, 1)}
    for backend in backends:
        host = open_executor(bundle, backend=backend, target="host")
        rows = []
        for k, c in enumerate(host.configs):
            ref, got = host.infer(x, config=k), np.asarray(arm[backend]["logits"][k], np.float32)
            rows.append(
                {
                    "module": c.module,
                    "int8_blocks": c.n_int8,
                    "int8_rest": c.int8_rest,
                    "relative_diff": logit_diff(got, ref),
                    "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                    "accuracy_aarch64": float((got.argmax(1) == labels).mean()),
                    "accuracy_host": float((ref.argmax(1) == labels).mean()),
                }
            )
        doc[backend] = {"aarch64_target": arm[backend]["target"], "configs": rows}
        for r in rows:
            print(
                f"{backend:12s} {r['module']:16s} int8 {r['int8_blocks']}  diff {r['relative_diff']:.2e}  "
                f"top-1 agree {r['top1_agreement']:.3f}  acc {r['accuracy_aarch64']:.3f} / {r['accuracy_host']:.3f}"
            )
    doc["command"] = "python bench/engines_aarch64_qemu.py " + " ".join(sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
