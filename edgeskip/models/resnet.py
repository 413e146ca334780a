"""CIFAR-style ResNet (depth 6n+2) with stochastic depth and weightless skip gates.

Blocks live in an ``nn.ModuleDict`` keyed by their *original* global index, so parameter names
(``blocks.4.conv1.weight``) stay the same when blocks are removed: a static network with some
blocks removed shares parameter names with the full one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeskip.errors import EdgeskipError
from edgeskip.models.blocknet import BlockNet
from edgeskip.models.config import ResNetConfig
from edgeskip.models.quant import BlockQuant, Int8Block, Int8Linear, Int8Stem, RestQuant
from edgeskip.models.stochastic_depth import residual
from edgeskip.skip import INT8, REST8, normalize_skip


class PadShortcut(nn.Module):
    """Option A shortcut: spatial subsampling by ``stride`` and zero padding of new channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class BasicBlock(nn.Module):
    """Post-activation basic block: relu(shortcut(x) + bn(conv(relu(bn(conv(x))))))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str, p_survive: float, sd_mode: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride == 1 and in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "pad":
            self.shortcut = PadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.p_survive = float(p_survive)
        self.sd_mode = sd_mode

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch F(x)."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual(x, self.shortcut(x), self.branch, F.relu, self.p_survive, self.sd_mode, self.training)


class CifarResNet(BlockNet):
    """ResNet for small images; ``forward(x, skip)`` bypasses gated blocks whose skip entry is 0.

    A bypassed block is not computed at all: its input is non-negative (output of a ReLU) and its
    shortcut is the identity, so ``relu(x + 0) == x`` and the block reduces to nothing. ``skip`` may be an
    option array (:mod:`edgeskip.skip`): an 8 runs the block's int8 variant (:meth:`attach_int8`).
    """

    def __init__(self, cfg: ResNetConfig, keep: Iterable[int] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        w1, w2, w3 = cfg.widths
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True)
        )
        n = cfg.blocks_per_stage
        probs = cfg.survival_probs() if cfg.sd_mode != "none" else [1.0] * cfg.num_blocks
        keep_set = set(range(cfg.num_blocks)) if keep is None else set(keep)
        blocks: dict[str, nn.Module] = {}
        in_ch = w1
        for s, width in enumerate(cfg.widths):
            for b in range(n):
                idx = s * n + b
                stride = 2 if (s > 0 and b == 0) else 1
                block = BasicBlock(in_ch, width, stride, cfg.shortcut, probs[idx], cfg.sd_mode)
                in_ch = width
                if idx in keep_set:
                    blocks[str(idx)] = block
        self.blocks = nn.ModuleDict(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, cfg.num_classes)
        self.int8: dict[int, Int8Block] = {}  # not submodules: derived from the weights, never in a state dict
        self.int8_rest: dict[str, nn.Module] | None = None  # "stem", "fc" and the ungated blocks' str(index)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if not self.cfg.zero_init_last:
            return
        for block in self.blocks.values():
            nn.init.zeros_(block.bn2.weight)  # zero-init last BN: each block starts as the identity (timm)

    def attach_int8(self, calibration: Mapping[int, BlockQuant]) -> None:
        """Build the int8 variant of each calibrated gated block (global index -> its activation scales)."""
        gated = set(self.cfg.gated_blocks)
        for b, q in calibration.items():
            if int(b) not in gated or str(int(b)) not in self.blocks:
                raise EdgeskipError(f"block {b} is not a gated block of this network: it has no int8 variant")
            self.int8[int(b)] = Int8Block(self.blocks[str(int(b))].eval(), q)

    def attach_int8_rest(self, q: RestQuant) -> None:
        """Build the int8 variants of the rest of the network (issue #34): the stem, every ungated block (a stage's
        entry block) and the classifier."""
        gated = set(self.cfg.gated_blocks)
        ungated = [b for b in self.block_ids if b not in gated]
        if sorted(q.blocks) != ungated:
            raise EdgeskipError(f"int8 calibration of the rest names blocks {sorted(q.blocks)}, not {ungated}")
        rest: dict[str, nn.Module] = {"stem": Int8Stem(self.stem.eval(), q.stem_x, q.stem_y)}
        rest.update({str(b): Int8Block(self.blocks[str(b)].eval(), q.blocks[b]) for b in ungated})
        rest["fc"] = Int8Linear(self.fc, q.head)
        self.int8_rest = rest
        self.__dict__.pop("_rest_view", None)  # BlockNet.ends' view over the previous variants

    def variant(self, index: int, option: int) -> nn.Module:
        if option == REST8 and self.int8_rest is not None and str(index) in self.int8_rest:
            return self.int8_rest[str(index)]
        if option != INT8 or index not in self.int8:
            raise EdgeskipError(f"block {index} has no int8 variant (calibrate it first)")
        return self.int8[index]

    def rest_modules(self) -> tuple[nn.Module, dict[str, nn.Module]] | None:
        if self.int8_rest is None:
            return None
        return self.int8_rest["stem"], {"pool": self.pool, "fc": self.int8_rest["fc"]}

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(h), 1))

    def head_modules(self) -> dict[str, nn.Module]:
        return {"pool": self.pool, "fc": self.fc}


def remove_blocks(model: CifarResNet, skip: Sequence[int] | object) -> CifarResNet:
    """A static copy of ``model`` with the bypassed gated blocks removed (weights shared by value)."""
    s = normalize_skip(skip, model.cfg.num_gates)
    executed = model.executed_blocks(s)
    static = CifarResNet(model.cfg, keep=executed)
    kept = {str(i) for i in executed}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.") or k.split(".")[1] in kept}
    static.load_state_dict(state, strict=True)
    static.train(model.training)
    return static
