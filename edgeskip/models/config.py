"""Architecture description of a CIFAR-style ResNet: everything needed to rebuild it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgeskip.errors import EdgeskipError
from edgeskip.recipes import SD_SCOPES

SHORTCUTS = ("pad", "proj")
SD_MODES = ("batch", "row", "none")


def _validate_common(cfg: ResNetConfig | NetConfig) -> None:
    """Checks every model description shares: survival, SD mode, class count, input shape."""
    if not (0.0 < float(cfg.p_last) <= 1.0):
        raise EdgeskipError(f"p_L (survival probability of the last block) must be in (0, 1], got {cfg.p_last}")
    if cfg.sd_mode not in SD_MODES:
        raise EdgeskipError(f"stochastic depth mode must be one of {SD_MODES}, got {cfg.sd_mode!r}")
    if cfg.num_classes < 2:
        raise EdgeskipError(f"num_classes must be >= 2, got {cfg.num_classes}")
    if cfg.in_channels < 1 or len(cfg.input_size) != 2 or min(cfg.input_size) < 1:
        raise EdgeskipError(f"bad input shape: channels={cfg.in_channels} size={cfg.input_size}")


@dataclass(frozen=True)
class ResNetConfig:
    """A CIFAR ResNet of depth 6n+2 (He et al. 2016, Sec. 4.2) with stochastic depth settings.

    ``shortcut`` at stage transitions: ``"pad"`` (option A: stride-2 subsample + zero channel
    padding, parameter-free, as in He et al. and Huang et al.) or ``"proj"`` (option B: 1x1 conv + BN).
    ``sd_mode``: ``"batch"`` drops a residual branch for the whole mini-batch (Huang et al. 2016;
    the dropped branch is not computed), ``"row"`` per sample, ``"none"`` for the conventional baseline.
    ``p_last`` is the survival probability p_L of the last block (linear decay from 1).
    ``sd_scope``: ``"all"`` drops every block's branch in training (Huang et al.), ``"gated"`` only the
    branches of gated blocks (the ones skipped at inference); survival still decays with block position.
    ``zero_init_last`` zero-initialises each block's last BN scale, so every block starts as the identity
    (off by default: on CIFAR-10 it cost 3.1 points of validation accuracy after 10 epochs; bench/README).
    """

    depth: int = 20
    num_classes: int = 10
    in_channels: int = 3
    input_size: tuple[int, int] = (32, 32)
    widths: tuple[int, int, int] = (16, 32, 64)
    shortcut: str = "pad"
    sd_mode: str = "batch"
    p_last: float = 0.5
    zero_init_last: bool = False
    sd_scope: str = "all"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "widths", tuple(int(v) for v in self.widths))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`EdgeskipError` on an invalid architecture."""
        if not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise EdgeskipError(
                f"depth must be of the form 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {self.depth}"
            )
        if self.shortcut not in SHORTCUTS:
            raise EdgeskipError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        if self.sd_scope not in SD_SCOPES:
            raise EdgeskipError(f"stochastic depth scope must be one of {SD_SCOPES}, got {self.sd_scope!r}")
        _validate_common(self)
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise EdgeskipError(f"widths must be three positive ints, got {self.widths}")

    @property
    def name(self) -> str:
        return f"edgeskip:resnet{self.depth}"

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @property
    def num_blocks(self) -> int:
        return 3 * self.blocks_per_stage

    @property
    def gated_blocks(self) -> tuple[int, ...]:
        """Global indices of the blocks that carry a gate: every block except the first of each stage."""
        n = self.blocks_per_stage
        return tuple(i for i in range(self.num_blocks) if i % n != 0)

    @property
    def gated_names(self) -> tuple[str, ...]:
        """Module path of each gated block (``blocks.4``)."""
        return tuple(f"blocks.{b}" for b in self.gated_blocks)

    @property
    def num_gates(self) -> int:
        """B_s = blocks - stages."""
        return self.num_blocks - 3

    def survival_probs(self) -> list[float]:
        """Linear decay rule (Huang et al. 2016): p_l = 1 - l/L (1 - p_L), l = 1..L (1 for ungated blocks
        when ``sd_scope`` is ``"gated"``)."""
        L = self.num_blocks
        gated = set(self.gated_blocks) if self.sd_scope == "gated" else set(range(L))
        return [1.0 - (l / L) * (1.0 - float(self.p_last)) if l - 1 in gated else 1.0 for l in range(1, L + 1)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise EdgeskipError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class NetConfig:
    """Any other network (torchvision, timm, a user factory; :mod:`edgeskip.models.zoo`) with its gated blocks.

    ``blocks`` are the module paths of the gated blocks (residual blocks with an identity shortcut) in the
    source model; ``num_blocks`` and ``gated_blocks`` describe the chain :mod:`edgeskip.models.chain` cuts the
    traced model into (gated blocks and the segments between them); all three are filled in by
    :func:`edgeskip.models.chain.resolve` and checked whenever the network is rebuilt.
    Stochastic depth drops the branches of the gated blocks, survival decaying linearly over them to ``p_last``.
    """

    model: str
    num_classes: int = 10
    in_channels: int = 3
    input_size: tuple[int, int] = (32, 32)
    kwargs: dict[str, Any] = field(default_factory=dict)
    blocks: tuple[str, ...] = ()
    sd_mode: str = "batch"
    p_last: float = 0.5
    num_blocks: int = 0
    gated_blocks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "blocks", tuple(str(b) for b in self.blocks))
        object.__setattr__(self, "gated_blocks", tuple(int(b) for b in self.gated_blocks))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`EdgeskipError` on an invalid description."""
        from edgeskip.models.zoo import parse_model

        if parse_model(self.model)[0] == "edgeskip":
            raise EdgeskipError(f"{self.model} is the built-in ResNet: describe it with ResNetConfig")
        _validate_common(self)
        for k, v in self.kwargs.items():
            scalars = (int, float, str, bool)
            if k in ("num_classes", "in_channels", "in_chans") or not (
                isinstance(v, scalars) or (isinstance(v, list) and all(isinstance(e, scalars) for e in v))
            ):
                raise EdgeskipError(
                    f"model argument {k}={v!r}: give scalars or lists of them, and not the class or "
                    f"channel count (they come from the data)"
                )

    @property
    def num_gates(self) -> int:
        return len(self.gated_blocks)

    @property
    def gated_names(self) -> tuple[str, ...]:
        """Module path of each gated block in the source model (``layer1.1``)."""
        return self.blocks

    @property
    def resolved(self) -> bool:
        return self.num_blocks > 0

    @property
    def name(self) -> str:
        return self.model

    def survival_probs_for(self, L: int) -> list[float]:
        """p_l = 1 - l/L (1 - p_L) over the L gated blocks in the order the network runs them, l = 1..L."""
        return [1.0 - (l / L) * (1.0 - float(self.p_last)) for l in range(1, L + 1)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["blocks"] = list(self.blocks)
        d["gated_blocks"] = list(self.gated_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise EdgeskipError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


ModelConfig = ResNetConfig | NetConfig


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """The model description stored in a checkpoint, Pareto document or manifest."""
    return NetConfig.from_dict(d) if "model" in d else ResNetConfig.from_dict(d)
