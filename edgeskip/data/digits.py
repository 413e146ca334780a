"""scikit-learn's bundled 8x8 handwritten digits: the offline default data set (1,797 images)."""

from __future__ import annotations

import numpy as np

from edgeskip.data.dataset import ArrayDataset


def load_digits() -> ArrayDataset:
    """All 1,797 digits as float32 [N, 1, 8, 8] in [0, 1] (raw values are 0..16)."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    return ArrayDataset(x, d.target.astype(np.int64), [str(c) for c in d.target_names])
