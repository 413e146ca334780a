"""onnxruntime (CPU execution provider): one session per ONNX graph."""

from __future__ import annotations

import os

from edgeskip.errors import EdgeskipError


def ort_session(path: str | os.PathLike, threads: int = 0):
    """An onnxruntime CPU session for ``path`` (``threads`` 0 = onnxruntime's default)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EdgeskipError("the onnxruntime back end is not installed (pip install 'edgeskip[onnxruntime]')") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types on damaged graphs
        raise EdgeskipError(
            f"onnxruntime cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


def available() -> bool:
    """Whether onnxruntime is installed."""
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None
