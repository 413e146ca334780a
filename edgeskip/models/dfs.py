"""Dynamic Fractional Skipping (DFS; Shen et al., AAAI 2020) on the CIFAR ResNet backbone.

One LSTM gate shared by the gated blocks (SkipNet's RNNGate: a per-gate projection of the pooled block input,
one LSTM cell of hidden size 10 carried from gate to gate) projects to one logit per *option*: skip, each bit width
of ``GateConfig.bits`` (ascending), full precision (``GateConfig(kind="dfs")``). The softmax's argmax option runs, per input; in training the
forward pass uses the argmax one-hot and the backward pass the softmax (straight-through), as DFS does.

A k-bit option runs the block with its input activations and convolution weights quantised to k bits (affine,
per tensor, on the tensor's min..max widened to include 0, integer zero point; BatchNorm in float), simulated in float with straight-through
gradients, as DFS trains it. Activation ranges are the batch's in training and running averages in eval.

Granularity: the block, as for SkipNet here (DFS gates each layer). Cost: a k-bit block costs (k/32)^2 of its full
MACs (DFS's definition), a skipped one nothing; the computation percentage ``cp`` is the gated blocks' cost over
their full cost (the stem, the stage entries and the head always run and are not counted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeskip.models.config import ResNetConfig
from edgeskip.models.cost import breakdown
from edgeskip.models.gates import GateConfig, RNNGate, RNNGateCore
from edgeskip.models.resnet import CifarResNet

FULL_BITS = 32
MOMENTUM = 0.1


def option_costs(gate_cfg: GateConfig) -> tuple[float, ...]:
    """Fraction of a block's full MACs each DFS option costs: (k/32)^2 (DFS's definition), skip 0."""
    return tuple((k / FULL_BITS) ** 2 for k in gate_cfg.options)


def quant_params(bits: int, lo: torch.Tensor | float, hi: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point of ``bits``-bit affine quantisation of [lo, hi] widened to include 0, so that
    0 (a convolution's padding) is exact; the convention of ONNX ``QuantizeLinear`` and of integer kernels."""
    levels = 2**bits - 1
    lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    lo_t, hi_t = torch.minimum(lo_t, torch.zeros(())), torch.maximum(hi_t, torch.zeros(()))
    scale = torch.clamp(hi_t - lo_t, min=1e-8) / levels
    return scale, torch.clamp(torch.round(-lo_t / scale), 0, levels)


def fake_quant(x: torch.Tensor, bits: int, lo: torch.Tensor | float, hi: torch.Tensor | float) -> torch.Tensor:
    """``bits``-bit affine quantisation of ``x`` on [lo, hi] (see :func:`quant_params`), dequantised, with a
    straight-through gradient: ``(clamp(round(x / s) + z, 0, 2^bits - 1) - z) * s``."""
    scale, zp = quant_params(bits, lo, hi)
    q = (torch.clamp(torch.round(x / scale) + zp, 0, 2**bits - 1) - zp) * scale
    return x + (q - x).detach()


class QuantRanges(nn.Module):
    """Running min/max of one block's two convolution inputs, per bit width (NaN until trained)."""

    def __init__(self, bits: tuple[int, ...]) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("lo", torch.full((len(bits), 2), float("nan")))
        self.register_buffer("hi", torch.full((len(bits), 2), float("nan")))

    def range(self, x: torch.Tensor, bits: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.bits.index(bits)
        if not self.training:
            return self.lo[i, k], self.hi[i, k]
        lo, hi = x.detach().min(), x.detach().max()
        with torch.no_grad():
            for buf, v in ((self.lo, lo), (self.hi, hi)):
                buf[i, k] = v if torch.isnan(buf[i, k]) else (1 - MOMENTUM) * buf[i, k] + MOMENTUM * v
        return lo, hi


def residual_bits(block: nn.Module, ranges: QuantRanges, x: torch.Tensor, bits: int) -> torch.Tensor:
    """The residual branch ``bn2(conv2(relu(bn1(conv1(x)))))`` of ``block`` with its convolutions' inputs and
    weights quantised to ``bits``."""

    def conv(conv_: nn.Conv2d, h: torch.Tensor, k: int) -> torch.Tensor:
        lo, hi = ranges.range(h, bits, k)
        w = conv_.weight
        wq = fake_quant(w, bits, w.detach().min(), w.detach().max())
        return F.conv2d(fake_quant(h, bits, lo, hi), wq, None, conv_.stride, conv_.padding)

    h = F.relu(block.bn1(conv(block.conv1, x, 0)))
    return block.bn2(conv(block.conv2, h, 1))


def run_block_bits(block: nn.Module, ranges: QuantRanges, x: torch.Tensor, bits: int) -> torch.Tensor:
    """``block`` (identity shortcut) with its convolutions' inputs and weights quantised to ``bits``."""
    return F.relu(x + residual_bits(block, ranges, x, bits))


@dataclass
class DFSOutput:
    """Logits [N, classes], chosen option per input and gate [N, B_s], softmax [N, B_s, options], cp [N]."""

    logits: torch.Tensor
    choice: torch.Tensor
    probs: torch.Tensor
    cp: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class DFSResNet(CifarResNet):
    """CIFAR ResNet with a DFS gate before every gated block; ``run(x)`` returns everything, ``forward`` logits."""

    def __init__(self, cfg: ResNetConfig, gate_cfg: GateConfig) -> None:
        super().__init__(cfg)
        self.gate_cfg = gate_cfg
        n_opt = len(gate_cfg.options)
        self.gate_core = RNNGateCore(gate_cfg.embed_dim, gate_cfg.hidden_dim)
        self.gate_core.out = nn.Linear(gate_cfg.hidden_dim, n_opt)
        nn.init.zeros_(self.gate_core.out.weight)
        with torch.no_grad():  # a fresh DFS runs every block in full precision
            self.gate_core.out.bias.copy_(torch.tensor([0.0] * (n_opt - 1) + [2.0]))
        widths = [cfg.widths[b // cfg.blocks_per_stage] for b in cfg.gated_blocks]
        self.gates = nn.ModuleList(RNNGate(c, self.gate_core) for c in widths)
        self.ranges = nn.ModuleList(QuantRanges(gate_cfg.bits) for _ in widths)
        self.gate_of = {b: k for k, b in enumerate(cfg.gated_blocks)}
        bd = breakdown(cfg)
        macs = torch.tensor([float(bd.blocks[b]) for b in cfg.gated_blocks])
        self.register_buffer("block_share", macs / macs.sum(), persistent=False)
        self.register_buffer("option_cost", torch.tensor(option_costs(gate_cfg)), persistent=False)
        for block in self.blocks.values():  # the gates decide; no stochastic depth here
            block.sd_mode = "none"

    def forward(self, x: torch.Tensor, skip: object | None = None) -> torch.Tensor:
        if skip is not None:  # a fixed skip array, gates ignored: the weightless-gate view of the backbone
            return super().forward(x, skip)
        return self.run(x).logits

    def option_output(self, b: int, h: torch.Tensor, option: int) -> torch.Tensor:
        """Block ``b``'s output for one option index (0 skip, last full, others quantised)."""
        bits = self.gate_cfg.options[option]
        if bits == 0:
            return h
        block = self.blocks[str(b)]
        if bits == FULL_BITS:
            return block(h)
        return run_block_bits(block, self.ranges[self.gate_of[b]], h, bits)

    def run(self, x: torch.Tensor, probe: Callable[[int, torch.Tensor], None] | None = None) -> DFSOutput:
        """Training: every option's output mixed by the straight-through one-hot; eval: only the chosen
        option is computed, per input. ``probe(b, h)`` sees each gated block's input (calibration)."""
        state: list = [None]
        choices, probs = [], []
        n_opt = len(self.gate_cfg.options)

        def step(b: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            if probe is not None:
                probe(b, h)
            logit, state[0] = self.gates[self.gate_of[b]](h, state[0])
            logit = logit.view(-1, n_opt)
            p = F.softmax(logit, dim=1)
            c = p.argmax(1)
            choices.append(c)
            probs.append(p)
            if self.training:
                m = F.one_hot(c, n_opt).to(p.dtype) + p - p.detach()
                outs = torch.stack([self.option_output(b, h, o) for o in range(n_opt)], 1)
                return (m.view(*m.shape, 1, 1, 1) * outs).sum(1)
            new = h.clone()
            for o in c.unique().tolist():
                idx = (c == o).nonzero().flatten()
                new[idx] = self.option_output(b, h.index_select(0, idx), o)
            return new

        logits = self.walk(x, step)
        choice = torch.stack(choices, 1)
        prob = torch.stack(probs, 1)
        # differentiable cp: the straight-through one-hot's expected cost (forward: the chosen options' cost)
        hard = F.one_hot(choice, n_opt).to(prob.dtype) + prob - prob.detach()
        cp = (hard * self.option_cost).sum(2) @ self.block_share
        return DFSOutput(logits, choice, prob, cp)
