"""Reproducer: `import onnxruntime` (PyPI aarch64 wheel) segfaults under qemu-aarch64 user-mode emulation < 8.1.

qemu-user before 8.1 passes the host's /proc/cpuinfo through to the emulated program. On an x86 host that file
has no "CPU implementer"/"CPU part" lines, and onnxruntime's CPU detection (pytorch/cpuinfo, run while the
extension module loads) crashes on it: SIGSEGV in `_pybind_state.py` line 32, before any session exists.
qemu resolves absolute paths in its -L sysroot first, so an ARM-format /proc/cpuinfo in the sysroot is the
workaround (edgeskip.export.emulate writes one). Not an issue on a board, whose kernel writes an ARM cpuinfo.

    python bench/ort_qemu_cpuinfo.py [--out bench/results/ort_qemu_cpuinfo.json]

Needs `python -m edgeskip.export.emulate fetch-python` (Debian's arm64 CPython + the aarch64 onnxruntime wheel).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from edgeskip.export import emulate

CODE = "import onnxruntime, platform; print(platform.machine(), onnxruntime.__version__)"


def run(sysroot: Path) -> dict:
    argv, env = emulate.python_command()
    argv = [argv[0], "-L", str(sysroot), *argv[3:]]
    p = subprocess.run([*argv, "-X", "faulthandler", "-c", CODE], capture_output=True, text=True, env=env, timeout=300)
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return {"returncode": p.returncode, "stdout": p.stdout.strip(), "stderr_first": err[0] if err else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/ort_qemu_cpuinfo.json")
    args = ap.parse_args()
    sysroot = emulate.python_sysroot()
    qemu = subprocess.run([emulate.QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "sysroot"  # the same sysroot without its /proc/cpuinfo: links to every other entry
        bare.mkdir()
        for entry in sysroot.iterdir():
            if entry.name != "proc":
                (bare / entry.name).symlink_to(entry)
        doc = {
            "qemu": qemu,
            "host_cpuinfo_model": next(
                (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
            ),
            "without_arm_cpuinfo": run(bare),
            "with_arm_cpuinfo": run(sysroot),
            "command": "python bench/ort_qemu_cpuinfo.py",
        }
    print(json.dumps(doc, indent=1))
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
