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

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class Target:
    """A compilation target: LLVM triple, CPU and features, and any target-specific flags."""

    name: str
    triple: str | None
    cpu: str | None = None
    features: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    def flags(self) -> list[str]:
        out = list(COMMON_FLAGS)
        if self.triple:
            out.append(f"--iree-llvmcpu-target-triple={self.triple}")
        if self.cpu:
            out.append(f"--iree-llvmcpu-target-cpu={self.cpu}")
        if self.features:
            out.append(f"--iree-llvmcpu-target-cpu-features={self.features}")
        return out + list(self.extra)


TARGETS: dict[str, Target] = {
    "host": Target("host", None, cpu="host"),
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
log = logging.getLogger("edgeskip.compile")


def parse_targets(text: str) -> list[Target]:
    """``"host,aarch64,odroid-xu4"`` -> targets; unknown names raise a one-line error."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in TARGETS]
    if bad or not names:
        raise EdgeskipError(f"unsupported target {', '.join(bad) or repr(text)}; choose from {', '.join(TARGETS)}")
    return [TARGETS[n] for n in dict.fromkeys(names)]


def _tool_error(what: str, proc: subprocess.CompletedProcess) -> EdgeskipError:
    lines = [l for l in (proc.stderr or proc.stdout or "").splitlines() if l.strip()]
    msg = next((l for l in lines if "error" in l.lower()), lines[0] if lines else f"exit status {proc.returncode}")
    return EdgeskipError(f"{what} failed: {msg.strip()[:300]}")


def import_onnx(onnx_path: str | os.PathLike, dest: str | os.PathLike, params: str | os.PathLike | None = None) -> Path:
    """ONNX -> MLIR (torch dialect). With ``params``, weights go to an .irpa archive instead of the MLIR.

    ``--num-elements-threshold 100`` keeps small shape constants inline (ReduceMean's axes must stay constant).
    """
    dest = Path(dest)
    cmd = [sys.executable, "-m", "iree.compiler.tools.import_onnx", str(onnx_path)]
    with atomic_path(dest, suffix=".mlir") as tmp:
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


def compile_many(
    jobs: Sequence[tuple[str | os.PathLike, Target, str | os.PathLike]], channels_last: Sequence[str] = ()
) -> list[Path]:
    """:func:`compile_mlir` for each (mlir, target, dest), :func:`compile_jobs` at a time; the first error raises."""
    from concurrent.futures import ThreadPoolExecutor

    if len(jobs) <= 1 or compile_jobs() == 1:
        return [compile_mlir(*j, channels_last=channels_last) for j in jobs]
    with ThreadPoolExecutor(max_workers=min(len(jobs), compile_jobs())) as pool:
        return list(pool.map(lambda j: compile_mlir(*j, channels_last=channels_last), jobs))


def annotate_pipeline(text: str, functions: Sequence[str], pipeline: str) -> str:
    """Input-phase MLIR (``--compile-to=input``) with ``pipeline`` attached to each of ``functions`` (its
    ``$async`` body and its wrapper), for IREE's attribute-based preprocessing; a missing function raises."""
    attr = f'preprocessing_pipeline = #util.preprocessing_pipeline<"{pipeline}">, '
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
    """MLIR -> .vmfb for ``target``, written atomically; compiler errors raise a one-line error.

    ``channels_last``: functions whose convolutions run channels-last (:data:`CHANNELS_LAST`; only
    ``If``-free functions): compiled in two phases, input conversion, then the rest with the pass
    attached to those functions. Where IREE's pass fails (it does on some graphs with a dynamic batch, e.g.
    MobileNetV2's: "'tensor.empty' op incorrect number of dynamic sizes"), the module is compiled as
    it is instead, and a warning names the target and the reason."""
    dest = Path(dest)
    flags = [*target.flags(), *(extra or [])]
    if channels_last:
        try:
            return _compile(mlir, target, dest, flags, channels_last)
        except EdgeskipError as e:
            log.warning("channels-last compile for %s failed, compiling NCHW: %s", target.name, str(e)[-160:])
    return _compile(mlir, target, dest, flags, ())


def _compile(
    mlir: str | os.PathLike, target: Target, dest: Path, flags: list[str], channels_last: Sequence[str]
) -> Path:
    with atomic_path(dest, suffix=".vmfb") as tmp:
        source, phase = Path(mlir), []
        try:
            if channels_last:
                source = Path(str(tmp) + ".input.mlir")
                _run_compiler([str(mlir), *flags, "--compile-to=input", "-o", str(source)], target)
                source.write_text(annotate_pipeline(source.read_text(), channels_last, CHANNELS_LAST))
                phase = ["--compile-from=input"]
            _run_compiler([str(source), *flags, *phase, "-o", str(tmp)], target)
        finally:
            if channels_last:
                source.unlink(missing_ok=True)
    return dest
