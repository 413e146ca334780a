"""IREE's ``iree-run-module`` for armv7 (the Odroid XU4), built here from IREE's source.

IREE publishes no armv7 runtime, so the XU4's modules could not be executed anywhere before they reached the
board. :func:`build` cross-compiles the runtime from the source snapshot in ``third_party/iree-runtime`` (IREE
and its ``flatcc`` submodule, see its SOURCES.json and make_snapshot.sh) with Debian's
``gcc-arm-linux-gnueabihf``: first IREE's two host code generators (``iree-flatcc-cli``, ``iree-c-embed-data``),
then a static armv7 ``iree-run-module`` (hard-float, NEON + VFPv4 like the Cortex-A15/A7) that qemu-arm runs
without a sysroot. About 30 s on two cores; the result is cached under ``~/.cache/edgeskip/iree-runtime-armv7``.

Only the ``local-sync`` driver is built: IREE's ``local-task`` command buffers assume 64-bit pointers at this
source revision (static assertions fail on a 32-bit target), and edgeskip runs ``local-sync`` anyway.

Needs CMake >= 3.26 (``pip install 'cmake>=3.26' ninja``, in the ``armv7`` extra) and
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
from edgeskip.utils.atomic import replace_dir

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
        errors = [ln.strip() for ln in lines if re.search(r"\berror\b:|^CMake Error|FAILED:", ln.strip())]
        first = next((e for e in errors if "error:" in e or "CMake Error" in e), errors[0] if errors else "")
        first = first or (lines[-1].strip() if lines else "")
        raise EdgeskipError(f"{what} failed (exit {proc.returncode}): {first[:200]} (log: {log_file})")


PATCHES: tuple[tuple[str, str, str], ...] = (
    # 64-bit assumptions of IREE's Python bindings at this revision, which a 32-bit target trips over
    (
        "runtime/bindings/python/hal.cc",
        """  static_assert(sizeof(dl_tensor.data) >=
                sizeof(external_buffer.handle.device_allocation.ptr));""",
        """  if (external_buffer.handle.device_allocation.ptr > UINTPTR_MAX) {  // edgeskip: 32-bit targets
    throw std::runtime_error("device allocation does not fit a pointer");
  }""",
    ),
    (
        "runtime/bindings/python/hal.cc",
        "reinterpret_cast<uint8_t*>(external_buffer.handle.device_allocation.ptr) +",
        "reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(external_buffer.handle.device_allocation.ptr)) +",
    ),
    # ml_dtypes (bf16/fp8 numpy types) has no armv7 wheel: without it those element types are unsupported
    (
        "runtime/bindings/python/iree/runtime/dtypes.py",
        "import ml_dtypes\n",
        "try:\n    import ml_dtypes\nexcept ImportError:  # edgeskip: armv7\n    ml_dtypes = None\n",
    ),
    (
        "runtime/bindings/python/iree/runtime/dtypes.py",
        "_ML_DTYPE_TO_HAL_ELEMENT_TYPE = {\n",
        "_ML_DTYPE_TO_HAL_ELEMENT_TYPE = {} if ml_dtypes is None else {\n",
    ),
)
NANOBIND = "2.9.0"  # the version IREE's CMake pins


class _Build:
    """One build folder: the unpacked source (with :data:`PATCHES` applied), IREE's host code generators, a log."""

    def __init__(self, source: str | os.PathLike | None, what: str, jobs: int | None, log: Log) -> None:
        why = missing_tools()
        if why:
            raise EdgeskipError(f"cannot build {what}: {why}")
        self.cmake = _cmake()
        self.src = Path(source) if source is not None else SNAPSHOT
        if not self.src.is_dir():
            raise EdgeskipError(f"no IREE source at {self.src} (a source snapshot folder or an IREE checkout)")
        ninja = _tool("ninja")
        self.gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else ["-G", "Unix Makefiles"]
        self.jobs = str(jobs or os.cpu_count() or 2)
        self.log = log
        default_cache_dir().mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=".build-armv7.", dir=default_cache_dir()))
        self.logf = default_cache_dir() / f"{what.replace(' ', '-')}.build.log"  # kept after a failure
        self.logf.write_text("")
        self.commit, self.date = "unknown (a checkout)", ""

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def tree(self) -> Path:
        """The source tree to configure: the snapshot unpacked and patched, or the checkout as it is (never
        edited: its Python bindings build for armv7 only with :data:`PATCHES` applied there first)."""
        if (self.src / "SOURCES.json").is_file():
            archive, meta = _snapshot(self.src)
            self.log(f"unpacking {archive.name} (IREE {meta['iree']['commit'][:10]}, {meta['iree']['date'][:10]})")
            with tarfile.open(archive) as tar:
                tar.extractall(self.work, filter="data")
            tree = self.work / "iree-runtime-src"
            self.commit, self.date = meta["iree"]["commit"], meta["iree"]["date"]
            for rel, old, new in PATCHES:
                f = tree / rel
                if f.is_file():
                    text = f.read_text()
                    if old not in text:
                        raise EdgeskipError(f"the armv7 patch of {rel} no longer applies to this IREE source")
                    f.write_text(text.replace(old, new))
            return tree
        if not (self.src / "third_party" / "flatcc" / "CMakeLists.txt").is_file():
            raise EdgeskipError(f"{self.src} has no third_party/flatcc: git submodule update --init third_party/flatcc")
        return self.src

    def run(self, cmd: Sequence[str], what: str) -> None:
        _run(cmd, what, self.logf)

    def configure(self, tree: Path, build: Path, *extra: str) -> None:
        self.run(
            [self.cmake, *self.gen, "-S", str(tree), "-B", str(build), *OPTIONS, *extra], f"configuring {build.name}"
        )

    def make(self, build: Path, *targets: str) -> None:
        self.run([self.cmake, "--build", str(build), "-j", self.jobs, "--target", *targets], f"building {build.name}")

    def cross(self, tree: Path, build: Path, *extra: str) -> None:
        """Configure ``build`` for armv7 after building the host code generators it needs."""
        self.log("building IREE's host code generators (iree-flatcc-cli, iree-c-embed-data)")
        host = self.work / "host"
        self.configure(tree, host)
        self.make(host, "iree-flatcc-cli", "iree-c-embed-data")
        (self.work / "armv7.cmake").write_text(TOOLCHAIN)
        toolchain = [f"-DCMAKE_TOOLCHAIN_FILE={self.work / 'armv7.cmake'}", f"-DIREE_HOST_BIN_DIR={host / 'tools'}"]
        self.configure(tree, build, *toolchain, *extra)


def build(
    source: str | os.PathLike | None = None, jobs: int | None = None, force: bool = False, log: Log = print
) -> Path:
    """Cross-compile the armv7 ``iree-run-module`` (see the module doc); returns its path.

    ``source``: the snapshot folder (default ``third_party/iree-runtime``) or an unpacked IREE checkout whose
    ``third_party/flatcc`` is populated. The binary and ``build.json`` land in :func:`runtime_dir` atomically.
    An existing build of the same snapshot is kept unless ``force``. The build folder is removed, its log kept
    beside the binary (and in the cache folder after a failure)."""
    src = Path(source) if source is not None else SNAPSHOT
    if (src / "SOURCES.json").is_file() and not force and run_module_binary().is_file():
        _, meta = _snapshot(src)
        if build_info().get("iree_commit") == meta["iree"]["commit"]:
            log(f"{run_module_binary()} is built from this snapshot already (--force rebuilds it)")
            return run_module_binary()
    b = _Build(source, "iree-runtime-armv7", jobs, log)
    t0 = time.perf_counter()
    try:
        tree = b.tree()
        arm = b.work / "armv7"
        b.cross(tree, arm)
        log(f"cross-compiling iree-run-module for armv7 ({CPU_FLAGS}, static)")
        b.make(arm, "iree-run-module")
        info = _info(b, time.perf_counter() - t0)
        staged = b.work / "staged"
        staged.mkdir()
        shutil.copy2(arm / "tools" / "iree-run-module", staged / "iree-run-module")
        shutil.copy2(b.logf, staged / "build.log")
        (staged / "build.json").write_text(json.dumps(info, indent=1))
        staged.chmod(0o755)
        replace_dir(staged, runtime_dir())
        log(f"built {run_module_binary()} in {info['build_seconds']} s")
        return run_module_binary()
    finally:
        b.close()


def _info(b: _Build, seconds: float) -> dict:
    gcc = subprocess.run([CROSS[0], "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {
        "iree_commit": b.commit,
        "iree_date": b.date,
        "cross_compiler": gcc,
        "cpu_flags": CPU_FLAGS,
        "drivers": ["local-sync"],
        "build_seconds": round(seconds, 1),
    }


def build_python_bindings(
    sysroot: Path, site: Path, source: str | os.PathLike | None = None, jobs: int | None = None, log: Log = print
) -> dict:
    """IREE's Python runtime (``iree.runtime``) cross-compiled for an armv7 CPython 3.11 into ``site``.

    ``sysroot``: Debian's armhf ``libpython3.11-dev`` and ``python3-numpy`` unpacked (their headers). Needs
    ``nanobind`` 2.9.0 installed here (the ``armv7`` extra). Returns the build's provenance."""
    import importlib.util
    from importlib import metadata

    spec = importlib.util.find_spec("nanobind")
    have = metadata.version("nanobind") if spec is not None else None
    if spec is None or spec.origin is None or have != NANOBIND:
        raise EdgeskipError(
            f"building IREE's armv7 Python runtime needs nanobind=={NANOBIND} (IREE's pin; found {have}): "
            "pip install -e '.[armv7]'"
        )
    nanobind_cmake = Path(spec.origin).parent / "cmake"
    triple = "arm-linux-gnueabihf"
    pyinc_src = sysroot / "usr" / "include" / "python3.11"
    numpy_inc = sysroot / "usr" / "lib" / "python3" / "dist-packages" / "numpy" / "core" / "include"
    if not (sysroot / "usr" / "include" / triple / "python3.11" / "pyconfig.h").is_file() or not numpy_inc.is_dir():
        raise EdgeskipError(f"{sysroot} lacks the armhf Python or numpy headers (libpython3.11-dev, python3-numpy)")
    b = _Build(source, "iree-python-armv7", jobs, log)
    t0 = time.perf_counter()
    try:
        tree = b.tree()
        pyinc = b.work / "pyinc" / "python3.11"  # Debian's pyconfig.h picks the arch's by include path: flatten it
        shutil.copytree(pyinc_src, pyinc)
        shutil.copy2(sysroot / "usr" / "include" / triple / "python3.11" / "pyconfig.h", pyinc / "pyconfig.h")
        py = []
        for v in ("Python3", "Python"):
            py += [
                f"-D{v}_EXECUTABLE={sys.executable}",
                f"-D{v}_INCLUDE_DIR={pyinc}",
                f"-D{v}_NumPy_INCLUDE_DIR={numpy_inc}",
            ]
        arm = b.work / "python"
        b.cross(
            tree,
            arm,
            "-DIREE_BUILD_PYTHON_BINDINGS=ON",
            "-DIREE_USE_SYSTEM_DEPS=ON",  # nanobind from the pip package, not a git clone
            f"-Dnanobind_DIR={nanobind_cmake}",
            *py,
        )
        log("cross-compiling IREE's Python runtime for armv7 CPython 3.11")
        b.make(arm, "iree_runtime_bindings_python_PyExtRt", "iree_runtime_bindings_python_runtime")
        pkg = arm / "runtime" / "bindings" / "python" / "iree"
        shutil.copytree(pkg, site / "iree", symlinks=False, dirs_exist_ok=True)
        libs = site / "iree" / "_runtime_libs"
        for f in list(libs.iterdir()):
            if f.name.startswith("_runtime.") and f.suffix == ".so":  # named for the build host's ABI: rename
                f.rename(libs / f"_runtime.cpython-311-{triple}.so")
            elif f.is_file() and f.name.startswith("iree-"):
                f.unlink()  # the tools: iree-run-module comes from `build` (static)
        info = _info(b, time.perf_counter() - t0)
        log(f"built IREE's armv7 Python runtime in {info['build_seconds']} s")
        return info
    finally:
        b.close()
