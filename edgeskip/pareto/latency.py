"""Measured latency of skip arrays: batch 1, median of interleaved repeats.

Configs are timed round-robin (one run of each per round) so that machine noise and frequency
drift hit all of them alike. Later back ends (IREE, onnxruntime) plug in as another
:class:`LatencySource`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from edgeskip.errors import EdgeskipError
from edgeskip.models import BlockNet

LATENCY_SOURCES = ("none", "torch")


class LatencySource(Protocol):
    """Something that returns the median seconds of one batch-1 inference for each skip array."""

    name: str

    def measure(self, skip_arrays: Sequence[object]) -> list[float]: ...


def interleaved_median(
    runners: Sequence[Callable[[], object]],
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
    burst: int = 1,
) -> list[float]:
    """Median wall time of each runner over ``repeats`` round-robin rounds (after ``warmup`` rounds). ``burst``:
    calls in a row per runner and round, each timed (the first of each burst is not counted): with 1 every call
    follows the other runners' (their data in the caches), with more the steady state of a process running one
    engine, as ``iree-benchmark-module``'s loop measures it."""
    samples: list[list[float]] = [[] for _ in runners]
    for r in range(warmup + repeats):
        for k, run in enumerate(runners):
            for b in range(burst):
                t0 = clock()
                run()
                dt = clock() - t0
                if r >= warmup and (b or burst == 1):
                    samples[k].append(dt)
    return [statistics.median(s) for s in samples]


class TorchLatency:
    """PyTorch eager on this host's CPU, batch 1, ``torch.inference_mode``."""

    name = "torch-cpu-b1"

    def __init__(self, model: BlockNet, repeats: int = 30, warmup: int = 3, threads: int | None = None) -> None:
        self.model = model.eval()
        self.repeats = repeats
        self.warmup = warmup
        self.threads = threads
        cfg = model.cfg
        self.x = torch.randn(1, cfg.in_channels, *cfg.input_size)

    def measure(self, skip_arrays: Sequence[object]) -> list[float]:
        old = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                runners = [lambda s=s: self.model(self.x, s) for s in skip_arrays]
                return interleaved_median(runners, self.repeats, self.warmup)
        finally:
            torch.set_num_threads(old)


def make_source(name: str, model: BlockNet, repeats: int = 30) -> LatencySource | None:
    """Latency source by name (``none`` -> None)."""
    if name == "none":
        return None
    if name == "torch":
        return TorchLatency(model, repeats=repeats)
    raise EdgeskipError(f"unknown latency source {name!r}; choose from {', '.join(LATENCY_SOURCES)}")
