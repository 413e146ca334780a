"""onnxruntime sessions for the gated graph and every static config, sharing their weights.

Each initializer is turned into one ``OrtValue`` in a pool keyed by name; a graph whose initializer
has a pooled name *and identical bytes* gets it through ``SessionOptions.add_initializer``, so ORT
does not deserialise its own copy. Names that collide with different contents (the exporter's
``val_<n>`` constants) keep the graph's own copy.

Measured limit (onnxruntime 1.31, CPU provider; probe: zero a pooled buffer after the session is
built and see whether the output changes): Gemm weights follow the pooled buffer only with
``disable_prepacking``; Conv weights never do -- ORT's CPU Conv kernels keep a transformed copy per
session. So onnxruntime cannot hold one copy of the conv weights across configs from Python (the
C API's PrepackedWeightsContainer is not exposed); IREE's shared parameter archive can, and is the
runtime's path for that guarantee.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edgeskip.errors import EdgeskipError


@dataclass
class _Pool:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    shared_uses: int = 0

    def get(self, name: str, arr: np.ndarray):
        """The pooled OrtValue for (name, bytes), or None if the name holds other contents."""
        import onnxruntime as ort

        if name not in self.arrays:
            self.arrays[name] = np.array(arr, copy=True, order="C")  # owned, outlives every session
            self.values[name] = ort.OrtValue.ortvalue_from_numpy(self.arrays[name])
        elif self.arrays[name].dtype != arr.dtype or self.arrays[name].shape != arr.shape or \
                self.arrays[name].tobytes() != arr.tobytes():
            return None
        self.shared_uses += 1
        return self.values[name]


class OrtSharedSessions:
    """``sessions[name]`` for each graph path given; weights held once in :attr:`pool`."""

    def __init__(self, graphs: dict[str, str | os.PathLike], threads: int = 1, disable_prepacking: bool = False) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        self.pool = _Pool()
        self.sessions: dict[str, Any] = {}
        self.inputs: dict[str, list[str]] = {}
        for name, path in graphs.items():
            try:
                model = onnx.load(str(path))
            except Exception as e:  # noqa: BLE001 - onnx raises several types on damaged files
                raise EdgeskipError(f"cannot read ONNX graph {path}: {e}") from None
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.intra_op_num_threads = threads
            if disable_prepacking:
                opts.add_session_config_entry("session.disable_prepacking", "1")
            for init in model.graph.initializer:  # stay in the graph; ORT uses the added value instead
                value = self.pool.get(init.name, numpy_helper.to_array(init))
                if value is not None:
                    opts.add_initializer(init.name, value)
            self.sessions[name] = ort.InferenceSession(model.SerializeToString(), opts,
                                                       providers=["CPUExecutionProvider"])
            self.inputs[name] = [i.name for i in self.sessions[name].get_inputs()]

    def run(self, name: str, image: np.ndarray, skip: Sequence[bool] | None = None) -> np.ndarray:
        feed = {"image": image}
        if "skip" in self.inputs[name]:
            if skip is None:
                raise EdgeskipError(f"graph {name} needs a skip array")
            feed["skip"] = np.asarray(skip, dtype=bool)
        return self.sessions[name].run(None, feed)[0]
