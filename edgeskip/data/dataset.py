"""In-memory data set containers. Images are stored [N, C, H, W], uint8 (0..255) or float32 (0..1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgeskip.errors import EdgeskipError


@dataclass
class ArrayDataset:
    """Images ``x`` [N, C, H, W] (uint8 or float32 in [0, 1]) and integer labels ``y`` [N]."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise EdgeskipError(f"images must be [N, C, H, W], got shape {self.x.shape}")
        if len(self.x) != len(self.y):
            raise EdgeskipError(f"{len(self.x)} images but {len(self.y)} labels")
        if len(self.x) == 0:
            raise EdgeskipError("data set is empty")
        self.y = self.y.astype(np.int64)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> ArrayDataset:
        return ArrayDataset(self.x[idx], self.y[idx], self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]


def to_float(x: np.ndarray) -> torch.Tensor:
    """Convert stored images to a float32 tensor in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std, computed on the training split and carried with the model."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, ds: ArrayDataset, chunk: int = 4096) -> Normalization:
        c = ds.x.shape[1]
        s = np.zeros(c, np.float64)
        s2 = np.zeros(c, np.float64)
        n = 0
        for i in range(0, len(ds), chunk):
            xb = to_float(ds.x[i : i + chunk]).double()
            s += xb.sum(dim=(0, 2, 3)).numpy()
            s2 += (xb * xb).sum(dim=(0, 2, 3)).numpy()
            n += xb.shape[0] * xb.shape[2] * xb.shape[3]
        mean = s / n
        std = np.sqrt(np.maximum(s2 / n - mean * mean, 1e-12))
        return cls(tuple(float(v) for v in mean), tuple(float(max(v, 1e-3)) for v in std))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(tuple(d["mean"]), tuple(d["std"]))


@dataclass
class Splits:
    """Train / validation / test splits of one data set, with its id and normalisation."""

    dataset_id: str
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    norm: Normalization

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.train.shape
