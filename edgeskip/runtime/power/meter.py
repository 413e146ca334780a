"""Energy over a run from any power source: counter deltas with wraparound, power integrated over time.

Pure arithmetic (:func:`counter_delta`, :func:`trapezoid`) apart from the sampling thread; the clock is
injected, so a test drives a meter sample by sample.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from edgeskip.errors import EdgeskipError

Kind = Literal["energy", "power"]


class PowerError(EdgeskipError):
    """A power source that cannot be opened or read, or one whose readings make no sense."""


class PowerSource(Protocol):
    """Readings of one or more sensors: joules of a cumulative counter, or watts now, one value per channel."""

    @property
    def description(self) -> str:
        """What is measured, for the one line a command prints."""

    @property
    def kind(self) -> Kind: ...

    @property
    def channels(self) -> Sequence[str]: ...

    @property
    def wrap_j(self) -> Sequence[float | None]:
        """Per channel: the counter's range (it wraps to 0 there); None: no wraparound."""

    def read(self) -> list[float]:
        """One reading per channel (J for an energy counter, W for a power sensor)."""

    def close(self) -> None:
        """Release what the source holds (a meter process)."""


def counter_delta(prev: float, cur: float, wrap: float | None, channel: str = "") -> float:
    """Joules between two readings of a cumulative counter that wraps to 0 at ``wrap``."""
    if cur >= prev:
        return cur - prev
    if wrap is None or wrap <= prev:
        raise PowerError(
            f"energy counter {channel or ''} went backwards ({prev:.6f} -> {cur:.6f} J) and has no wraparound "
            "range; the readings cannot be trusted".replace("  ", " ")
        )
    return wrap - prev + cur


def trapezoid(t0: float, w0: float, t1: float, w1: float) -> float:
    """Joules between two power samples (linear in between)."""
    return (t1 - t0) * (w0 + w1) / 2


@dataclass(frozen=True)
class Energy:
    """What a meter measured over a span: joules, seconds, samples; ``idle_w``: the baseline it was given."""

    source: str
    joules: float
    seconds: float
    samples: int
    idle_w: float | None = None

    @property
    def mean_w(self) -> float | None:
        return self.joules / self.seconds if self.seconds > 0 else None

    @property
    def joules_above_idle(self) -> float | None:
        return None if self.idle_w is None else self.joules - self.idle_w * self.seconds

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {
            "source": self.source,
            "joules": self.joules,
            "seconds": self.seconds,
            "samples": self.samples,
            "mean_w": self.mean_w,
            "idle_w": self.idle_w,
            "joules_above_idle": self.joules_above_idle,
        }


class EnergyMeter:
    """Accumulates a source's energy, sample by sample (:meth:`sample`) or on a thread every ``interval`` s.

    The paper sampled its meter at 20 Sa/s, the default here. Energy counters are read at the same rate so
    that each wraparound (RAPL's 32-bit microjoule counter wraps in about a minute at 70 W) is seen once.
    """

    def __init__(
        self,
        source: PowerSource,
        interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[str], object] | None = None,
    ) -> None:
        if not interval > 0:
            raise PowerError(f"the sampling interval must be positive, got {interval}")
        self.source, self.interval, self.clock = source, interval, clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: str | None = None  # why sampling stopped early (the counter keeps what it had)
        self.on_error = on_error  # told that reason, on the sampling thread, once
        self.reset()

    def reset(self) -> None:
        """Start a new span at the next sample."""
        with self._lock:
            self.joules, self.samples = 0.0, 0
            self._t0: float | None = None
            self._t: float | None = None
            self._last: list[float] | None = None

    def sample(self) -> None:
        """Take one reading now and add what it measured since the last one."""
        values = self.source.read()
        t = self.clock()
        with self._lock:
            if self._last is not None and self._t is not None:
                if self.source.kind == "energy":
                    self.joules += sum(
                        counter_delta(p, c, w, ch)
                        for p, c, w, ch in zip(self._last, values, self.source.wrap_j, self.source.channels)
                    )
                else:
                    self.joules += trapezoid(self._t, sum(self._last), t, sum(values))
            else:
                self._t0 = t
            self._last, self._t = values, t
            self.samples += 1

    @property
    def seconds(self) -> float:
        return 0.0 if self._t0 is None or self._t is None else self._t - self._t0

    def energy(self, idle_w: float | None = None) -> Energy:
        with self._lock:
            return Energy(self.source.description, self.joules, self.seconds, self.samples, idle_w)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.interval)
            if self._stop.is_set():
                break
            try:
                self.sample()
            except (PowerError, OSError, ValueError) as e:
                self.error = str(e)
                if self.on_error is not None:
                    self.on_error(self.error)
                return

    def start(self) -> EnergyMeter:
        """Begin a span: a first reading now, then one every ``interval`` on a daemon thread."""
        self.reset()
        self.error = None
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="edgeskip-power", daemon=True)
        self._thread.start()
        return self

    def stop(self, idle_w: float | None = None) -> Energy:
        """End the span with a last reading; raises :class:`PowerError` if sampling failed on the way."""
        self._halt()
        if self.error is not None:
            raise PowerError(f"power source {self.source.description}: {self.error}")
        self.sample()
        return self.energy(idle_w)

    def close(self) -> None:
        """Stop sampling (whatever happened) and release the source."""
        self._halt()
        self.source.close()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def measure_idle(self, seconds: float) -> float:
        """Mean watts over ``seconds`` of doing nothing (the baseline a run's energy is compared with)."""
        self.start()
        time.sleep(seconds)
        e = self.stop()
        if e.mean_w is None:
            raise PowerError("the idle baseline measured no time")
        return e.mean_w
