"""An external meter: a command that prints watts or joules (``--power 'cmd:COMMAND'``).

Each line the command prints is one reading: a number and a unit, ``W``/``mW``/``uW`` (power now) or
``J``/``mJ``/``uJ`` (a cumulative energy counter, as a lab meter's integrator reports); a bare number is
watts. A command that keeps running (a meter's logging tool) is read as it prints; one that prints a
reading and exits is run again for every sample. The command runs under ``/bin/sh`` on this machine.
"""

from __future__ import annotations

import re
import select
import subprocess
import threading

from edgeskip.runtime.power.meter import Kind, PowerError

SCALE = {"": 1.0, "W": 1.0, "mW": 1e-3, "uW": 1e-6, "µW": 1e-6, "J": 1.0, "mJ": 1e-3, "uJ": 1e-6, "µJ": 1e-6}
LINE = re.compile(r"\s*([+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(W|mW|uW|µW|J|mJ|uJ|µJ)?\s*")


def parse(line: str, command: str) -> tuple[Kind, float]:
    """(kind, value in W or J) of one printed line."""
    m = LINE.fullmatch(line)
    if m is None:
        raise PowerError(f"meter command {command!r} printed {line.strip()[:60]!r}, not a number with W or J")
    unit = m.group(2) or ""
    return ("energy" if unit.endswith("J") else "power"), float(m.group(1)) * SCALE[unit]


class Command:
    wrap_j = [None]

    def __init__(self, command: str | None, sysfs: object = None, timeout: float = 5.0) -> None:
        command = command or ""
        if not command.strip():
            raise PowerError("--power cmd: needs a command, e.g. cmd:'my-meter --watts'")
        self.command, self.timeout = command, timeout
        self.description = f"command ({command})"
        self.channels = ["cmd"]
        self._latest: float | None = None
        self._error: str | None = None
        self._lines = 0
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        if not select.select([self._proc.stdout], [], [], timeout)[0]:
            self._proc.kill()
            raise PowerError(f"meter command {command!r} printed nothing in {timeout:g} s")
        first = self._proc.stdout.readline()
        if not first:
            rc = self._proc.wait(timeout)
            err = self._proc.stderr.read().strip().splitlines()
            raise PowerError(
                f"meter command {command!r} printed nothing (exit {rc}{': ' + err[-1][:80] if err else ''})"
            )
        self.kind, self._latest = parse(first, command)
        try:  # printed one reading and ended: a one-shot meter, run again per sample
            self._oneshot = self._proc.wait(0.2) == 0
        except subprocess.TimeoutExpired:
            self._oneshot = False
        if self._oneshot:
            self._proc = None  # type: ignore[assignment]
        else:
            threading.Thread(target=self._follow, name="edgeskip-meter", daemon=True).start()

    def _follow(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                kind, value = parse(line, self.command)
            except PowerError as e:
                self._error = str(e)
                return
            if kind != self.kind:
                self._error = f"meter command {self.command!r} switched between W and J"
                return
            self._latest = value
        rc = self._proc.wait()
        self._error = f"meter command {self.command!r} ended (exit {rc}) during the measurement"

    def read(self) -> list[float]:
        if self._oneshot:
            try:
                done = subprocess.run(
                    ["/bin/sh", "-c", self.command], capture_output=True, text=True, timeout=self.timeout
                )
            except subprocess.TimeoutExpired:
                raise PowerError(f"meter command {self.command!r} took over {self.timeout:g} s") from None
            if done.returncode != 0:
                last = done.stderr.strip().splitlines()[-1:] or [""]
                raise PowerError(f"meter command {self.command!r} failed (exit {done.returncode}) {last[0][:80]}")
            kind, value = parse(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "", self.command)
            if kind != self.kind:
                raise PowerError(f"meter command {self.command!r} switched between W and J")
            return [value]
        if self._error is not None:
            raise PowerError(self._error)
        assert self._latest is not None
        return [self._latest]

    def close(self) -> None:
        if not self._oneshot and self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
