"""IREE's ``iree-run-module`` for armv7 (the Odroid XU4), built here from IREE's source.

IREE publishes no armv7 runtime, so the XU4's modules could not be executed anywhere before they reached the
board. :func:`build` cross-compiles the runtime from the source snapshot in ``third_party/iree-runtime`` (IREE
and its ``flatcc`` submodule, see its SOURCES.json and make_snapshot.sh) with Debian's
``gcc-arm-linux-gnueabihf``: first IREE's two host code generators (``iree-flatcc-cli``, ``iree-c-embed-data``),
then a static armv7 ``iree-run-module`` (hard-float, NEON + VFPv4 like the Cortex-A15/A7) that qemu-arm runs
without a sysroot. About 30 s on two cores; the result is cached under ``~/.cache/edgeskip/iree-runtime-armv7``.

Only the ``local-sync`` driver is built: IREE's ``local-task`` command buffers assume 64-bit pointers at this
source revision (static assertions fail on a 32-bit target), and edgeskip runs ``local-sync`` anyway.

Needs CMake >= 3.26 (``pip install 'cmake>=3.26' ninja``, in the ``dev`` extra) and
``apt-get install gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeskip.data.registry import default_cache_dir
from edgeskip.errors import EdgeskipError

SNAPSHOT = Path(__file__).resolve().parents[2] / "third_party" / "iree-runtime"
CROSS = ("arm-linux-gnueabihf-gcc", "arm-linux-gnueabihf-g++")
CPU_FLAGS = "-march=armv7-a -mfpu=neon-vfpv4 -mfloat-abi=hard"
MIN_CMAKE = (3, 26)
APT_HINT = "apt-get install gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf"
CMAKE_HINT = "pip install 'cmake>=3.26' ninja"
# a runtime-only build: no compiler, tests, samples or benchmarks; the CPU drivers' embedded-ELF loader only
OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DIREE_ERROR_ON_MISSING_SUBMODULES=OFF",
    "-DIREE_BUILD_COMPILER=OFF",
    "-DIREE_BUILD_TESTS=OFF",
    "-DIREE_BUILD_BENCHMARKS=OFF",
    "-DIREE_BUILD_SAMPLES=OFF",
    "-DIREE_BUILD_BINDINGS_TFLITE=OFF",
    "-DIREE_BUILD_BINDINGS_TFLITE_JAVA=OFF",
    "-DIREE_HAL_DRIVER_DEFAULTS=OFF",
    "-DIREE_HAL_DRIVER_LOCAL_SYNC=ON",
    "-DIREE_HAL_EXECUTABLE_LOADER_DEFAULTS=OFF",
    "-DIREE_HAL_EXECUTABLE_LOADER_EMBEDDED_ELF=ON",
    "-DIREE_HAL_EXECUTABLE_PLUGIN_DEFAULTS=OFF",
    "-DIREE_ENABLE_LIBBACKTRACE=OFF",
    "-DIREE_ENABLE_WERROR_FLAG=OFF",  # GCC's 32-bit shift-width warnings in base/alignment.h
)
TOOLCHAIN = f"""set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7)
set(CMAKE_C_COMPILER {CROSS[0]})
set(CMAKE_CXX_COMPILER {CROSS[1]})
set(CMAKE_C_FLAGS_INIT "{CPU_FLAGS}")
set(CMAKE_CXX_FLAGS_INIT "{CPU_FLAGS}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
"""
Log = Callable[[str], None]


def runtime_dir() -> Path:
    return default_cache_dir() / "iree-runtime-armv7"


def run_module_binary() -> Path:
    return runtime_dir() / "iree-run-module"


def build_info() -> dict:
    """What the cached build was made from (``build.json``), ``{}`` when there is none."""
    try:
        return json.loads((runtime_dir() / "build.json").read_text())
    except (OSError, ValueError):
        return {}


def _tool(name: str) -> str | None:
    """``name`` beside this interpreter (a venv's pip-installed cmake), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which(name)


def _cmake() -> str:
    cmake = _tool("cmake")
    if cmake is None:
        raise EdgeskipError(f"building the armv7 runtime needs CMake >= 3.26: {CMAKE_HINT}")
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_CMAKE:
        raise EdgeskipError(f"{cmake} is {m.group(0) if m else 'unknown'}; IREE needs CMake >= 3.26: {CMAKE_HINT}")
    return cmake


def missing_tools() -> str | None:
    """Why the armv7 runtime cannot be built here (the first missing tool and how to get it), or None."""
    for c in CROSS:
        if shutil.which(c) is None:
            return f"{c} not found ({APT_HINT})"
    if shutil.which("cc") is None or shutil.which("c++") is None:
        return "no host C/C++ compiler for IREE's code generators (apt-get install build-essential)"
    try:
        _cmake()
    except EdgeskipError as e:
        return str(e)
    return None


def _snapshot(source: Path) -> tuple[Path, dict]:
    """The snapshot's archive and its SOURCES.json, checked against the recorded SHA-256."""
    try:
        meta = json.loads((source / "SOURCES.json").read_text())
        archive = source / meta["archive"]
    except (OSError, ValueError, KeyError) as e:
        raise EdgeskipError(f"{source} is not an IREE source snapshot (SOURCES.json: {e})") from None
    h = hashlib.sha256()
    try:
        with archive.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise EdgeskipError(f"cannot read the IREE source archive {archive}: {e.strerror}") from None
    if h.hexdigest() != meta.get("sha256"):
        raise EdgeskipError(f"{archive} does not match the SHA-256 in {source / 'SOURCES.json'}")
    return archive, meta


def _run(cmd: Sequence[str], what: str, log_file: Path) -> None:
    with log_file.open("a") as out:
        proc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        lines = log_file.read_text(errors="replace").splitlines()
        first = next((ln.strip() for ln in lines if "error" in ln.lower()), lines[-1].strip() if lines else "")
        raise EdgeskipError(f"{what} failed (exit {proc.returncode}): {first[:200]} (log: {log_file})")


def build(
    source: str | os.PathLike | None = None, jobs: int | None = None, force: bool = False, log: Log = print
) -> Path:
    """Cross-compile the armv7 ``iree-run-module`` (see the module doc); returns its path.

    ``source``: the snapshot folder (default ``third_party/iree-runtime``) or an unpacked IREE checkout whose
    ``third_party/flatcc`` is populated. The binary and ``build.json`` land in :func:`runtime_dir` atomically;
    An existing build of the same snapshot is kept unless ``force``. The build folder is removed, its log kept beside the binary (and in the cache folder after a failure)."""
    why = missing_tools()
    if why:
        raise EdgeskipError(f"cannot build the armv7 IREE runtime: {why}")
    cmake = _cmake()
    src = Path(source) if source is not None else SNAPSHOT
    if not src.is_dir():
        raise EdgeskipError(f"no IREE source at {src} (a source snapshot folder or an IREE checkout)")
    if (src / "SOURCES.json").is_file() and not force and run_module_binary().is_file():
        archive, meta = _snapshot(src)
        if build_info().get("iree_commit") == meta["iree"]["commit"]:
            log(f"{run_module_binary()} is built from this snapshot already (--force rebuilds it)")
            return run_module_binary()
    ninja = _tool("ninja")
    gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else ["-G", "Unix Makefiles"]
    jobs = jobs or os.cpu_count() or 2
    dest = runtime_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-armv7.", dir=dest.parent))
    logf = dest.parent / "iree-runtime-armv7.build.log"  # kept after a failure; copied beside the binary
    logf.write_text("")
    t0 = time.perf_counter()
    try:
        if (src / "SOURCES.json").is_file():
            archive, meta = _snapshot(src)
            log(f"unpacking {archive.name} (IREE {meta['iree']['commit'][:10]}, {meta['iree']['date'][:10]})")
            with tarfile.open(archive) as tar:
                tar.extractall(work, filter="data")
            tree = work / "iree-runtime-src"
            commit, date = meta["iree"]["commit"], meta["iree"]["date"]
        else:
            tree, commit, date = src, "unknown (a checkout)", ""
            if not (tree / "third_party" / "flatcc" / "CMakeLists.txt").is_file():
                raise EdgeskipError(f"{tree} has no third_party/flatcc: git submodule update --init third_party/flatcc")
        log("building IREE's host code generators (iree-flatcc-cli, iree-c-embed-data)")
        host = work / "host"
        _run([cmake, *gen, "-S", str(tree), "-B", str(host), *OPTIONS], "configuring the host tools", logf)
        _run(
            [cmake, "--build", str(host), "-j", str(jobs), "--target", "iree-flatcc-cli", "iree-c-embed-data"],
            "building the host tools",
            logf,
        )
        log(f"cross-compiling iree-run-module for armv7 ({CPU_FLAGS}, static)")
        (work / "armv7.cmake").write_text(TOOLCHAIN)
        arm = work / "armv7"
        configure = [cmake, *gen, "-S", str(tree), "-B", str(arm), *OPTIONS]
        configure += [f"-DCMAKE_TOOLCHAIN_FILE={work / 'armv7.cmake'}", f"-DIREE_HOST_BIN_DIR={host / 'tools'}"]
        _run(configure, "configuring the armv7 runtime", logf)
        _run([cmake, "--build", str(arm), "-j", str(jobs), "--target", "iree-run-module"], "building it", logf)
        gcc = subprocess.run([CROSS[0], "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        info = {
            "iree_commit": commit,
            "iree_date": date,
            "cross_compiler": gcc,
            "cpu_flags": CPU_FLAGS,
            "drivers": ["local-sync"],
            "build_seconds": round(time.perf_counter() - t0, 1),
        }
        staged = work / "staged"
        staged.mkdir()
        shutil.copy2(arm / "tools" / "iree-run-module", staged / "iree-run-module")
        shutil.copy2(logf, staged / "build.log")
        (staged / "build.json").write_text(json.dumps(info, indent=1))
        staged.chmod(0o755)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=".iree-runtime-armv7.old.", dir=dest.parent))
            os.replace(dest, old / dest.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staged, dest)
        log(f"built {run_module_binary()} in {info['build_seconds']} s")
        return run_module_binary()
    finally:
        shutil.rmtree(work, ignore_errors=True)
