"""Reading sysfs attribute files: one number per file, errors as one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeskip.runtime.power.meter import PowerError


class SysfsSource:
    """What the sysfs sources share: ``find`` (what this machine has, under ``where``), nothing to release."""

    what = ""  # what is looked for, for the error where there is none
    where = ""  # under the sysfs root

    @staticmethod
    def find(sysfs: Path) -> Any:
        raise NotImplementedError

    @classmethod
    def available(cls, sysfs: Path) -> bool:
        return bool(cls.find(sysfs))

    @classmethod
    def found(cls, sysfs: Path) -> Any:
        found = cls.find(sysfs)
        if not found:
            raise PowerError(f"no {cls.what} under {sysfs}/{cls.where}")
        return found

    def close(self) -> None:
        pass


def read_number(path: Path) -> float:
    """The number a sysfs attribute holds."""
    try:
        text = path.read_text().strip()
    except PermissionError:
        raise PowerError(f"cannot read {path}: permission denied (run as root, or make it readable)") from None
    except OSError as e:
        raise PowerError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return float(text)
    except ValueError:
        raise PowerError(f"{path} holds {text[:40]!r}, not a number") from None


def read_text(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def pick(names: list[str], wanted: str | None, what: str) -> list[str]:
    """The comma-separated ``wanted`` names among ``names`` (all of them when ``wanted`` is empty)."""
    if not wanted:
        return names
    picked = [w.strip() for w in wanted.split(",") if w.strip()]
    missing = [w for w in picked if w not in names]
    if missing:
        raise PowerError(f"no {what} {', '.join(missing)} here; there are: {', '.join(names) or 'none'}")
    return picked
