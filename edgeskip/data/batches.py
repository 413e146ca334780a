"""Batch iteration over in-memory data sets, with seeded shuffling and 32x32-style augmentation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from edgeskip.data.dataset import ArrayDataset, Normalization, to_float


def random_crop_flip(
    x: torch.Tensor | _Rows, gen: torch.Generator, pad: int = 4, rows: slice = slice(None)
) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: random crop with ``pad`` zero padding, horizontal flip.

    The random draws are made for the whole batch ``x`` describes; only ``x[rows]`` is transformed
    and returned (a data-parallel rank draws what the single-process run draws and keeps its shard).
    """
    oy = torch.randint(0, 2 * pad + 1, (len(x),), generator=gen)[rows]
    ox = torch.randint(0, 2 * pad + 1, (len(x),), generator=gen)[rows]
    flip = torch.rand(len(x), generator=gen)[rows] < 0.5
    x = x[rows]
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    r = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    col = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], r, col]
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def cutout(x: torch.Tensor, gen: torch.Generator, size: int, n: int, rows: slice = slice(None)) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) on a normalised batch: one ``size`` x ``size`` square per image set to 0
    (the data mean), its centre uniform over the image, so the square may be clipped at the border.

    The centres are drawn for the whole batch of ``n`` images; ``x`` holds its ``rows`` (as in
    :func:`random_crop_flip`).
    """
    h, w = x.shape[-2:]
    cy = torch.randint(0, h, (n,), generator=gen)[rows]
    cx = torch.randint(0, w, (n,), generator=gen)[rows]
    lo = size // 2
    ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
    in_y = (ys >= (cy[:, None] - lo)) & (ys < (cy[:, None] - lo + size))  # (n, h)
    in_x = (xs >= (cx[:, None] - lo)) & (xs < (cx[:, None] - lo + size))  # (n, w)
    hole = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # (n, 1, h, w)
    return x.masked_fill(hole, 0.0)


def iterate(
    ds: ArrayDataset,
    norm: Normalization,
    batch_size: int,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    shard: tuple[int, int] = (0, 1),
    cutout_size: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (images, labels) batches; deterministic for a given ``seed``.

    ``cutout_size`` > 0 (with ``augment``) adds :func:`cutout` after normalisation.

    ``shard=(rank, world)`` yields rank's equal share of each batch (data-parallel training): the
    shuffling and augmentation draws are those of the whole batch, so the union over ranks is the
    single-process batch.
    """
    rank, world = shard
    gen = torch.Generator().manual_seed(seed)
    n = len(ds)
    order = torch.randperm(n, generator=gen).numpy() if shuffle else np.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = np.sort(order[i : i + batch_size]) if not shuffle else order[i : i + batch_size]
        per = len(idx) // world
        rows = slice(rank * per, (rank + 1) * per if rank < world - 1 else None)  # the last rank takes a remainder
        if augment:
            # draws for the whole batch (same on every rank), pixels only for this rank's rows
            xb = norm.apply(random_crop_flip(_Rows(ds.x, idx), gen, rows=rows))
            if cutout_size:
                xb = cutout(xb, gen, cutout_size, len(idx), rows)
        else:
            xb = norm.apply(to_float(ds.x[idx[rows]]))
        yield xb, torch.from_numpy(ds.y[idx[rows]])


class _Rows:
    """Lazy view of ``x[idx]``: its length, and float images for a slice of it."""

    def __init__(self, x: np.ndarray, idx: np.ndarray) -> None:
        self.x, self.idx = x, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return to_float(self.x[self.idx[rows]])


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`iterate` yields for ``n`` items."""
    if drop_last and n >= batch_size:
        return n // batch_size
    return (n + batch_size - 1) // batch_size
