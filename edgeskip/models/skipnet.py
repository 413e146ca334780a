"""SkipNet on the CIFAR ResNet backbone: a learned gate in front of every gated block.

The gates sit in front of the same blocks as edgeskip's weightless gates (every block except the
first of each stage), so both approaches skip the same candidates. Parameter names of the backbone
are unchanged (``blocks.4.conv1.weight``), so a trained backbone checkpoint loads directly; gate
parameters live under ``gates.*`` (and ``gate_core.*`` for the RNN gate's shared LSTM).

Three ways to run the gates:

- ``"hard"`` (inference): execute iff sigmoid(logit) >= threshold, per input; a skipped block is not
  computed for that input (rows are gathered and scattered).
- ``"st"`` (supervised pre-training, SkipNet Eq. 7): hard 0/1 decisions in the forward pass,
  gradients through the soft probabilities in the backward pass (straight-through).
- ``"sample"`` (hybrid RL): decisions drawn from Bernoulli(p); their log-probabilities are returned
  for REINFORCE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeskip.models.config import ResNetConfig
from edgeskip.models.cost import breakdown
from edgeskip.models.gates import GateConfig, gate_macs, make_gates
from edgeskip.models.resnet import CifarResNet

MODES = ("hard", "st", "sample")


@dataclass
class GatedOutput:
    """Logits [N, classes], decisions [N, B_s] (1 = executed), gate probabilities and the sampled decisions'
    log-probabilities: per gate [N, B_s] and summed [N]."""

    logits: torch.Tensor
    execute: torch.Tensor
    probs: torch.Tensor
    log_prob: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None


class SkipNetResNet(CifarResNet):
    """CIFAR ResNet with SkipNet gates; ``forward(x)`` returns logits, ``run(x, mode)`` everything."""

    def __init__(self, cfg: ResNetConfig, gate_cfg: GateConfig) -> None:
        super().__init__(cfg)
        self.gate_cfg = gate_cfg
        widths = [cfg.widths[b // cfg.blocks_per_stage] for b in cfg.gated_blocks]
        self.gates, core = make_gates(gate_cfg, widths)
        if core is not None:
            self.gate_core = core
        self.gate_of = {b: k for k, b in enumerate(cfg.gated_blocks)}
        for block in self.blocks.values():  # the backbone decides by itself; no stochastic depth here
            block.sd_mode = "none"

    def forward(self, x: torch.Tensor, skip: object | None = None) -> torch.Tensor:
        if skip is not None:  # a fixed skip array (gates ignored): the weightless-gate view of the backbone
            return super().forward(x, skip)
        return self.run(x, "st" if self.training else "hard").logits

    def run(self, x: torch.Tensor, mode: str = "hard") -> GatedOutput:
        """Forward pass with the gates deciding; ``mode`` as in the module docstring."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        thr = float(self.gate_cfg.threshold)
        state: list = [None]
        execs, probs, logps = [], [], []

        def step(b: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            logit, state[0] = self.gates[self.gate_of[b]](h, state[0])
            p = torch.sigmoid(logit)
            probs.append(p)
            if mode == "hard":
                e = p >= thr
                execs.append(e)
                idx = e.nonzero().flatten()
                if len(idx) == len(e):
                    return block(h)
                return h.index_copy(0, idx, block(h.index_select(0, idx))) if len(idx) else h
            if mode == "st":
                hard = (p >= thr).to(p.dtype)
                m = hard + p - p.detach()
            else:
                hard = torch.bernoulli(p.detach())
                m = hard
                logps.append(hard * torch.log(p.clamp_min(1e-6)) + (1 - hard) * torch.log((1 - p).clamp_min(1e-6)))
            execs.append(hard > 0.5)
            m4 = m.view(-1, 1, 1, 1)
            return m4 * block(h) + (1 - m4) * h

        logits = self.walk(x, step)
        n = x.shape[0]
        execute = torch.stack(execs, 1) if execs else torch.ones(n, 0, dtype=torch.bool)
        prob = torch.stack(probs, 1) if probs else torch.ones(n, 0)
        log_probs = torch.stack(logps, 1) if logps else None
        return GatedOutput(logits, execute, prob, None if log_probs is None else log_probs.sum(1), log_probs)


def gate_costs(cfg: ResNetConfig, gate_cfg: GateConfig) -> list[int]:
    """MACs of each gate (by gate index); a gate's input has the shape of its block's input."""
    h, w = cfg.input_size
    out = []
    for b in cfg.gated_blocks:
        s = b // cfg.blocks_per_stage
        f = 2**s
        out.append(gate_macs(gate_cfg, cfg.widths[s], -(-h // f), -(-w // f)))
    return out


def skipnet_macs(cfg: ResNetConfig, gate_cfg: GateConfig, execute: object) -> int:
    """MACs of one inference of one input with the given decisions, gates included (every gate runs)."""
    ex = [bool(v) for v in (execute.tolist() if hasattr(execute, "tolist") else execute)]
    bd = breakdown(cfg)
    off = {b for b, e in zip(cfg.gated_blocks, ex) if not e}
    return bd.total([i for i in range(cfg.num_blocks) if i not in off]) + sum(gate_costs(cfg, gate_cfg))
