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
from torch.overrides import TorchFunctionMode

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


def stride_beyond_input(x: torch.Tensor, weight: torch.Tensor, stride=1) -> bool:
    """Whether a 2-D convolution strides past its whole input along a dimension its kernel spans (stride > input
    size, kernel > 1): the case whose bf16 weight gradient oneDNN gets wrong on the CPU (torch 2.13: the gradient
    holds stale memory, up to 1e38 or NaN, one run in two; ``bench/onednn_bf16_stride.py``)."""
    s = (stride, stride) if isinstance(stride, int) else tuple(stride)
    return any(s[i] > x.shape[-2 + i] and weight.shape[-2 + i] > 1 for i in (0, 1))


class Fp32WhereBf16IsWrong(TorchFunctionMode):
    """Inside bf16 autocast, runs each convolution that ``stride_beyond_input`` picks in fp32 (autocast off for that
    call; such a layer sees a 1x1 or 2x2 map, so the cost is small), every other op as autocast decides."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d and torch.is_autocast_enabled("cpu"):
            x, w = args[0] if args else kwargs["input"], args[1] if len(args) > 1 else kwargs["weight"]
            stride = args[3] if len(args) > 3 else kwargs.get("stride", 1)
            if stride_beyond_input(x, w, stride):
                with torch.autocast("cpu", enabled=False):
                    up = lambda a: a.float() if isinstance(a, torch.Tensor) else a  # noqa: E731
                    return func(*map(up, args), **{k: up(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


@contextlib.contextmanager
def _bf16(device: str):
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        if device != "cpu":
            yield
            return
        with Fp32WhereBf16IsWrong():
            yield


def autocast(amp: str, device: str = "cpu") -> contextlib.AbstractContextManager:
    """Autocast context for a resolved ``amp`` (a no-op for fp32). On the CPU, the convolutions oneDNN's bf16
    backward gets wrong run in fp32 (``Fp32WhereBf16IsWrong``)."""
    if amp == "bf16":
        return _bf16(device)
    return contextlib.nullcontext()
