"""One entry point for every data set: official splits plus a seeded validation hold-out.

All design-time selection (sensitivity, Pareto) uses ``val``; ``test`` is only for reported figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeskip.data.cifar import SPECS, load_cifar
from edgeskip.data.dataset import ArrayDataset, Normalization, Splits
from edgeskip.data.digits import load_digits
from edgeskip.data.imagefolder import load_imagefolder
from edgeskip.errors import EdgeskipError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")


def default_cache_dir() -> Path:
    """``$EDGESKIP_CACHE`` or ``~/.cache/edgeskip``."""
    return Path(os.environ.get("EDGESKIP_CACHE", Path.home() / ".cache" / "edgeskip"))


def holdout(ds: ArrayDataset, fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Split ``ds`` into (rest, held-out) with a seeded, class-stratified draw."""
    if not 0.0 < fraction < 1.0:
        raise EdgeskipError(f"hold-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(ds.y):
        idx = np.flatnonzero(ds.y == c)
        k = int(round(len(idx) * fraction))
        held.append(rng.permutation(idx)[:k])
    held_idx = np.sort(np.concatenate(held))
    if len(held_idx) == 0 or len(held_idx) == len(ds):
        raise EdgeskipError(f"data set of {len(ds)} images is too small for a {fraction:.0%} hold-out")
    mask = np.ones(len(ds), bool)
    mask[held_idx] = False
    return ds.subset(np.flatnonzero(mask)), ds.subset(held_idx)


def load_splits(
    name: str = "digits",
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = None,
    download: bool = False,
) -> Splits:
    """Load data set ``name`` and return train/val/test splits with training-split normalisation.

    ``test_fraction`` is used only by data sets without an official test split (digits, a plain
    image folder). ``val_fraction`` is held out of the training data, seeded by ``seed``.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    test: ArrayDataset | None
    if name == "digits":
        train, test, ds_id = load_digits(), None, "digits"
    elif name in SPECS:
        if data_dir is None:
            data_dir = cache / name
        train, test = load_cifar(name, data_dir, allow_download=download)
        ds_id = name
    elif name == "imagefolder":
        if data_dir is None:
            raise EdgeskipError("imagefolder needs --data-dir pointing at a folder-per-class tree")
        train, test = load_imagefolder(data_dir, cache, image_size)
        ds_id = f"imagefolder:{Path(data_dir).resolve().name}"
    else:
        raise EdgeskipError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if test is None:
        train, test = holdout(train, test_fraction, seed + 1)
    train, val = holdout(train, val_fraction, seed)
    return Splits(ds_id, train, val, test, Normalization.fit(train))
