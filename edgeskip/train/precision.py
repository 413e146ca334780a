"""Mixed precision for the training step: bf16 autocast where the processor computes bf16 natively.

``amp`` is ``"auto"`` (bf16 where native, else fp32), ``"bf16"`` (refused where not native: an
emulated bf16 is slower than fp32, so it is never a silent choice) or ``"fp32"``.
"""

from __future__ import annotations

import contextlib
import platform
from functools import cache
from pathlib import Path

import torch

from edgeskip.errors import EdgeskipError
from edgeskip.recipes import AMP_CHOICES

# CPU flags that mean bf16 arithmetic in hardware (x86: AVX512-BF16 or AMX; aarch64: BF16 extension)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (read from /proc/cpuinfo; False where unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return any(f in flags for f in NATIVE_BF16_FLAGS) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_amp(amp: str, device: str = "cpu") -> str:
    """The precision a run uses: ``"bf16"`` or ``"fp32"`` (``"auto"`` resolved for ``device``)."""
    if amp not in AMP_CHOICES:
        raise EdgeskipError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if device == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = cpu_has_native_bf16()
    if amp == "auto":
        return "bf16" if native else "fp32"
    if amp == "bf16" and not native:
        where = "this GPU" if device == "cuda" else f"this CPU ({platform.processor() or platform.machine()})"
        raise EdgeskipError(
            f"--amp bf16: {where} has no native bf16 arithmetic (emulated bf16 is slower "
            "than fp32); use --amp fp32 or auto"
        )
    return amp


def autocast(amp: str, device: str = "cpu") -> contextlib.AbstractContextManager:
    """Autocast context for a resolved ``amp`` (a no-op for fp32)."""
    if amp == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()
