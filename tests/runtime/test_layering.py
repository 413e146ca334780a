"""The runtime is deployable alone: the serve path and the bench client load no design-time package, and a
design-time command on a runtime-only install says what to install instead of a traceback."""

import json
import re
import subprocess
import sys

DESIGN = (
    "torch",
    "onnx",
    "onnxscript",
    "matplotlib",
    "sklearn",
    "iree.compiler",
    "onnxruntime",
    "tqdm",
    "mlperf_loadgen",
    "elftools",
)

SERVE_PATH = """
import asyncio, json, sys
import numpy as np
import edgeskip.cli  # the CLI as `edgeskip serve` imports it
from edgeskip.runtime.daemon import make_service
from edgeskip.runtime.server import make_app
import edgeskip.bench.drivers, edgeskip.bench.workload  # the HTTP bench client
service = make_service(sys.argv[1], 0.0, None, None, "iree")
app = make_app(service, model_name="m")
from edgeskip.runtime.workers import Job
body = np.zeros(service.executor.input_shape, np.float32).tobytes()
out = asyncio.run(service.submit(Job("v1", body, {"ctype": "application/octet-stream"})))
assert not out.dropped and out.logits.shape == (1, 10)
service.close()
print(json.dumps(sorted(sys.modules)))
"""


def test_serve_path_loads_no_design_time_package(bundle):
    res = subprocess.run([sys.executable, "-c", SERVE_PATH, str(bundle)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if any(m == d or m.startswith(d + ".") for d in DESIGN)]
    assert bad == [], bad
    # gRPC is loaded only with serve --grpc-port (the HTTP daemon's footprint stays)
    assert not [m for m in loaded if m in ("grpc", "tritonclient") or m.startswith(("grpc.", "tritonclient."))]
    assert "iree.runtime" in loaded and "aiohttp.web" in loaded  # the path really ran


def test_design_command_without_design_packages_is_one_line(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgeskip.cli import main\n"
        f"sys.argv = ['edgeskip', 'train', '--epochs', '1', '--out', {str(tmp_path / 'x.pt')!r}]\n"
        "main()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "edgeskip train needs the design-time packages" in lines[0], res.stderr
    assert "pip install 'edgeskip[design]'" in lines[0] and not (tmp_path / "x.pt").exists()


def test_inspect_works_without_design_packages(bundle):
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in DESIGN)
    code = (
        f"import sys; {blocked}\n"
        "from edgeskip.cli import main\n"
        f"sys.argv = ['edgeskip', 'inspect', {str(bundle)!r}]\n"
        "main()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert re.search(r"all \d+ artifact hashes match", res.stdout) and "skip array" in res.stdout
