"""Run aarch64 IREE modules on an x86 host under user-mode emulation.

Needs Debian's ``qemu-user-static``, ``libc6-arm64-cross`` and ``libstdc++6-arm64-cross``, and the
aarch64 ``iree-run-module`` from the manylinux aarch64 wheel of iree-base-runtime of the *same*
version as the compiler (``python -m edgeskip.export.emulate fetch`` downloads and unpacks it).
Inputs are passed as ``--input=@x.npy`` (the ``SHAPExTYPE=@x.npy`` form reads the .npy header as data).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeskip.data.registry import default_cache_dir
from edgeskip.errors import EdgeskipError

SYSROOT = Path("/usr/aarch64-linux-gnu")
QEMU = "qemu-aarch64-static"


def runtime_version() -> str:
    return metadata.version("iree-base-runtime")


def runtime_dir() -> Path:
    return default_cache_dir() / f"iree-runtime-aarch64-{runtime_version()}"


def run_module_binary() -> Path:
    return runtime_dir() / "iree-run-module"


def missing() -> str | None:
    """Why aarch64 modules cannot be run here, or None when everything is in place."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (apt-get install qemu-user-static)"
    if not (SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists():
        return f"no aarch64 sysroot at {SYSROOT} (apt-get install libc6-arm64-cross libstdc++6-arm64-cross)"
    if not run_module_binary().is_file():
        return f"no aarch64 iree-run-module at {run_module_binary()} (python -m edgeskip.export.emulate fetch)"
    return None


def fetch() -> Path:
    """Download the aarch64 wheel of iree-base-runtime (this version) and unpack iree-run-module."""
    dest = runtime_dir()
    if run_module_binary().is_file():
        return run_module_binary()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
               "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
               f"iree-base-runtime=={runtime_version()}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise EdgeskipError(f"cannot download the aarch64 iree-base-runtime wheel: {proc.stderr.strip()[-200:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            raw = z.read("iree/_runtime_libs/iree-run-module")
        dest.mkdir(parents=True, exist_ok=True)
        part = dest / ".iree-run-module.part"
        part.write_bytes(raw)
        part.chmod(0o755)
        os.replace(part, run_module_binary())
    return run_module_binary()


def run_aarch64(vmfb: str | os.PathLike, inputs: Sequence[np.ndarray], function: str = "main_graph",
                driver: str = "local-sync", parameters: str | os.PathLike | None = None,
                timeout: float = 300) -> np.ndarray:
    """Execute ``function`` of an aarch64 module under qemu and return its (single) output.

    ``parameters``: the .irpa archive of a module compiled with externalised weights (scope ``model``).
    """
    return run_aarch64_outputs(vmfb, inputs, 1, function, driver, parameters, timeout)[0]


def run_aarch64_outputs(vmfb: str | os.PathLike, inputs: Sequence[np.ndarray], outputs: int,
                        function: str = "main_graph", driver: str = "local-sync",
                        parameters: str | os.PathLike | None = None, timeout: float = 300) -> list[np.ndarray]:
    """As :func:`run_aarch64` for a function with ``outputs`` results; returns them in order."""
    why = missing()
    if why:
        raise EdgeskipError(f"cannot run aarch64 modules: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        args = []
        for k, a in enumerate(inputs):
            p = Path(tmp) / f"in{k}.npy"
            np.save(p, np.ascontiguousarray(a))
            args.append(f"--input=@{p}")
        outs = [Path(tmp) / f"out{k}.npy" for k in range(outputs)]
        cmd = [QEMU, "-L", str(SYSROOT), str(run_module_binary()), f"--device={driver}", f"--module={vmfb}",
               f"--function={function}", *args, *[f"--output=@{o}" for o in outs]]
        if parameters is not None:
            cmd.insert(4, f"--parameters=model={parameters}")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not all(o.exists() for o in outs):
            raise EdgeskipError(f"aarch64 run failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        return [np.load(o) for o in outs]


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        sys.exit("usage: python -m edgeskip.export.emulate fetch")
    print(fetch())
