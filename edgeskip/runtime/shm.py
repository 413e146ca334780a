"""Triton's system shared-memory extension: a client beside the daemon registers a POSIX shared-memory object
once, then its requests name a region of it instead of carrying the tensor, and may ask for outputs there.

Regions are ``{name: key, offset, byte_size}`` with ``key`` a POSIX shared-memory name (``/dev/shm/<key>``).
Reads copy out of the mapping (the client may rewrite its region while the daemon works); every bad region
(unregistered, out of bounds, the wrong size, a key that does not exist) is a one-line 400 / INVALID_ARGUMENT.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass

from edgeskip.runtime.preprocess import BadRequest

SHM_DIR = "/dev/shm"
MAX_REGIONS = 64


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{what} must be a non-negative integer, got {value!r}")
    return value


class Regions:
    """The registered regions of one daemon; safe to use from the event loop and the inference thread."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: object, key: object, offset: object, byte_size: object) -> None:
        if not isinstance(name, str) or not name or len(name) > 128:
            raise BadRequest("a shared-memory region needs a name (1-128 characters)")
        if not isinstance(key, str) or not key.strip("/") or "/" in key.strip("/") or len(key) > 255:
            raise BadRequest(f"shared-memory key must be a POSIX shared-memory name like '/input0', got {key!r}")
        offset, byte_size = _int(offset, "offset"), _int(byte_size, "byte_size")
        if byte_size == 0:
            raise BadRequest("byte_size must be positive")
        path = os.path.join(SHM_DIR, key.strip("/"))
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise BadRequest(f"cannot open shared-memory key {key!r}: {e.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise BadRequest(f"region {name!r} [{offset}, {offset + byte_size}) exceeds key {key!r} ({size} bytes)")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        with self._lock:
            if name in self._regions:
                mapping.close()
                raise BadRequest(f"shared-memory region {name!r} is already registered")
            if len(self._regions) >= MAX_REGIONS:
                mapping.close()
                raise BadRequest(f"at most {MAX_REGIONS} shared-memory regions may be registered")
            self._regions[name] = Region(name, key, offset, byte_size, mapping)

    def status(self, name: str | None = None) -> list[dict]:
        with self._lock:
            if name is None:
                return [r.status() for r in self._regions.values()]
            if name not in self._regions:
                raise BadRequest(f"shared-memory region {name!r} is not registered", status=404)
            return [self._regions[name].status()]

    def unregister(self, name: str | None = None) -> None:
        with self._lock:
            names = list(self._regions) if name is None else [name]
            for n in names:
                region = self._regions.pop(n, None)
                if region is not None:
                    region.mapping.close()

    def _span(self, name: object, offset: object, size: object, what: str) -> tuple[Region, int, int]:
        if not isinstance(name, str) or name not in self._regions:
            raise BadRequest(f"{what}: shared-memory region {name!r} is not registered")
        region = self._regions[name]
        offset = _int(0 if offset is None else offset, f"{what}: shared_memory_offset")
        size = _int(size, f"{what}: shared_memory_byte_size")
        if offset + size > region.byte_size:
            raise BadRequest(
                f"{what}: [{offset}, {offset + size}) is outside region {name!r} ({region.byte_size} bytes)"
            )
        return region, region.offset + offset, size

    def read(self, name: object, offset: object, size: object, expect: int, what: str) -> bytes:
        """``size`` bytes at ``offset`` of region ``name`` (a copy); ``size`` must be ``expect``."""
        if size != expect:
            raise BadRequest(f"{what}: shared_memory_byte_size must be {expect}, got {size!r}")
        with self._lock:
            region, start, n = self._span(name, offset, size, what)
            return region.mapping[start : start + n]

    def check(self, name: object, offset: object, size: object, what: str) -> None:
        """Raise BadRequest unless the span names a registered region and lies inside it."""
        with self._lock:
            self._span(name, offset, size, what)

    def write(self, name: str, offset: int | None, size: int, data: bytes, what: str) -> None:
        """Write ``data`` into region ``name`` at ``offset``; it must fit the ``size`` the request gave."""
        if len(data) > size:
            raise BadRequest(f"{what} needs {len(data)} bytes, its shared-memory span has {size}")
        with self._lock:
            region, start, _ = self._span(name, offset, size, what)
            region.mapping[start : start + len(data)] = data

    def close(self) -> None:
        self.unregister()
