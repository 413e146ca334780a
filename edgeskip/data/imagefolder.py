"""Folder-per-class image trees (PNG/JPEG), decoded once and cached as .npz.

Layout: ``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg`` (official splits), or
``root/<class>/*.jpg`` (no test split; one is held out). Class index = sorted class-folder order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edgeskip.data.dataset import ArrayDataset
from edgeskip.errors import EdgeskipError
from edgeskip.utils.atomic import atomic_path

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (file, label) pairs of one folder-per-class tree."""
    if not root.is_dir():
        raise EdgeskipError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise EdgeskipError(f"image folder {root} has no class sub-folders")
    items = []
    for label, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in EXTENSIONS and f.is_file():
                items.append((f, label))
    if not items:
        raise EdgeskipError(f"image folder {root} contains no images ({', '.join(sorted(EXTENSIONS))})")
    return classes, items


def _cache_key(items: list[tuple[Path, int]], size: tuple[int, int] | None, channels: int) -> str:
    h = hashlib.sha256(f"{size}|{channels}".encode())
    for f, label in items:
        st = f.stat()
        h.update(f"{f.resolve()}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode(items: list[tuple[Path, int]], size: tuple[int, int] | None, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    mode = "RGB" if channels == 3 else "L"
    out: np.ndarray | None = None
    for i, (f, _) in enumerate(items):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if size is not None and im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise EdgeskipError(f"cannot decode image {f}: {e}") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(items), *a.shape), np.uint8)
        elif a.shape != out.shape[1:]:
            raise EdgeskipError(
                f"image {f} has size {a.shape[1]}x{a.shape[2]}, others {out.shape[2]}x{out.shape[3]}; pass --image-size"
            )
        out[i] = a
    assert out is not None
    return out


def load_tree(
    root: Path, cache_dir: Path | None, size: tuple[int, int] | None = None, channels: int = 3
) -> ArrayDataset:
    """Decode one class tree (cached by file list, sizes and mtimes)."""
    classes, items = scan(root)
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"imagefolder-{_cache_key(items, size, channels)}.npz"
        if cache.is_file():
            try:
                with np.load(cache) as z:
                    return ArrayDataset(z["x"], z["y"], classes)
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache: decode again and overwrite it
    x = _decode(items, size, channels)
    y = np.array([label for _, label in items], np.int64)
    if cache is not None:
        with atomic_path(cache, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x, y=y)
    return ArrayDataset(x, y, classes)


def load_imagefolder(
    root: str | os.PathLike, cache_dir: Path | None, size: tuple[int, int] | None = None, channels: int = 3
) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(train, test) from ``root``; test is None when the tree has no ``train/``+``test/`` split."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = load_tree(root / "train", cache_dir, size, channels)
        test = load_tree(root / "test", cache_dir, size, channels)
        if test.class_names != train.class_names:
            raise EdgeskipError(f"{root}/train and {root}/test have different class folders")
        return train, test
    return load_tree(root, cache_dir, size, channels), None
