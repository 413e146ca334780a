"""Linux powercap energy counters: Intel RAPL and AMD RAPL (``/sys/class/powercap/*/energy_uj``).

Counts the top-level zones only (``intel-rapl:0``, not its sub-zones, which the package already holds), each
zone name once (the MMIO interface repeats ``package-0``), and ``psys`` alone where it exists (it holds the
packages). Each counter wraps at its ``max_energy_range_uj``.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgeskip.runtime.power.meter import Kind
from edgeskip.runtime.power.sysfs import SysfsSource, pick, read_number, read_text


def zones(sysfs: Path) -> dict[str, Path]:
    """Top-level zones with an energy counter: {zone name: folder}, first folder of each name."""
    root = sysfs / "class" / "powercap"
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for d in sorted(root.iterdir(), key=lambda d: ("mmio" in d.name, d.name)):  # MSR zones before MMIO copies
        if re.fullmatch(r"[\w-]+:\d+", d.name) and (d / "energy_uj").exists():
            found.setdefault(read_text(d / "name", d.name), d)
    return found


class Powercap(SysfsSource):
    kind: Kind = "energy"

    what, where, find = "powercap energy counters", "class/powercap", staticmethod(zones)

    def __init__(self, wanted: str | None, sysfs: Path) -> None:
        found = self.found(sysfs)
        default = ["psys"] if "psys" in found else list(found)
        self.channels = pick(list(found), wanted, "powercap zone") if wanted else default
        self._files = [found[c] / "energy_uj" for c in self.channels]
        self.wrap_j = [
            read_number(found[c] / "max_energy_range_uj") / 1e6 if (found[c] / "max_energy_range_uj").exists() else None
            for c in self.channels
        ]
        self.description = f"powercap ({' + '.join(self.channels)})"
        self.read()  # unreadable (root-only since Linux 5.10) fails here, not in the middle of a run

    def read(self) -> list[float]:
        return [read_number(f) / 1e6 for f in self._files]
