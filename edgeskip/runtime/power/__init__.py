"""Power and energy sources (torch-free): what a board's sensors or an external meter say a run cost.

``--power SPEC``: ``auto`` (the first of powercap, INA231, hwmon that exists here), ``powercap[:ZONE,...]``,
``ina231[:RAIL,...]``, ``hwmon[:DEVICE[:CHANNEL,...]]`` or ``cmd:COMMAND``. A source knows nothing of
inference: :class:`EnergyMeter` turns its readings into joules over a span. Sysfs is read under
``$EDGESKIP_SYSFS`` where set (a container's mount of the host's /sys; the tests' sensor trees), else /sys.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeskip.runtime.power.command import Command
from edgeskip.runtime.power.hwmon import Hwmon
from edgeskip.runtime.power.ina231 import INA231
from edgeskip.runtime.power.meter import Energy, EnergyMeter, PowerError, PowerSource, counter_delta, trapezoid
from edgeskip.runtime.power.powercap import Powercap

SOURCES: dict[str, type] = {"powercap": Powercap, "ina231": INA231, "hwmon": Hwmon, "cmd": Command}
AUTO_ORDER = (Powercap, INA231, Hwmon)  # what `auto` looks for, in this order
SPEC_HELP = "auto, powercap[:ZONE,...], ina231[:RAIL,...], hwmon[:DEVICE[:CHANNEL,...]] or cmd:COMMAND"


def sysfs_root() -> Path:
    return Path(os.environ.get("EDGESKIP_SYSFS") or "/sys")


def open_power(spec: str, sysfs: Path | None = None) -> PowerSource | None:
    """The source ``spec`` names, opened and read once; None for ``auto`` where this machine has none."""
    sysfs = sysfs_root() if sysfs is None else sysfs
    name, _, arg = spec.partition(":")
    if name == "auto" and not arg:
        for cls in AUTO_ORDER:
            if cls.available(sysfs):
                return cls(None, sysfs)
        return None
    if name not in SOURCES:
        raise PowerError(f"unknown power source {spec!r}; use {SPEC_HELP}")
    source: PowerSource = SOURCES[name](arg or None, sysfs)
    return source


def open_meter(spec: str, interval: float = 0.05) -> tuple[EnergyMeter | None, str]:
    """A meter on the source ``spec`` names, and the line that says which source (or, where ``auto`` finds none,
    the meter None and the line saying so)."""
    source = open_power(spec)
    if source is None:
        return None, none_found_note()
    return EnergyMeter(source, interval), source.description


def none_found_note(sysfs: Path | None = None) -> str:
    """The one line said where ``auto`` finds nothing."""
    sysfs = sysfs_root() if sysfs is None else sysfs
    return (
        f"no power source on this machine (looked for {sysfs}/class/powercap, {sysfs}/bus/i2c/drivers/INA231, "
        f"{sysfs}/class/hwmon); energy is not measured (an external meter: --power cmd:COMMAND)"
    )


__all__ = [
    "SOURCES",
    "SPEC_HELP",
    "Energy",
    "EnergyMeter",
    "PowerError",
    "PowerSource",
    "counter_delta",
    "none_found_note",
    "open_meter",
    "open_power",
    "trapezoid",
]
