"""The Odroid XU4's INA231 power monitors (``/sys/bus/i2c/drivers/INA231/*/sensor_W``).

Four rails, each a sensor in watts: the A15 cluster, the A7 cluster, memory and the GPU (Hardkernel's
kernel; the addresses below name them). A disabled sensor reads 0: it is enabled through its ``enable``
file (root), and refused with that advice where it cannot be.
"""

from __future__ import annotations

from pathlib import Path

from edgeskip.runtime.power.meter import Kind, PowerError
from edgeskip.runtime.power.sysfs import SysfsSource, pick, read_number, read_text

RAILS = {"0040": "A15", "0041": "mem", "0044": "GPU", "0045": "A7"}  # Hardkernel XU4: I2C address -> rail


def sensors(sysfs: Path) -> dict[str, Path]:
    root = sysfs / "bus" / "i2c" / "drivers" / "INA231"
    if not root.is_dir():
        return {}
    return {
        RAILS.get(d.name.rsplit("-", 1)[-1], d.name): d for d in sorted(root.iterdir()) if (d / "sensor_W").exists()
    }


class INA231(SysfsSource):
    kind: Kind = "power"

    what, where, find = "INA231 sensors", "bus/i2c/drivers/INA231", staticmethod(sensors)

    def __init__(self, wanted: str | None, sysfs: Path) -> None:
        found = self.found(sysfs)
        self.channels = pick(list(found), wanted, "INA231 sensor")
        for c in self.channels:
            enable = found[c] / "enable"
            if enable.exists() and read_text(enable) == "0":
                try:
                    enable.write_text("1")
                except OSError:
                    raise PowerError(
                        f"INA231 sensor {c} is disabled and cannot be enabled: echo 1 > {enable} as root"
                    ) from None
        self._files = [found[c] / "sensor_W" for c in self.channels]
        self.wrap_j = [None] * len(self.channels)
        self.description = f"ina231 ({' + '.join(self.channels)})"
        self.read()

    def read(self) -> list[float]:
        return [read_number(f) for f in self._files]
