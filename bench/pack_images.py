"""Pack an image-folder tree (its encoded files, byte for byte) into one .npz, and unpack it elsewhere.

The device machine that trains the big CIFAR models receives the working tree and nothing beside it, at most
64 MiB: CIFAR-10's 60,000 JPEGs take 236 MB on disk as files (4 KiB blocks) but 52.7 MB as bytes. The pack
holds the bytes, the relative paths and nothing executable (loaded with ``allow_pickle=False``); unpacking
writes the same tree, so ``--dataset imagefolder`` reads it exactly as it reads the original (the same sorted
file order, the same validation hold-out, the same data set id when the folder keeps its name).

    python bench/pack_images.py pack ../shared/datasets/cifar10-jpeg .gpu/cifar10-jpeg.npz
    python bench/pack_images.py unpack .gpu/cifar10-jpeg.npz /tmp/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def pack(root: Path, out: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        sys.exit(f"error: no images under {root}")
    blobs = [p.read_bytes() for p in files]
    offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
    names = np.array([str(p.relative_to(root)).encode() for p in files])  # bytes: 1 byte a character
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        np.savez(fh, data=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets, names=names)
    tmp.replace(out)
    print(f"{len(files)} files, {offsets[-1] / 2**20:.1f} MiB -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def unpack(pack_file: Path, dest: Path) -> None:
    with np.load(pack_file, allow_pickle=False) as z:
        data, offsets, names = z["data"], z["offsets"], z["names"]
    for i, name in enumerate(names):
        rel = Path(name.decode())
        if rel.is_absolute() or ".." in rel.parts:
            sys.exit(f"error: {pack_file} holds an unsafe path {name!r}")
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data[offsets[i] : offsets[i + 1]].tobytes())
    print(f"{len(names)} files -> {dest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("root", type=Path)
    p.add_argument("out", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("pack", type=Path)
    u.add_argument("dest", type=Path)
    a = ap.parse_args()
    pack(a.root, a.out) if a.cmd == "pack" else unpack(a.pack, a.dest)


if __name__ == "__main__":
    main()
