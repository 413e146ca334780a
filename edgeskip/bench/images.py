"""Labelled images for the workload benchmark, as a plain .npz (never pickled), so ``edgeskip bench`` runs on
a runtime-only install: ``images`` float32 [N, C, H, W] normalised for the model, ``labels`` int [N]."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from edgeskip.errors import EdgeskipError
from edgeskip.manifest import Manifest
from edgeskip.utils.atomic import write_with


def save_images(dest: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    """Write ``images`` and ``labels`` atomically."""
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, images=images.astype(np.float32), labels=labels.astype(np.int64))

    write_with(dest, write)


def load_images(path: str | os.PathLike, manifest: Manifest, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` images and labels from ``path``, checked against the bundle's input and classes."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise EdgeskipError(f"{path} is not an images file (.npz with 'images' and 'labels'): {e}") from None
    c, h, w = manifest.input.chw
    if images.ndim != 4 or tuple(images.shape[1:]) != (c, h, w) or images.dtype != np.float32:
        raise EdgeskipError(f"{path}: images must be float32 [N, {c}, {h}, {w}], got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise EdgeskipError(f"{path}: labels must be {len(images)} integers")
    if len(images) == 0 or labels.min() < 0 or labels.max() >= len(manifest.class_names):
        raise EdgeskipError(f"{path}: needs at least one image and labels in 0..{len(manifest.class_names) - 1}")
    return images[:limit], labels[:limit]
