"""Labelled images for the workload benchmark, as a plain .npz (never pickled), so ``edgeskip bench`` runs on
a runtime-only install: ``labels`` int [N] and either ``images`` float32 [N, C, H, W] normalised for the model
or ``pixels`` uint8 [N, C, H, W] (normalised on loading with the bundle's statistics; what bundles carry)."""

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


def save_pixels(dest: str | os.PathLike, pixels: np.ndarray, labels: np.ndarray) -> None:
    """Write uint8 ``pixels`` [N, C, H, W] and ``labels`` (a bundle's evaluation sample) atomically."""

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez_compressed(f, pixels=pixels.astype(np.uint8), labels=labels.astype(np.int64))

    write_with(dest, write)


def load_images(path: str | os.PathLike, manifest: Manifest, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` images and labels from ``path``, checked against the bundle's input and classes."""
    path = Path(path)
    c, h, w = manifest.input.chw
    try:
        with np.load(path, allow_pickle=False) as f:
            labels = f["labels"]
            if "pixels" in f.files:
                pixels = f["pixels"]
                if pixels.dtype != np.uint8 or pixels.shape[1:] != (c, h, w):
                    raise EdgeskipError(f"{path}: pixels must be uint8 [N, {c}, {h}, {w}]")
                mean = np.array(manifest.normalization.mean, np.float32)[None, :, None, None]
                std = np.array(manifest.normalization.std, np.float32)[None, :, None, None]
                images = ((pixels[:limit].astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
                labels = labels[:limit]
            else:
                images = f["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise EdgeskipError(
            f"{path} is not an images file (.npz with 'images' or 'pixels', and 'labels'): {e}"
        ) from None
    if images.ndim != 4 or tuple(images.shape[1:]) != (c, h, w) or images.dtype != np.float32:
        raise EdgeskipError(
            f"{path}: images must be float32 [N, {c}, {h}, {w}], got {images.dtype} {list(images.shape)}"
        )
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise EdgeskipError(f"{path}: labels must be {len(images)} integers")
    if len(images) == 0 or labels.min() < 0 or labels.max() >= len(manifest.class_names):
        raise EdgeskipError(f"{path}: needs at least one image and labels in 0..{len(manifest.class_names) - 1}")
    return images[:limit], labels[:limit]
