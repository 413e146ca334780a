"""IREE (llvm-cpu) import and compilation for named targets.

Flags: the best found on x86 for these networks (~9x faster than IREE's defaults on ResNet-110):
data tiling for matmuls and convolutions plus all micro-kernels. Run with the ``local-sync``
driver (``local-task`` adds a host wait per ``If`` gate; 32-bit ARM runtimes only have local-sync).

Static (``If``-free) functions are also converted to channels-last convolutions
(:data:`CHANNELS_LAST`, bench/README section 14): ONNX's NCHW convolutions codegen poorly on CPUs
without AVX-512, strided and 1x1 ones worst (a 1x1 stride-2 shortcut 12x slower). The pass cannot run
on the gated graph: inside an ``If`` it leaves an NHWC input with an FCHW filter, a convolution IREE
does not vectorise (15x slower), so it runs per function, by attribute, after input conversion.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from edgeskip.backends.iree import STACK_LIMIT_FLAG
from edgeskip.errors import EdgeskipError
from edgeskip.utils.atomic import atomic_path

COMMON_FLAGS = (
    "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu",
    "--iree-dispatch-creation-data-tiling",
    "--iree-dispatch-creation-experimental-set-data-tiling-ops=matmul",
    "--iree-dispatch-creation-experimental-set-data-tiling-ops=convolution",
    "--iree-llvmcpu-enable-ukernels=all",
)

# IREE 3.13 cannot build a dispatch that fuses a LayerNorm, a transpose and a convolution whose kernel covers its
# whole input map, under data tiling with a dynamic batch (ConvNeXt's last downsampling at 32x32 inputs):
# "'memref.alloca' op all stack allocations need to be hoisted" (bench/iree_unhoisted_alloca.py). compile retries
# such a target without data tiling; the target's flags in the manifest say so.
NO_DATA_TILING = "--iree-dispatch-creation-data-tiling=false"
# Data tiling per function. IREE's flag is module-wide, but its annotation pass (AnnotateDataTilingHints) leaves a
# function alone when any operation in it, the function included, already carries this hint. Whether the
# channels-last static functions run faster without depends on the model: on an AVX-512 host CIFAR ResNet-20's
# run 0.89x untiled at full depth, 0.83x with every block skipped, a ResNet-18 at 224x224 1.7x slower; the NCHW
# gated function needs the tiling (2x slower without). So the host's choice is measured (bench/README 14.4).
DATA_TILING_HINT = "iree.opt.data_tiling"
_UNHOISTED = re.compile(r"'memref\.alloca' op all stack allocations need to be hoisted")


@dataclass(frozen=True)
class Target:
    """A compilation target: LLVM triple, CPU and features, and any target-specific flags."""

    name: str
    triple: str | None
    cpu: str | None = None
    features: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)
    # False once IREE's channels-last pass failed on this build's graphs: later compiles go straight to NCHW
    channels_last: bool = True
    # False: the channels-last static functions are compiled without data tiling (DATA_TILING_HINT), the rest with
    # it; None: to be measured on this host (edgeskip.export.latency.IreeLatency), compiled tiled until then
    static_data_tiling: bool | None = True

    def flags(self) -> list[str]:
        tiled = NO_DATA_TILING not in self.extra
        out = [f for f in COMMON_FLAGS if tiled or not f.startswith("--iree-dispatch-creation-")]
        if self.triple:
            out.append(f"--iree-llvmcpu-target-triple={self.triple}")
        if self.cpu:
            out.append(f"--iree-llvmcpu-target-cpu={self.cpu}")
        if self.features:
            out.append(f"--iree-llvmcpu-target-cpu-features={self.features}")
        return out + list(self.extra)

    def without_data_tiling(self) -> Target:
        """This target with IREE's data tiling off (:data:`NO_DATA_TILING`)."""
        return self if NO_DATA_TILING in self.extra else dataclasses.replace(self, extra=(*self.extra, NO_DATA_TILING))

    def with_stack_limit(self, limit: int) -> Target:
        """This target with ``--iree-llvmcpu-stack-allocation-limit=limit`` (replacing any other)."""
        kept = tuple(f for f in self.extra if not f.startswith(STACK_LIMIT_FLAG + "="))
        return dataclasses.replace(self, extra=(*kept, f"{STACK_LIMIT_FLAG}={limit}"))


TARGETS: dict[str, Target] = {
    # the host measures whether its static functions run faster untiled; ARM targets keep data tiling (no ARM
    # hardware here to measure it on)
    "host": Target("host", None, cpu="host", static_data_tiling=None),
    "aarch64": Target("aarch64", "aarch64-linux-gnu", cpu="generic"),
    "aarch64-cortex-a53": Target("aarch64-cortex-a53", "aarch64-linux-gnu", cpu="cortex-a53"),
    "aarch64-cortex-a72": Target("aarch64-cortex-a72", "aarch64-linux-gnu", cpu="cortex-a72"),
    "aarch64-cortex-a76": Target("aarch64-cortex-a76", "aarch64-linux-gnu", cpu="cortex-a76"),
    # int8 dot products (SDOT, Armv8.2 +dotprod) and int8 matrix multiply (SMMLA, Armv8.6 +i8mm), e.g. Cortex-A78C,
    # Neoverse N2/V1: what IREE's int8 kernels on ARM use; qemu's default CPU runs both
    "aarch64-i8mm": Target("aarch64-i8mm", "aarch64-linux-gnu", cpu="generic", features="+neon,+dotprod,+i8mm"),
    # Odroid XU4 (Cortex-A15/A7): ARM32 rejects a bare CPU name in some IREE versions, so give features;
    # debug symbols off, or the module imports __aeabi_unwind_cpp_pr0 and the runtime refuses to load it.
    "odroid-xu4": Target(
        "odroid-xu4",
        "armv7a-linux-gnueabihf",
        features="+neon,+vfp4,+thumb2",
        extra=("--iree-llvmcpu-debug-symbols=false",),
    ),
}


CHANNELS_LAST = "iree-preprocessing-convert-conv-to-channels-last"


class IreeError(EdgeskipError):
    """IREE's importer or compiler could not build a module (one line: the tool's error or crash)."""


# IREE refuses a dispatch whose stack allocations exceed 32 KiB by default (timm's MobileNetV3 squeeze-excite with a
# dynamic batch asks for 145 KiB: bench/README section 12.7). compile retries with the limit it asked for, rounded
# up to a power of two, up to STACK_LIMIT_CAP: 1/8 of the smallest stack a dispatch runs on here, glibc's 8 MiB
# default for the calling thread (local-sync); local-task workers get a matching --task_worker_stack_size from
# the runtime (edgeskip.backends.iree.prepare_stack).
STACK_LIMIT_CAP = 1 << 20
_STACK_ASKED = re.compile(r"exceeded stack allocation limit of (\d+) bytes.*?Got (\d+) bytes")
log = logging.getLogger("edgeskip.compile")


STATIC_TILING = {"auto": None, "on": True, "off": False}


def with_host(targets: Sequence[Target]) -> list[Target]:
    """``targets`` with ``host`` first if missing: host modules are verified and timed on every build."""
    if "host" in [t.name for t in targets]:
        return list(targets)
    return [TARGETS["host"], *targets]


def with_static_tiling(targets: Sequence[Target], choice: str) -> list[Target]:
    """``targets`` (the host first if missing) with the static functions' data tiling set: ``auto`` measures it
    on the host (others keep it), ``on``/``off`` set it for every target."""
    if choice not in STATIC_TILING:
        raise EdgeskipError(f"static data tiling must be one of {', '.join(STATIC_TILING)}, got {choice!r}")
    full = with_host(targets)
    if choice == "auto":
        return [dataclasses.replace(t, static_data_tiling=None if t.name == "host" else True) for t in full]
    return [dataclasses.replace(t, static_data_tiling=STATIC_TILING[choice]) for t in full]


def parse_targets(text: str) -> list[Target]:
    """``"host,aarch64,odroid-xu4"`` -> targets; unknown names raise a one-line error."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in TARGETS]
    if bad or not names:
        raise EdgeskipError(f"unsupported target {', '.join(bad) or repr(text)}; choose from {', '.join(TARGETS)}")
    return [TARGETS[n] for n in dict.fromkeys(names)]


def _tool_error(what: str, proc: subprocess.CompletedProcess) -> IreeError:
    """One line: the tool's first error line; for a crash, the signal and the first line that says where (a tool
    killed by a signal prints LLVM's "Please report issues" banner and a stack dump, not an error)."""
    lines = [l.strip() for l in (proc.stderr or proc.stdout or "").splitlines() if l.strip()]
    if proc.returncode < 0 or any(l.startswith("Stack dump") for l in lines):
        try:
            why = f"crashed ({signal.Signals(-proc.returncode).name})" if proc.returncode < 0 else "crashed"
        except ValueError:
            why = f"crashed (signal {-proc.returncode})"
        cause = next((l for l in lines if "error" in l.lower() or "assert" in l.lower()), None)
        if cause is None:  # the pass it was in ("1. Running pass 'X' on ..."), else the first frame of the dump
            cause = next((l for l in lines if "Running pass" in l), next((l for l in lines if l.startswith("#0")), ""))
        cause = " ".join(cause.split())
        return IreeError(f"{what} {why}" + (f": {cause[:300]}" if cause else ""))
    msg = next((l for l in lines if "error" in l.lower()), lines[0] if lines else f"exit status {proc.returncode}")
    return IreeError(f"{what} failed: {msg[:300]}")


def import_onnx(
    onnx_path: str | os.PathLike, dest: str | os.PathLike, params: str | os.PathLike | None = None, rewrite: bool = True
) -> Path:
    """ONNX -> MLIR (torch dialect). With ``params``, weights go to an .irpa archive instead of the MLIR.

    ``--num-elements-threshold 100`` keeps small shape constants inline (ReduceMean's axes must stay constant).
    The graph goes in through :func:`edgeskip.export.iree_rewrites.for_iree` (stride-1 depthwise convolutions as
    shifted multiply-adds, which IREE runs 3x faster) unless ``rewrite`` is false.
    """
    import tempfile

    from edgeskip.export.iree_rewrites import for_iree

    dest = Path(dest)
    with tempfile.TemporaryDirectory(dir=dest.parent) as work, atomic_path(dest, suffix=".mlir") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "iree.compiler.tools.import_onnx",
            str(for_iree(onnx_path, Path(work)) if rewrite else onnx_path),
        ]
        cmd += ["-o", str(tmp)]
        if params is not None:
            cmd += ["--externalize-params", "--save-params-to", str(params), "--num-elements-threshold", "100"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise _tool_error(f"iree-import-onnx {onnx_path}", proc)
    return dest


def compiler_binary() -> str:
    """Path of ``iree-compile`` from the installed iree-base-compiler."""
    from iree.compiler.tools.binaries import find_tool

    return find_tool("iree-compile")


def compile_jobs() -> int:
    """Compiler processes run at once: ``EDGESKIP_COMPILE_JOBS``, else one per CPU core available (iree-compile
    keeps about one core busy on these small modules, so the others would idle)."""
    env = os.environ.get("EDGESKIP_COMPILE_JOBS", "")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise EdgeskipError(f"EDGESKIP_COMPILE_JOBS must be a positive integer, got {env!r}")
        return int(env)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Compiled(NamedTuple):
    """A compiled module and the target as it was compiled (a raised stack limit is in its flags)."""

    path: Path
    target: Target


def compile_many(
    jobs: Sequence[tuple[str | os.PathLike, Target, str | os.PathLike]], channels_last: Sequence[str] = ()
) -> list[Compiled]:
    """:func:`compile_module` for each (mlir, target, dest), :func:`compile_jobs` at a time; the first error
    raises."""
    out = compile_each(jobs, channels_last)
    for r in out:
        if isinstance(r, IreeError):
            raise r
    return out  # type: ignore[return-value]


def compile_each(
    jobs: Sequence[tuple[str | os.PathLike, Target, str | os.PathLike]], channels_last: Sequence[str] = ()
) -> list[Compiled | IreeError]:
    """:func:`compile_module` for each job, :func:`compile_jobs` at a time; a job IREE cannot compile gives its
    error in its place, and the others still compile."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job: tuple[str | os.PathLike, Target, str | os.PathLike]) -> Compiled | IreeError:
        try:
            return compile_module(*job, channels_last=channels_last)
        except IreeError as e:
            return e

    if len(jobs) <= 1 or compile_jobs() == 1:
        return [one(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=min(len(jobs), compile_jobs())) as pool:
        return list(pool.map(one, jobs))


def annotate_pipeline(text: str, functions: Sequence[str], pipeline: str, untiled: bool = False) -> str:
    """Input-phase MLIR (``--compile-to=input``) with ``pipeline`` attached to each of ``functions`` (its
    ``$async`` body and its wrapper), for IREE's attribute-based preprocessing; a missing function raises.
    ``untiled``: those functions also carry :data:`DATA_TILING_HINT`, so that data tiling passes them by."""
    attr = f'preprocessing_pipeline = #util.preprocessing_pipeline<"{pipeline}">, '
    if untiled:
        attr += f"{DATA_TILING_HINT}, "
    for fn in functions:
        found = False
        for name in (f"{fn}$async", fn):
            head = f"util.func public @{name}("
            start = text.find(head)
            if start < 0:
                continue
            found = True
            brace = text.find("attributes {", start)
            if brace < 0 or brace > text.find("\n", start):  # input conversion always writes one (iree.abi.stub)
                raise EdgeskipError(f"cannot set {pipeline} on function {name}: its signature has no attributes")
            at = brace + len("attributes {")
            text = text[:at] + attr + text[at:]
        if not found:
            raise EdgeskipError(f"cannot set {pipeline} on function {fn}: not in the module")
    return text


def _run_compiler(args: list[str], target: Target) -> None:
    proc = subprocess.run([compiler_binary(), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise _tool_error(f"iree-compile for {target.name}", proc)


def compile_mlir(
    mlir: str | os.PathLike,
    target: Target,
    dest: str | os.PathLike,
    extra: list[str] | None = None,
    channels_last: Sequence[str] = (),
) -> Path:
    """:func:`compile_module`'s path."""
    return compile_module(mlir, target, dest, extra, channels_last).path


def compile_module(
    mlir: str | os.PathLike,
    target: Target,
    dest: str | os.PathLike,
    extra: list[str] | None = None,
    channels_last: Sequence[str] = (),
) -> Compiled:
    """MLIR -> .vmfb for ``target``, written atomically; compiler errors raise a one-line error.

    Where iree-compile refuses a dispatch for its stack limit, it compiles again with the limit raised to the
    next power of two above what was asked, up to :data:`STACK_LIMIT_CAP`; where it cannot hoist a dispatch's
    stack allocation (:data:`NO_DATA_TILING`), again without data tiling. The returned target carries the flag.

    ``channels_last``: functions whose convolutions run channels-last (:data:`CHANNELS_LAST`; only
    ``If``-free functions): compiled in two phases, input conversion, then the rest with the pass
    attached to those functions. Where IREE's pass fails (it does on some graphs with a dynamic batch, e.g.
    MobileNetV2's: "'tensor.empty' op incorrect number of dynamic sizes"), the module is compiled as
    it is instead, and a warning names the target and the reason."""
    dest = Path(dest)
    try:
        return _compile_layouts(mlir, target, dest, extra or [], channels_last)
    except EdgeskipError as e:
        if _UNHOISTED.search(str(e)) and NO_DATA_TILING not in target.extra:
            log.warning("%s: a dispatch IREE cannot build under data tiling; compiling without it", target.name)
            return compile_module(mlir, target.without_data_tiling(), dest, extra, channels_last)
        asked = _STACK_ASKED.search(str(e))
        if asked is None:
            raise
        need = 1 << (int(asked.group(2)) - 1).bit_length()
        if need > STACK_LIMIT_CAP:
            raise IreeError(
                f"iree-compile for {target.name}: a dispatch needs {int(asked.group(2))} bytes of stack, more than "
                f"edgeskip allows ({STACK_LIMIT_CAP}); the model cannot be compiled for IREE"
            ) from e
        log.warning("%s: a dispatch needs %s bytes of stack; compiling with %s=%d", target.name, asked.group(2),
                    STACK_LIMIT_FLAG, need)  # fmt: skip
        return compile_module(mlir, target.with_stack_limit(need), dest, extra, channels_last)  # the limit only grows


def _compile_layouts(
    mlir: str | os.PathLike, target: Target, dest: Path, extra: list[str], channels_last: Sequence[str]
) -> Compiled:
    flags = [*target.flags(), *extra]
    if channels_last and target.channels_last:
        try:
            return Compiled(_compile(mlir, target, dest, flags, channels_last), target)
        except EdgeskipError as e:
            if _STACK_ASKED.search(str(e)):
                raise
            log.warning("channels-last compile for %s failed, compiling NCHW: %s", target.name, str(e)[-160:])
            target = dataclasses.replace(target, channels_last=False)
    return Compiled(_compile(mlir, target, dest, flags, ()), target)


def _compile(
    mlir: str | os.PathLike, target: Target, dest: Path, flags: list[str], channels_last: Sequence[str]
) -> Path:
    with atomic_path(dest, suffix=".vmfb") as tmp:
        source, phase = Path(mlir), []
        try:
            if channels_last:
                source = Path(str(tmp) + ".input.mlir")
                _run_compiler([str(mlir), *flags, "--compile-to=input", "-o", str(source)], target)
                untiled = target.static_data_tiling is False and NO_DATA_TILING not in target.extra
                source.write_text(annotate_pipeline(source.read_text(), channels_last, CHANNELS_LAST, untiled))
                phase = ["--compile-from=input"]
            _run_compiler([str(source), *flags, *phase, "-o", str(tmp)], target)
        finally:
            if channels_last:
                source.unlink(missing_ok=True)
    return dest
