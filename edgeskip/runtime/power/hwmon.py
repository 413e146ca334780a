"""hwmon power and energy channels (``/sys/class/hwmon/hwmon*``): ``energy*_input`` (µJ counters),
``power*_input``/``power*_average`` (µW), or a monitor's voltage times current (``in*_input`` mV x
``curr*_input`` mA, as a Jetson's INA3221 reports its rails).

A board's monitor often has a total rail beside the rails it feeds (a Jetson's VDD_IN beside VDD_CPU_GPU_CV),
so channels are never summed unasked: without a choice the one channel there is, or the one labelled as the
board's input, is used; otherwise the choices are listed. ``hwmon:DEVICE`` sums that device's channels,
``hwmon:DEVICE:CH,CH`` the ones named (by label or by file prefix, e.g. ``power1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgeskip.runtime.power.meter import Kind, PowerError
from edgeskip.runtime.power.sysfs import SysfsSource, read_number, read_text

TOTAL = re.compile(r"(vdd_?in|vin|in|total|sys(_|tem)?_?(total|in|power)|board|input)", re.I)


@dataclass(frozen=True)
class Channel:
    device: str
    name: str  # label, or the file prefix (power1)
    kind: Kind
    files: tuple[Path, ...]  # one file (µJ or µW), or voltage (mV) and current (mA)

    @property
    def key(self) -> str:
        return f"{self.device}:{self.name}"

    def read(self) -> float:
        if len(self.files) == 2:
            return read_number(self.files[0]) * read_number(self.files[1]) / 1e6
        return read_number(self.files[0]) / 1e6


def _device_channels(d: Path) -> list[Channel]:
    dev = read_text(d / "name", d.name)
    files = sorted(p.name for p in d.iterdir())

    def label(prefix: str) -> str:
        return read_text(d / f"{prefix}_label", prefix)

    energy = [f[: -len("_input")] for f in files if re.fullmatch(r"energy\d+_input", f)]
    if energy:
        return [Channel(dev, label(p), "energy", (d / f"{p}_input",)) for p in energy]
    power = [f.rsplit("_", 1)[0] for f in files if re.fullmatch(r"power\d+_input", f)]
    power = power or [f.rsplit("_", 1)[0] for f in files if re.fullmatch(r"power\d+_average", f)]
    if power:
        suffix = "_input" if (d / f"{power[0]}_input").exists() else "_average"
        return [Channel(dev, label(p), "power", (d / f"{p}{suffix}",)) for p in power]
    both = [
        n for n in (re.fullmatch(r"curr(\d+)_input", f) for f in files) if n and (d / f"in{n.group(1)}_input").exists()
    ]
    return [
        Channel(
            dev,
            read_text(d / f"in{m.group(1)}_label", f"in{m.group(1)}"),
            "power",
            (d / f"in{m.group(1)}_input", d / f"curr{m.group(1)}_input"),
        )
        for m in both
    ]


def channels(sysfs: Path) -> list[Channel]:
    root = sysfs / "class" / "hwmon"
    if not root.is_dir():
        return []
    return [c for d in sorted(root.iterdir()) if d.is_dir() for c in _device_channels(d)]


def choose(found: list[Channel], arg: str | None) -> list[Channel]:
    """The channels ``arg`` names (see the module's note)."""
    listing = ", ".join(c.key for c in found)
    if not arg:
        if len(found) == 1:
            return found
        total = [c for c in found if TOTAL.fullmatch(c.name)]
        if len(total) == 1:
            return total
        raise PowerError(
            f"hwmon has {len(found)} power channels ({listing}) and none is plainly the board's total; "
            "name the ones to count: --power hwmon:DEVICE[:CHANNEL,...]"
        )
    device, _, wanted = arg.partition(":")
    mine = [c for c in found if c.device == device]
    if not mine:
        raise PowerError(f"no hwmon device {device!r} with power channels; there are: {listing or 'none'}")
    if not wanted:
        return mine
    picked = []
    for w in (w.strip() for w in wanted.split(",")):
        hit = [c for c in mine if w in (c.name, c.files[0].name.split("_")[0])]
        if not hit:
            raise PowerError(f"hwmon device {device} has no channel {w!r}; it has: {', '.join(c.name for c in mine)}")
        picked.append(hit[0])
    return picked


class Hwmon(SysfsSource):
    what, where, find = "hwmon power or energy channels", "class/hwmon", staticmethod(channels)

    def __init__(self, arg: str | None, sysfs: Path) -> None:
        found = self.found(sysfs)
        self._chosen = choose(found, arg)
        kinds = {c.kind for c in self._chosen}
        if len(kinds) > 1:
            raise PowerError("the hwmon channels named mix energy counters and power sensors; name one kind")
        self.kind: Kind = kinds.pop()
        self.channels = [c.key for c in self._chosen]
        self.wrap_j: list[float | None] = [None] * len(self._chosen)
        self.description = f"hwmon ({' + '.join(self.channels)})"
        self.read()

    def read(self) -> list[float]:
        return [c.read() for c in self._chosen]
