"""SkipNet gates (Wang et al., ECCV 2018): small learned networks that decide, from the previous block's
output, whether to execute the next block.

- ``ffgate1`` (FFGate-I): 2x2 max-pool -> 3x3 conv -> BN -> ReLU -> 3x3 conv stride 2 -> BN -> ReLU ->
  global average pool -> 1x1 conv to one logit.
- ``ffgate2`` (FFGate-II): 3x3 conv stride 2 -> BN -> ReLU -> global average pool -> 1x1 conv.
- ``rnn`` (RNNGate): global average pool -> per-gate linear projection to ``embed_dim`` -> one LSTM cell
  (``hidden_dim``) shared by all gates, its state carried from gate to gate -> linear to one logit.
- ``dfs`` (Dynamic Fractional Skipping, :mod:`edgeskip.models.dfs`): the RNN gate projecting to one logit per
  option (skip, each of ``bits``, full precision).

Each gate returns a logit per input; the block is executed if sigmoid(logit) >= ``threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeskip.errors import EdgeskipError
from edgeskip.recipes import DFS_BITS, GATE_KINDS  # declared torch-free, for the CLI

State = tuple[torch.Tensor, torch.Tensor] | None


@dataclass(frozen=True)
class GateConfig:
    """Which gate, its decision threshold, the RNN gate's sizes (SkipNet: 10 and 10) and, for DFS, the bit
    widths of its options besides skip and full precision."""

    kind: str = "ffgate1"
    threshold: float = 0.5
    embed_dim: int = 10
    hidden_dim: int = 10
    bits: tuple[int, ...] = (8, 16)

    def __post_init__(self) -> None:
        if self.kind not in GATE_KINDS:
            raise EdgeskipError(f"gate kind must be one of {', '.join(GATE_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "bits", tuple(sorted(int(b) for b in self.bits)))
        if any(b not in DFS_BITS for b in self.bits) or len(set(self.bits)) != len(self.bits):
            raise EdgeskipError(
                f"DFS bit widths must be distinct values of {', '.join(map(str, DFS_BITS))}, got {list(self.bits)}"
            )
        if not 0.0 < float(self.threshold) < 1.0:
            raise EdgeskipError(f"gate threshold must be in (0, 1), got {self.threshold}")
        if self.embed_dim < 1 or self.hidden_dim < 1:
            raise EdgeskipError("RNN gate sizes must be >= 1")

    @property
    def options(self) -> tuple[int, ...]:
        """DFS: the bits each option runs a block at: 0 (skip), each of ``bits``, 32 (full precision)."""
        return (0, *self.bits, 32)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bits": list(self.bits)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise EdgeskipError(f"unknown gate config keys: {sorted(unknown)}")
        return cls(**d)


class CroppedConv2d(nn.Conv2d):
    """A padded convolution that, where its output is 1x1 and padding adds rows/columns the kernel never
    reads, pads and crops explicitly first: the same result, but iree-compile 3.13 rejects the implicit
    form (a 3x3 stride-2 conv on a 2x2 input fails with "inferred ... dimension #2 to be 4, but found 3")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        h, w = x.shape[-2:]
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if (oh, ow) != (1, 1) or (h + 2 * ph, w + 2 * pw) == (kh, kw):
            return super().forward(x)
        x = F.pad(x, (pw, pw, ph, ph))[..., :kh, :kw]
        return F.conv2d(x, self.weight, self.bias, self.stride, 0)


def _conv_bn_relu(ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(CroppedConv2d(ch, ch, 3, stride, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=False))


class FFGateI(nn.Module):
    """Feed-forward gate I (about 1/8 + 1/32 of a basic block's MACs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv1 = _conv_bn_relu(channels, 1)
        self.conv2 = _conv_bn_relu(channels, 2)
        self.linear = nn.Conv2d(channels, 1, 1)

    def forward(self, h: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        z = self.conv2(self.conv1(self.pool(h)))
        return self.linear(z.mean((2, 3), keepdim=True)).flatten(), state


class FFGateII(nn.Module):
    """Feed-forward gate II (about 1/8 of a basic block's MACs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, 2)
        self.linear = nn.Conv2d(channels, 1, 1)

    def forward(self, h: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        z = self.conv1(h)
        return self.linear(z.mean((2, 3), keepdim=True)).flatten(), state


class RNNGateCore(nn.Module):
    """The LSTM cell and output layer shared by all RNN gates."""

    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.lstm = nn.LSTMCell(embed_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, 1)


class RNNGate(nn.Module):
    """One RNN gate: its own projection, the shared core (held by reference, not registered twice)."""

    def __init__(self, channels: int, core: RNNGateCore) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, core.lstm.input_size)
        self._core = [core]  # a list keeps the shared core out of this module's parameters

    def forward(self, h: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        core = self._core[0]
        e = self.proj(h.mean((2, 3)))
        if state is None:
            zeros = e.new_zeros(e.shape[0], core.hidden_dim)
            state = (zeros, zeros)
        hx, cx = core.lstm(e, state)
        return core.out(hx).flatten(), (hx, cx)


INITIAL_LOGIT = 1.0  # sigmoid(1) = 0.73: every block executes at first, so training starts from the backbone


def make_gates(cfg: GateConfig, channels: list[int]) -> tuple[nn.ModuleList, nn.Module | None]:
    """One gate per entry of ``channels`` (the width at each gated block) and the shared core, if any.

    Output layers start at weight 0 and bias ``INITIAL_LOGIT``: a fresh SkipNet computes exactly its
    backbone, and gradients move the gates from there.
    """
    core = None
    if cfg.kind == "ffgate1":
        gates = nn.ModuleList(FFGateI(c) for c in channels)
        outs = [g.linear for g in gates]
    elif cfg.kind == "ffgate2":
        gates = nn.ModuleList(FFGateII(c) for c in channels)
        outs = [g.linear for g in gates]
    else:
        core = RNNGateCore(cfg.embed_dim, cfg.hidden_dim)
        gates = nn.ModuleList(RNNGate(c, core) for c in channels)
        outs = [core.out]
    for layer in outs:
        nn.init.zeros_(layer.weight)
        nn.init.constant_(layer.bias, INITIAL_LOGIT)
    return gates, core


def _conv_out(size: int, stride: int, k: int = 3, pad: int = 1) -> int:
    return (size + 2 * pad - k) // stride + 1


def gate_macs(cfg: GateConfig, channels: int, height: int, width: int) -> int:
    """MACs of one gate on a ``channels x height x width`` input (convolutions and linear layers)."""
    c = channels
    if cfg.kind == "ffgate1":
        h, w = height // 2, width // 2
        m = h * w * 9 * c * c
        h2, w2 = _conv_out(h, 2), _conv_out(w, 2)
        return m + h2 * w2 * 9 * c * c + c
    if cfg.kind == "ffgate2":
        h2, w2 = _conv_out(height, 2), _conv_out(width, 2)
        return h2 * w2 * 9 * c * c + c
    e, hd = cfg.embed_dim, cfg.hidden_dim
    outputs = len(cfg.options) if cfg.kind == "dfs" else 1
    return c * e + 4 * hd * (e + hd) + hd * outputs
