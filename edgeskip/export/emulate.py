"""Run aarch64 and armv7 IREE modules on an x86 host under user-mode emulation.

aarch64 needs Debian's ``qemu-user-static``, ``libc6-arm64-cross`` and ``libstdc++6-arm64-cross``, and the
aarch64 ``iree-run-module`` from the manylinux aarch64 wheel of iree-base-runtime of the *same*
version as the compiler (``python -m edgeskip.export.emulate fetch`` downloads and unpacks it).
armv7 (the Odroid XU4) needs ``qemu-arm-static`` and a static armv7 ``iree-run-module`` built from IREE's
source (``python -m edgeskip.export.emulate build-armv7``, see :mod:`edgeskip.export.armv7_runtime`).
Inputs are passed as ``--input=@x.npy`` (the ``SHAPExTYPE=@x.npy`` form reads the .npy header as data).

An aarch64 CPython 3.11 with the runtime's dependencies (:data:`RUNTIME_WHEELS`) can run under qemu too:
``python -m edgeskip.export.emulate fetch-python`` puts Debian bookworm's arm64 python3.11 and the shared
libraries it needs (:data:`DEB_PACKAGES`, via ``apt-get download``; needs ``dpkg --add-architecture arm64
&& apt-get update`` once) into a self-contained sysroot, and the aarch64 wheels beside it;
:func:`python_command` gives the argv prefix and environment to run it. ``fetch-python --arch armv7`` does the same
for the Odroid XU4: Debian's armhf CPython with its numpy and Pillow, PyPI's armv7l wheels of the rest, and IREE's
Python runtime cross-built from source (:func:`edgeskip.export.armv7_runtime.build_python_bindings`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.data.registry import default_cache_dir
from edgeskip.errors import EdgeskipError
from edgeskip.export import armv7_runtime
from edgeskip.utils.atomic import replace_dir

SYSROOT = Path("/usr/aarch64-linux-gnu")
QEMU = "qemu-aarch64-static"


def runtime_version() -> str:
    return metadata.version("iree-base-runtime")


def runtime_dir() -> Path:
    return default_cache_dir() / f"iree-runtime-aarch64-{runtime_version()}"


def run_module_binary() -> Path:
    return runtime_dir() / "iree-run-module"


@dataclass(frozen=True)
class Arm:
    """An ARM architecture's emulator and ``iree-run-module``."""

    name: str
    qemu: str
    sysroot: Path | None  # qemu's -L folder; None for a static binary
    binary: Callable[[], Path]
    fix: str  # the command that puts the runtime in place


ARMS = {
    "aarch64": Arm("aarch64", QEMU, SYSROOT, run_module_binary, "python -m edgeskip.export.emulate fetch"),
    "armv7": Arm(
        "armv7",
        "qemu-arm-static",
        None,
        armv7_runtime.run_module_binary,
        "python -m edgeskip.export.emulate build-armv7",
    ),
}


def arch_of(triple: str | None) -> str | None:
    """``"aarch64"`` or ``"armv7"`` for a target triple whose modules can run under qemu here, else None."""
    if triple and triple.startswith("aarch64"):
        return "aarch64"
    if triple and triple.startswith(("armv7", "arm-")):
        return "armv7"
    return None


def missing(arch: str = "aarch64") -> str | None:
    """Why ``arch`` modules cannot be run here, or None when everything is in place."""
    a = ARMS[arch]
    if shutil.which(a.qemu) is None:
        return f"{a.qemu} not found (apt-get install qemu-user-static)"
    if a.sysroot is not None and not (a.sysroot / "lib" / "ld-linux-aarch64.so.1").exists():
        return f"no aarch64 sysroot at {a.sysroot} (apt-get install libc6-arm64-cross libstdc++6-arm64-cross)"
    if not a.binary().is_file():
        return f"no {arch} iree-run-module at {a.binary()} ({a.fix})"
    return None


def runtime_label(arch: str) -> str:
    """Which IREE runtime executes ``arch`` modules here (recorded beside each verification)."""
    if arch == "armv7":
        info = armv7_runtime.build_info()
        return (
            f"IREE {str(info.get('iree_commit', '?'))[:10]} ({str(info.get('iree_date', ''))[:10]}), built from source"
        )
    return f"iree-base-runtime {runtime_version()} (PyPI aarch64 wheel)"


def verify_target(
    name: str,
    triple: str | None,
    vmfb: Path,
    compare: Callable[[str], tuple[float, str]],
    tolerance: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The verification entry of a non-host target: its module run under qemu against the host.

    ``compare(arch)`` runs the module and returns the largest difference from the host and what else differs
    ("" when nothing: e.g. a top-1 class or a gate decision). armv7 modules are also checked to import no
    symbol (the board's loader refuses one). Not executed where the runtime is missing (the reason says how to
    get it); raises where the emulated module differs from the host."""
    from edgeskip.export.elf_check import check_no_imports

    arch = arch_of(triple)
    entry: dict[str, Any] = {}
    if arch != "aarch64":
        entry.update(elf_checked=len(check_no_imports(vmfb)), undefined_symbols=0)
    why = missing(arch) if arch else f"no emulator for {triple}"
    if why:
        log(f"  {name}: not executed ({why})")
        return {"executed": False, "reason": why, **entry}
    assert arch is not None
    worst, other = compare(arch)
    if worst > tolerance or other:
        extra = f" and {other}" if other else ""
        raise EdgeskipError(f"{name} modules under {ARMS[arch].qemu} differ from the host by {worst:.2e}{extra}")
    log(f"  {name}: executed under {ARMS[arch].qemu}, within {worst:.1e} of the host")
    label = runtime_label(arch)
    return {"executed": True, "emulator": ARMS[arch].qemu, "runtime": label, f"{arch}_vs_host": worst, **entry}


def fetch() -> Path:
    """Download the aarch64 wheel of iree-base-runtime (this version) and unpack iree-run-module."""
    dest = runtime_dir()
    if run_module_binary().is_file():
        return run_module_binary()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux_2_28_aarch64",
            "--platform",
            "manylinux_2_17_aarch64",
            "--python-version",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            f"iree-base-runtime=={runtime_version()}",
            "-d",
            tmp,
        ]
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


def run_module(
    vmfb: str | os.PathLike,
    inputs: Sequence[np.ndarray],
    function: str = "main_graph",
    driver: str = "local-sync",
    parameters: str | os.PathLike | None = None,
    timeout: float = 300,
    arch: str = "aarch64",
) -> np.ndarray:
    """Execute ``function`` of an ``arch`` module under qemu and return its (single) output.

    ``parameters``: the .irpa archive of a module compiled with externalised weights (scope ``model``).
    """
    return run_module_outputs(vmfb, inputs, 1, function, driver, parameters, timeout, arch)[0]


def run_module_outputs(
    vmfb: str | os.PathLike,
    inputs: Sequence[np.ndarray],
    outputs: int,
    function: str = "main_graph",
    driver: str = "local-sync",
    parameters: str | os.PathLike | None = None,
    timeout: float = 300,
    arch: str = "aarch64",
) -> list[np.ndarray]:
    """As :func:`run_module` for a function with ``outputs`` results; returns them in order."""
    why = missing(arch)
    if why:
        raise EdgeskipError(f"cannot run {arch} modules: {why}")
    a = ARMS[arch]
    with tempfile.TemporaryDirectory() as tmp:
        args = []
        for k, x in enumerate(inputs):
            p = Path(tmp) / f"in{k}.npy"
            np.save(p, np.ascontiguousarray(x))
            args.append(f"--input=@{p}")
        outs = [Path(tmp) / f"out{k}.npy" for k in range(outputs)]
        cmd = [a.qemu, *(["-L", str(a.sysroot)] if a.sysroot is not None else []), str(a.binary())]
        cmd += [f"--device={driver}", f"--module={vmfb}", f"--function={function}"]
        if parameters is not None:
            cmd.append(f"--parameters=model={parameters}")
        cmd += [*args, *[f"--output=@{o}" for o in outs]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not all(o.exists() for o in outs):
            raise EdgeskipError(
                f"{arch} run of {Path(vmfb).name} failed: {run_error(arch, proc.stderr or proc.stdout)}"
            )
        return [np.load(o) for o in outs]


_STATUS = re.compile(r"\b([A-Z_]{6,}); ([^;]*)")
ELF_ARCH = {"aarch64": "arm_64", "armv7": "arm_32"}


def run_error(arch: str, text: str) -> str:
    """iree-run-module's error as one line: its status and first cause; a module of another target is named."""
    formats = sorted(set(re.findall(r'"embedded-elf-(\w+)"', text)) - {ELF_ARCH[arch]})
    m = _STATUS.search(text)
    if m and m.group(1) == "INCOMPATIBLE" and formats:
        return (
            f"the module's code is embedded-elf-{', '.join(formats)}, not {ELF_ARCH[arch]}: a module of another target"
        )
    v = re.search(r"bytecode version mismatch; runtime supports [\d.]+, module has [\d.]+", text)
    if v:
        return (
            f"{v.group(0)}: the module comes from another IREE release than this runtime "
            f"(the runtime of the compiler's release is needed: {ARMS[arch].fix}, from that release's source)"
        )
    if m:
        return f"{m.group(1)}: {m.group(2).strip()[:200]}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


PYTHON_VERSION = "3.11"
# Debian bookworm arm64 packages of the aarch64 Python sysroot: the interpreter and standard library,
# the libraries of its extension modules (ssl/hashlib, ctypes, zlib, bz2, lzma, pyexpat, sqlite3, uuid,
# crypt, dbm, readline, curses) and the C/C++ runtime the wheels link against. Not included: libnsl2
# (the deprecated ``nis`` module; it pulls in Kerberos).
DEB_PACKAGES: tuple[str, ...] = (
    "python3.11-minimal:arm64",
    "libpython3.11-minimal:arm64",
    "libpython3.11-stdlib:arm64",
    "libc6:arm64",
    "libgcc-s1:arm64",
    "libstdc++6:arm64",
    "libexpat1:arm64",
    "zlib1g:arm64",
    "libssl3:arm64",
    "libffi8:arm64",
    "libbz2-1.0:arm64",
    "liblzma5:arm64",
    "libcrypt1:arm64",
    "libuuid1:arm64",
    "libsqlite3-0:arm64",
    "libreadline8:arm64",
    "libtinfo6:arm64",
    "libncursesw6:arm64",
    "libdb5.3:arm64",
    "media-types",
)
# What ``python -m edgeskip serve`` imports (pip resolves their dependencies), with both engines (onnxruntime:
# the ``edgeskip[onnxruntime]`` extra, PyPI has its aarch64 wheels); the engines are pinned to the host's versions.
RUNTIME_WHEELS: tuple[str, ...] = (
    "numpy",
    "iree-base-runtime",
    "onnxruntime",
    "aiohttp",
    "pillow",
    "prometheus-client",
    "click",
)
# bookworm's glibc is 2.36; pip also accepts the older manylinux tags below each of these
WHEEL_PLATFORMS: tuple[str, ...] = (
    "manylinux_2_36_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux2014_aarch64",
)
# armv7 (the Odroid XU4): the same interpreter from Debian's armhf packages; numpy and Pillow from Debian too
# (PyPI has no armv7 wheels of them), with the libraries their extension modules load; aiohttp and the pure-Python
# packages from PyPI's armv7l wheels; IREE's Python runtime built here from source
# (:func:`edgeskip.export.armv7_runtime.build_python_bindings`, which needs the -dev headers).
ARMHF_DEB_PACKAGES: tuple[str, ...] = (
    *(p.replace(":arm64", ":armhf") for p in DEB_PACKAGES),
    "libpython3.11:armhf",
    "libpython3.11-dev:armhf",
    "python3-numpy:armhf",
    "libblas3:armhf",
    "liblapack3:armhf",
    "libgfortran5:armhf",
    "python3-pil:armhf",
    "libgomp1:armhf",
    "libjpeg62-turbo:armhf",
    "libtiff6:armhf",
    "libopenjp2-7:armhf",
    "libxcb1:armhf",
    "libimagequant0:armhf",
    "libdeflate0:armhf",
    "libjbig0:armhf",
    "liblerc4:armhf",
    "libwebp7:armhf",
    "libwebpmux3:armhf",
    "libwebpdemux2:armhf",
    "libzstd1:armhf",
    "libxau6:armhf",
    "libxdmcp6:armhf",
    "libbsd0:armhf",
    "libmd0:armhf",
    "liblcms2-2:armhf",
    "libfreetype6:armhf",
    "libpng16-16:armhf",
    "libbrotli1:armhf",
)
ARMV7_WHEELS: tuple[str, ...] = ("aiohttp", "prometheus-client", "click")
ARMV7_PLATFORMS: tuple[str, ...] = (
    "manylinux_2_36_armv7l",
    "manylinux_2_31_armv7l",
    "manylinux_2_28_armv7l",
    "manylinux_2_17_armv7l",
    "manylinux2014_armv7l",
)


@dataclass(frozen=True)
class PyArch:
    """How an emulated CPython 3.11 of one ARM architecture is put together."""

    name: str
    deb_arch: str
    loader: str  # the dynamic loader, relative to the sysroot
    debs: tuple[str, ...]
    wheels: tuple[str, ...]
    platforms: tuple[str, ...]


PY_ARCHES = {
    "aarch64": PyArch("aarch64", "arm64", "lib/ld-linux-aarch64.so.1", DEB_PACKAGES, RUNTIME_WHEELS, WHEEL_PLATFORMS),
    "armv7": PyArch(
        "armv7",
        "armhf",
        "lib/ld-linux-armhf.so.3",
        ARMHF_DEB_PACKAGES,
        ARMV7_WHEELS,
        ARMV7_PLATFORMS,
    ),
}


def _apt_hint(arch: str) -> str:
    return f"run as root: dpkg --add-architecture {PY_ARCHES[arch].deb_arch} && apt-get update"


def python_dir(arch: str = "aarch64") -> Path:
    """The folder of the ``arch`` Python: ``sysroot/`` (Debian packages), ``site/`` (wheels), manifest."""
    return default_cache_dir() / f"{arch}-python{PYTHON_VERSION}"


def python_sysroot(arch: str = "aarch64") -> Path:
    return python_dir(arch) / "sysroot"


def python_site(arch: str = "aarch64") -> Path:
    return python_dir(arch) / "site"


def python_binary(arch: str = "aarch64") -> Path:
    return python_sysroot(arch) / "usr" / "bin" / f"python{PYTHON_VERSION}"


def _manifest(root: Path) -> dict:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


PINNED = ("iree-base-runtime", "onnxruntime")  # the aarch64 engines run the host's versions


def _pinned(packages: Sequence[str]) -> list[str]:
    """``packages`` with a bare ``iree-base-runtime`` or ``onnxruntime`` pinned to the host's version (where
    the host has it)."""
    out = []
    for p in packages:
        name = re.sub(r"[-_.]+", "-", p.strip().lower())
        if name in PINNED:
            try:
                p = f"{p.strip()}=={metadata.version(name)}"
            except metadata.PackageNotFoundError:
                pass
        out.append(p)
    return out


def python_missing(arch: str = "aarch64") -> str | None:
    """Why an ``arch`` Python cannot be run here, or None when everything is in place."""
    a, qemu = PY_ARCHES[arch], ARMS[arch].qemu
    if shutil.which(qemu) is None:
        return f"{qemu} not found (apt-get install qemu-user-static)"
    fix = "python -m edgeskip.export.emulate fetch-python" + ("" if arch == "aarch64" else f" --arch {arch}")
    if not python_binary(arch).is_file() or not (python_sysroot(arch) / a.loader).exists():
        return f"no {arch} Python sysroot at {python_sysroot(arch)} ({fix})"
    if not (python_sysroot(arch) / "proc" / "cpuinfo").is_file():
        return f"the {arch} Python sysroot has no /proc/cpuinfo for onnxruntime ({fix})"
    got = _manifest(python_dir(arch))
    if not python_site(arch).is_dir() or "wheels" not in got:
        return f"no {arch} site-packages at {python_site(arch)} ({fix})"
    for want in _pinned(a.wheels):
        if want not in got.get("requested", []):
            return f"the {arch} site-packages do not have {want} ({fix})"
    return None


def _run(cmd: Sequence[str], what: str, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError as e:
        raise EdgeskipError(f"{what}: {e.filename} not found") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        raise EdgeskipError(f"{what} failed: {lines[-1].strip() if lines else f'exit status {proc.returncode}'}")
    return proc


def _fetch_sysroot(dest: Path, work: Path, arch: str = "aarch64") -> list[str]:
    """``apt-get download`` the ``arch`` packages into ``work``, ``dpkg -x`` them into ``dest``; returns the .debs."""
    a = PY_ARCHES[arch]
    for tool in ("apt-get", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise EdgeskipError(f"{tool} not found: the {arch} Python sysroot is built from Debian packages")
    arches = _run(["dpkg", "--print-foreign-architectures"], "dpkg --print-foreign-architectures").stdout.split()
    if a.deb_arch not in arches and _run(["dpkg", "--print-architecture"], "dpkg").stdout.strip() != a.deb_arch:
        raise EdgeskipError(f"{a.deb_arch} is not a dpkg architecture here ({_apt_hint(arch)})")
    work.mkdir(parents=True)
    work.chmod(0o755)  # apt's download sandbox user (_apt) writes here
    try:
        _run(["apt-get", "download", "-q", *a.debs], "apt-get download", cwd=work)
    except EdgeskipError as e:
        raise EdgeskipError(f"{e} ({_apt_hint(arch)})") from None
    debs = sorted(work.glob("*.deb"))
    if len(debs) != len(a.debs):
        raise EdgeskipError(f"apt-get download gave {len(debs)} packages for {len(a.debs)} ({_apt_hint(arch)})")
    dest.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(dest)], f"dpkg-deb -x {deb.name}")
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/locale"):
        shutil.rmtree(dest / sub, ignore_errors=True)
    # absolute links would point into the host's filesystem: make them relative to the sysroot
    for link in [p for p in dest.rglob("*") if p.is_symlink()]:
        target = os.readlink(link)
        if target.startswith("/"):
            link.unlink()
            link.symlink_to(os.path.relpath(dest / target.lstrip("/"), link.parent))
    # Debian's site.py adds these: empty ones in the sysroot keep qemu (-L falls back to host paths)
    # from showing the host's x86 packages to the aarch64 interpreter
    for sub in (
        f"usr/local/lib/python{PYTHON_VERSION}/dist-packages",
        "usr/lib/python3/dist-packages",
        f"usr/lib/python{PYTHON_VERSION}/dist-packages",
    ):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    if not (dest / "usr" / "bin" / f"python{PYTHON_VERSION}").is_file():
        raise EdgeskipError(f"the {a.deb_arch} packages have no usr/bin/python{PYTHON_VERSION}")
    # Debian's maintainer scripts (not run by dpkg -x) point these alternatives at the reference BLAS/LAPACK
    lib = dest / "usr" / "lib" / "arm-linux-gnueabihf"
    for name in ("blas/libblas.so.3", "lapack/liblapack.so.3"):
        if (lib / name).exists() and not (lib / Path(name).name).exists():
            (lib / Path(name).name).symlink_to(name)
    return [d.name for d in debs]


# qemu-user before 8.1 shows an aarch64 program the host's x86 /proc/cpuinfo, and onnxruntime's CPU detection
# (pytorch/cpuinfo) crashes on it: `import onnxruntime` segfaults (bench/ort_qemu_cpuinfo.py). qemu resolves
# absolute paths in its -L sysroot first, so the sysroot carries the /proc/cpuinfo of a 2-core Cortex-A72 (a
# Raspberry Pi 4's core, no dotprod/i8mm: the plain NEON kernels run, which is what emulation can check anyway).
CPUINFO = "".join(
    f"processor\t: {k}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    for k in range(2)
)


def _write_cpuinfo(sysroot: Path) -> None:
    (sysroot / "proc").mkdir(exist_ok=True)
    (sysroot / "proc" / "cpuinfo").write_text(CPUINFO)


def _unpack_wheel(wheel: Path, site: Path) -> None:
    """Install ``wheel`` into ``site`` the simple way: unzip, keep file modes, merge ``*.data/{purelib,platlib}``."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = Path(z.extract(info, site))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                path.chmod(mode | 0o600)
    for data in site.glob("*.data"):
        for sub in ("purelib", "platlib"):
            if (data / sub).is_dir():
                shutil.copytree(data / sub, site, dirs_exist_ok=True)
        shutil.rmtree(data)


def _fetch_site(dest: Path, work: Path, requested: Sequence[str], arch: str = "aarch64") -> list[str]:
    """``pip download`` the cp311 ``arch`` wheels of ``requested`` (with dependencies) and unpack them into ``dest``."""
    work.mkdir(parents=True)
    platforms = [a for p in PY_ARCHES[arch].platforms for a in ("--platform", p)]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            *platforms,
            "--python-version",
            PYTHON_VERSION,
            "--implementation",
            "cp",
            "--abi",
            f"cp{PYTHON_VERSION.replace('.', '')}",
            "-d",
            str(work),
            *requested,
        ],
        f"pip download of the {arch} wheels",
    )
    wheels = sorted(work.glob("*.whl"))
    if not wheels:
        raise EdgeskipError(f"pip download of the {arch} wheels gave no wheels")
    dest.mkdir(parents=True)
    for w in wheels:
        _unpack_wheel(w, dest)
    return [w.name for w in wheels]


def _precompile(tmp: Path, arch: str = "aarch64") -> None:
    """Byte-compile the stdlib and site of the new folder ``tmp`` (best effort): the emulated interpreter
    then neither compiles them on each start (~5 s under qemu) nor writes into the cache. With the host's
    CPython when it is a 3.11 too (same .pyc magic, native speed), else with the emulated one under qemu."""
    argv, env = [sys.executable], dict(os.environ)
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        argv, env = _command(tmp, (), arch)
        env.pop("PYTHONDONTWRITEBYTECODE")
    subprocess.run(
        [
            *argv,
            "-m",
            "compileall",
            "-q",
            "-j",
            "1",
            "-x",
            r"lib2to3/tests|/test/|/tests/",
            "-s",
            str(tmp),
            "-p",
            str(python_dir(arch)),
            str(tmp / "sysroot" / "usr" / "lib" / f"python{PYTHON_VERSION}"),
            str(tmp / "site"),
        ],
        env=env,
        capture_output=True,
    )


def fetch_python(packages: Sequence[str] | None = None, arch: str = "aarch64") -> Path:
    """Fetch the ``arch`` Python sysroot and the wheels of ``packages`` (default: the runtime's; see module doc);
    for armv7 also build IREE's Python runtime from source. Idempotent.

    Built in a temporary folder beside :func:`python_dir` and renamed into place, so an interrupted
    fetch never leaves a folder that looks complete. Returns :func:`python_dir`.
    """
    a = PY_ARCHES[arch]
    dest = python_dir(arch)
    requested = _pinned(a.wheels if packages is None else packages)
    old = _manifest(dest)
    if old.get("requested") == requested and old.get("debs_requested") == list(a.debs) and python_missing(arch) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        if old.get("debs_requested") == list(a.debs) and python_binary(arch).is_file():
            debs = old["debs"]  # same sysroot: keep it, fetch only the wheels
            shutil.copytree(python_sysroot(arch), tmp / "sysroot", symlinks=True)
        else:
            debs = _fetch_sysroot(tmp / "sysroot", tmp / "debs", arch)
            shutil.rmtree(tmp / "debs")
        _write_cpuinfo(tmp / "sysroot")
        wheels = _fetch_site(tmp / "site", tmp / "wheels", requested, arch)
        shutil.rmtree(tmp / "wheels")
        doc: dict[str, Any] = {"debs_requested": list(a.debs), "debs": debs, "requested": requested, "wheels": wheels}
        if arch == "armv7":
            doc["iree_python"] = armv7_runtime.build_python_bindings(tmp / "sysroot", tmp / "site")
        _precompile(tmp, arch)
        (tmp / "manifest.json").write_text(json.dumps(doc, indent=1))
        tmp.chmod(0o755)
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def python_command(
    extra_path: Sequence[str | os.PathLike] = (), arch: str = "aarch64"
) -> tuple[list[str], dict[str, str]]:
    """The argv prefix and environment that run the ``arch`` Python under qemu (``argv + ["-c", ...]``).

    ``extra_path`` goes on ``PYTHONPATH`` after the emulated site folder. Raises when :func:`python_missing`.
    """
    why = python_missing(arch)
    if why:
        raise EdgeskipError(f"cannot run the {arch} Python: {why}")
    return _command(python_dir(arch), extra_path, arch)


def _command(
    root: Path, extra_path: Sequence[str | os.PathLike], arch: str = "aarch64"
) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment of the ``arch`` Python in ``root`` (which need not be in place yet)."""
    sysroot = root / "sysroot"
    # the host's paths mean nothing to it; a pycache prefix would bypass the precompiled .pyc files
    drop = (
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUSERBASE",
        "PYTHONPYCACHEPREFIX",
        "PYTHONSTARTUP",
        "PYTHONEXECUTABLE",
        "VIRTUAL_ENV",
        "QEMU_LD_PREFIX",
        "QEMU_SET_ENV",
        "QEMU_UNSET_ENV",
    )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        PYTHONPATH=os.pathsep.join([str(root / "site"), *map(str, extra_path)]),
        PYTHONHOME=str(sysroot / "usr"),  # found from argv[0] anyway; explicit is safer
        PYTHONNOUSERSITE="1",  # no ~/.local/lib/python3.11 (x86 packages)
        PYTHONDONTWRITEBYTECODE="1",
    )  # qemu -L could map new files to host paths; .pyc are precompiled
    qemu = ARMS[arch].qemu
    argv = [shutil.which(qemu) or qemu, "-L", str(sysroot), str(sysroot / "usr" / "bin" / f"python{PYTHON_VERSION}")]
    return argv, env


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgeskip.export.emulate")
    parser.add_argument("command", choices=["fetch", "fetch-python", "build-armv7"])
    parser.add_argument("--source", help="build-armv7: an IREE source snapshot folder or checkout")
    parser.add_argument("--force", action="store_true", help="build-armv7: rebuild an existing build")
    parser.add_argument("--arch", choices=sorted(PY_ARCHES), default="aarch64", help="fetch-python: which Python")
    args = parser.parse_args()  # a bad command line exits 2
    try:
        if args.command == "build-armv7":
            print(armv7_runtime.build(args.source, force=args.force))
        elif args.source or args.force:
            parser.error("--source and --force are for build-armv7")
        else:
            print(fetch() if args.command == "fetch" else fetch_python(arch=args.arch))
    except EdgeskipError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
