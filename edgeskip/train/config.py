"""Training and data settings, stored in every checkpoint so a run can be resumed and reproduced."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgeskip.data.dataset import Splits
from edgeskip.data.registry import load_splits
from edgeskip.errors import EdgeskipError
from edgeskip.recipes import AMP_CHOICES, RECIPE_NAMES

SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class DataSpec:
    """How to load the data set again (for ``pareto``, reports and resume)."""

    name: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    image_size: tuple[int, int] | None = None
    download: bool = False

    def load(self, cache_dir: str | None = None) -> Splits:
        return load_splits(
            self.name,
            self.data_dir,
            self.val_fraction,
            self.test_fraction,
            self.seed,
            cache_dir,
            self.image_size,
            self.download,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        d = dict(d)
        if d.get("image_size"):
            d["image_size"] = tuple(d["image_size"])
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """SGD recipe. ``augment=None`` means: on for 3-channel images of at least 32x32."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool | None = None
    cutout: int = 0  # side of the Cutout square in pixels (0: off); applies with augment
    seed: int = 0
    amp: str = "auto"
    recipe: str = ""
    compile: bool = False
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.amp not in AMP_CHOICES:
            raise EdgeskipError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.recipe and self.recipe not in RECIPE_NAMES:
            raise EdgeskipError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPE_NAMES)}")
        if self.world_size < 1:
            raise EdgeskipError(f"world size must be >= 1, got {self.world_size}")
        if self.epochs < 1:
            raise EdgeskipError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise EdgeskipError(f"batch size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise EdgeskipError(f"learning rate must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise EdgeskipError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.cutout < 0:
            raise EdgeskipError(f"cutout must be a square side in pixels >= 0 (0: off), got {self.cutout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise EdgeskipError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["milestones"] = tuple(d.get("milestones", (0.5, 0.75)))
        d.setdefault("amp", "fp32")  # checkpoints from before mixed precision trained in fp32
        return cls(**d)
