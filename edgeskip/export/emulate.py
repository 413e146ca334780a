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
:func:`python_command` gives the argv prefix and environment to run it.
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
_APT_HINT = "run as root: dpkg --add-architecture arm64 && apt-get update"


def python_dir() -> Path:
    """The folder of the aarch64 Python: ``sysroot/`` (Debian arm64 packages), ``site/`` (wheels), manifest."""
    return default_cache_dir() / f"aarch64-python{PYTHON_VERSION}"


def python_sysroot() -> Path:
    return python_dir() / "sysroot"


def python_site() -> Path:
    return python_dir() / "site"


def python_binary() -> Path:
    return python_sysroot() / "usr" / "bin" / f"python{PYTHON_VERSION}"


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


def python_missing() -> str | None:
    """Why an aarch64 Python cannot be run here, or None when everything is in place."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (apt-get install qemu-user-static)"
    fix = "python -m edgeskip.export.emulate fetch-python"
    if not python_binary().is_file() or not (python_sysroot() / "lib" / "ld-linux-aarch64.so.1").exists():
        return f"no aarch64 Python sysroot at {python_sysroot()} ({fix})"
    if not (python_sysroot() / "proc" / "cpuinfo").is_file():
        return f"the aarch64 Python sysroot has no /proc/cpuinfo for onnxruntime ({fix})"
    got = _manifest(python_dir())
    if not python_site().is_dir() or "wheels" not in got:
        return f"no aarch64 site-packages at {python_site()} ({fix})"
    for want in _pinned(RUNTIME_WHEELS):
        if want not in got.get("requested", []):
            return f"the aarch64 site-packages do not have {want} ({fix})"
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


def _fetch_sysroot(dest: Path, work: Path) -> list[str]:
    """``apt-get download`` :data:`DEB_PACKAGES` into ``work``, ``dpkg -x`` them into ``dest``; returns the .debs."""
    for tool in ("apt-get", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise EdgeskipError(f"{tool} not found: the aarch64 Python sysroot is built from Debian packages")
    arches = _run(["dpkg", "--print-foreign-architectures"], "dpkg --print-foreign-architectures").stdout.split()
    if "arm64" not in arches and _run(["dpkg", "--print-architecture"], "dpkg").stdout.strip() != "arm64":
        raise EdgeskipError(f"arm64 is not a dpkg architecture here ({_APT_HINT})")
    work.mkdir(parents=True)
    work.chmod(0o755)  # apt's download sandbox user (_apt) writes here
    try:
        _run(["apt-get", "download", "-q", *DEB_PACKAGES], "apt-get download", cwd=work)
    except EdgeskipError as e:
        raise EdgeskipError(f"{e} ({_APT_HINT})") from None
    debs = sorted(work.glob("*.deb"))
    if len(debs) != len(DEB_PACKAGES):
        raise EdgeskipError(f"apt-get download gave {len(debs)} packages for {len(DEB_PACKAGES)} ({_APT_HINT})")
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
        raise EdgeskipError(f"the arm64 packages have no usr/bin/python{PYTHON_VERSION}")
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


def _fetch_site(dest: Path, work: Path, requested: Sequence[str]) -> list[str]:
    """``pip download`` the cp311 aarch64 wheels of ``requested`` (with dependencies) and unpack them into ``dest``."""
    work.mkdir(parents=True)
    platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
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
        "pip download of the aarch64 wheels",
    )
    wheels = sorted(work.glob("*.whl"))
    if not wheels:
        raise EdgeskipError("pip download of the aarch64 wheels gave no wheels")
    dest.mkdir(parents=True)
    for w in wheels:
        _unpack_wheel(w, dest)
    return [w.name for w in wheels]


def _precompile(tmp: Path) -> None:
    """Byte-compile the stdlib and site of the new folder ``tmp`` (best effort): the emulated interpreter
    then neither compiles them on each start (~5 s under qemu) nor writes into the cache. With the host's
    CPython when it is a 3.11 too (same .pyc magic, native speed), else with the aarch64 one under qemu."""
    argv, env = [sys.executable], dict(os.environ)
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        argv, env = _command(tmp, ())
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
            str(python_dir()),
            str(tmp / "sysroot" / "usr" / "lib" / f"python{PYTHON_VERSION}"),
            str(tmp / "site"),
        ],
        env=env,
        capture_output=True,
    )


def fetch_python(packages: Sequence[str] = RUNTIME_WHEELS) -> Path:
    """Fetch the aarch64 Python sysroot and the aarch64 wheels of ``packages`` (see module doc); idempotent.

    Built in a temporary folder beside :func:`python_dir` and renamed into place, so an interrupted
    fetch never leaves a folder that looks complete. Returns :func:`python_dir`.
    """
    dest = python_dir()
    requested = _pinned(packages)
    old = _manifest(dest)
    if (
        old.get("requested") == requested
        and old.get("debs_requested") == list(DEB_PACKAGES)
        and python_missing() is None
    ):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        if old.get("debs_requested") == list(DEB_PACKAGES) and python_binary().is_file():
            debs = old["debs"]  # same sysroot: keep it, fetch only the wheels
            shutil.copytree(python_sysroot(), tmp / "sysroot", symlinks=True)
        else:
            debs = _fetch_sysroot(tmp / "sysroot", tmp / "debs")
            shutil.rmtree(tmp / "debs")
        _write_cpuinfo(tmp / "sysroot")
        wheels = _fetch_site(tmp / "site", tmp / "wheels", requested)
        shutil.rmtree(tmp / "wheels")
        _precompile(tmp)
        (tmp / "manifest.json").write_text(
            json.dumps(
                {"debs_requested": list(DEB_PACKAGES), "debs": debs, "requested": requested, "wheels": wheels}, indent=1
            )
        )
        tmp.chmod(0o755)
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.replace(dest, trash / dest.name)
            os.replace(tmp, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def python_command(extra_path: Sequence[str | os.PathLike] = ()) -> tuple[list[str], dict[str, str]]:
    """The argv prefix and environment that run the aarch64 Python under qemu (``argv + ["-c", ...]``).

    ``extra_path`` goes on ``PYTHONPATH`` after the aarch64 site folder. Raises when :func:`python_missing`.
    """
    why = python_missing()
    if why:
        raise EdgeskipError(f"cannot run the aarch64 Python: {why}")
    return _command(python_dir(), extra_path)


def _command(root: Path, extra_path: Sequence[str | os.PathLike]) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment of the aarch64 Python in ``root`` (which need not be in place yet)."""
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
    argv = [shutil.which(QEMU) or QEMU, "-L", str(sysroot), str(sysroot / "usr" / "bin" / f"python{PYTHON_VERSION}")]
    return argv, env


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgeskip.export.emulate")
    parser.add_argument("command", choices=["fetch", "fetch-python", "build-armv7"])
    parser.add_argument("--source", help="build-armv7: an IREE source snapshot folder or checkout")
    parser.add_argument("--force", action="store_true", help="build-armv7: rebuild an existing build")
    args = parser.parse_args()  # a bad command line exits 2
    try:
        if args.command == "build-armv7":
            print(armv7_runtime.build(args.source, force=args.force))
        elif args.source or args.force:
            parser.error("--source and --force are for build-armv7")
        else:
            print(fetch() if args.command == "fetch" else fetch_python())
    except EdgeskipError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
