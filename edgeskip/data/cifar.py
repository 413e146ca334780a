"""CIFAR-10 / CIFAR-100 from the official python-pickle archives.

Looks in ``data_dir`` for the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or
the archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``); if neither is there and
downloading is allowed, fetches the archive into ``data_dir`` and verifies its MD5 first.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeskip.data.dataset import ArrayDataset
from edgeskip.errors import EdgeskipError
from edgeskip.utils.atomic import atomic_path
from edgeskip.utils.hashing import file_digest


@dataclass(frozen=True)
class CifarSpec:
    folder: str
    archive: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes


SPECS = {
    "cifar10": CifarSpec(
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar100": CifarSpec(
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        ("train",),
        ("test",),
        "meta",
        b"fine_labels",
        b"fine_label_names",
    ),
}


def download(spec: CifarSpec, data_dir: Path) -> Path:
    """Download the archive into ``data_dir`` atomically and verify its checksum."""
    dest = data_dir / spec.archive
    try:
        with atomic_path(dest) as tmp:
            urllib.request.urlretrieve(spec.url, tmp)
            got = file_digest(tmp, "md5")
            if got != spec.md5:
                raise EdgeskipError(f"downloaded {spec.archive} has MD5 {got}, expected {spec.md5}")
    except OSError as e:
        raise EdgeskipError(f"cannot download {spec.url}: {e}") from None
    return dest


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the official CIFAR archives hold: dicts, lists, bytes, ints and numpy arrays.

    Any other global a pickle names (``os.system``, ``builtins.eval``, ...) is refused before it is
    looked up, so a crafted file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),  # numpy scalars
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes under protocol 2
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }  # arrays, protocol 5

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR file")
        if name in ("_reconstruct", "scalar"):
            from numpy._core import multiarray

            return getattr(multiarray, name)
        if name == "_frombuffer":
            from numpy._core.numeric import _frombuffer

            return _frombuffer
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def _unpickle(raw: bytes, name: str) -> dict:
    try:
        d = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt or hostile file
        raise EdgeskipError(f"corrupt CIFAR file {name}: {e}") from None
    if not isinstance(d, dict):
        raise EdgeskipError(f"corrupt CIFAR file {name}: not a dict")
    return d


def _reader(spec: CifarSpec, data_dir: Path, allow_download: bool) -> Callable[[str], dict]:
    folder = data_dir / spec.folder
    if folder.is_dir():

        def read(name: str) -> dict:
            p = folder / name
            if not p.is_file():
                raise EdgeskipError(f"missing CIFAR file {p}")
            return _unpickle(p.read_bytes(), str(p))

        return read
    archive = data_dir / spec.archive
    if not archive.is_file():
        if not allow_download:
            raise EdgeskipError(f"no {spec.folder}/ or {spec.archive} in {data_dir} (pass --download to fetch it)")
        archive = download(spec, data_dir)
    try:
        tar = tarfile.open(archive, "r:gz")
        members = {m.name: m for m in tar.getmembers()}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EdgeskipError(f"corrupt archive {archive}: {e}") from None

    def read_member(name: str) -> dict:
        key = f"{spec.folder}/{name}"
        if key not in members:
            raise EdgeskipError(f"archive {archive} has no member {key}")
        try:
            raw = tar.extractfile(members[key]).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, AttributeError) as e:
            raise EdgeskipError(f"corrupt archive {archive}: {e}") from None
        return _unpickle(raw, f"{archive}:{key}")

    return read_member


def _to_arrays(d: dict, spec: CifarSpec, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[spec.label_key], dtype=np.int64)
    except (KeyError, ValueError) as e:
        raise EdgeskipError(f"corrupt CIFAR file {name}: {e}") from None
    if len(x) != len(y):
        raise EdgeskipError(f"corrupt CIFAR file {name}: {len(x)} images, {len(y)} labels")
    return x, y


def load_cifar(variant: str, data_dir: str | Path, allow_download: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    """Return the official (train, test) splits of ``cifar10`` or ``cifar100``."""
    spec = SPECS[variant]
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        if not allow_download:
            raise EdgeskipError(f"data folder {data_dir} does not exist")
        data_dir.mkdir(parents=True)
    read = _reader(spec, data_dir, allow_download)
    meta = read(spec.meta_file)
    try:
        names = [n.decode() for n in meta[spec.names_key]]
    except (KeyError, AttributeError) as e:
        raise EdgeskipError(f"corrupt CIFAR meta file: {e}") from None

    def part(files: tuple[str, ...]) -> ArrayDataset:
        xs, ys = zip(*(_to_arrays(read(f), spec, f) for f in files))
        y = np.concatenate(ys)
        if y.size and (y.min() < 0 or y.max() >= len(names)):
            raise EdgeskipError(f"corrupt CIFAR labels: outside 0..{len(names) - 1}")
        return ArrayDataset(np.concatenate(xs), y, names)

    return part(spec.train_files), part(spec.test_files)
