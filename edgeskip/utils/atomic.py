"""Atomic file writes: write to a temporary file in the same folder, then rename.

A crash or error mid-write never leaves a half-written file at the destination.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgeskip.errors import EdgeskipError


def ensure_parent(dest: str | os.PathLike) -> Path:
    """Create ``dest``'s folder if needed; a path through a file, or without permission, is a one-line error."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise EdgeskipError(f"cannot write {dest}: a part of {dest.parent} is a file, not a folder") from None
    except PermissionError:
        raise EdgeskipError(f"cannot write {dest}: permission denied") from None
    return dest


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it onto ``dest`` if the block succeeds."""
    dest = ensure_parent(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or dest.suffix, dir=dest.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def replace_dir(staged: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename the finished folder ``staged`` onto ``dest`` (same filesystem), replacing what was there: the old
    folder is moved aside first and removed only once the new one is in place, so ``dest`` is never half of either."""
    dest = Path(dest)
    if dest.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.replace(dest, trash / dest.name)
        os.replace(staged, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staged, dest)


def write_with(dest: str | os.PathLike, writer: Callable[[Path], Any]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``dest``."""
    with atomic_path(dest) as tmp:
        writer(tmp)


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
