"""onnxruntime (CPU execution provider): one session per ONNX graph."""

from __future__ import annotations

import os

from edgeskip.errors import EdgeskipError

# onnxruntime's graph rewrites that change an int8 graph's numbers: DoubleQDQPairsRemover folds Q1 -> DQ1 -> Q2 -> DQ2
# with different scales (an int8 block's output, a skipped block, the next int8 block's input) into one pair with a
# recomputed scale, so the result is no longer the two roundings the graph (and PyTorch's simulation, which chose the
# config on validation) computes: up to 2.9% of the largest logit on ResNet-20 (bench/ort_double_qdq.py)
DISABLED_OPTIMIZERS = ["DoubleQDQPairsRemover"]


def ort_session(path: str | os.PathLike, threads: int = 0):
    """An onnxruntime CPU session for ``path`` (``threads`` 0 = onnxruntime's default), without the rewrites of
    :data:`DISABLED_OPTIMIZERS`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EdgeskipError("the onnxruntime back end is not installed (pip install 'edgeskip[onnxruntime]')") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(
            str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS
        )
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types on damaged graphs
        raise EdgeskipError(
            f"onnxruntime cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


def available() -> bool:
    """Whether onnxruntime is installed."""
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None
