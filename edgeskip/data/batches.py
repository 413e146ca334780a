"""Batch iteration over in-memory data sets, with seeded shuffling and 32x32-style augmentation."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from edgeskip.data.dataset import ArrayDataset, Normalization, to_float


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: random crop with ``pad`` zero padding, horizontal flip."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def iterate(
    ds: ArrayDataset,
    norm: Normalization,
    batch_size: int,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (images, labels) batches; deterministic for a given ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    n = len(ds)
    order = torch.randperm(n, generator=gen).numpy() if shuffle else np.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = np.sort(order[i : i + batch_size]) if not shuffle else order[i : i + batch_size]
        xb = to_float(ds.x[idx])
        if augment:
            xb = random_crop_flip(xb, gen)
        yield norm.apply(xb), torch.from_numpy(ds.y[idx])


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`iterate` yields for ``n`` items."""
    if drop_last and n >= batch_size:
        return n // batch_size
    return (n + batch_size - 1) // batch_size
