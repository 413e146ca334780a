"""Data sets: digits (offline default), CIFAR-10/100 pickles, image folders; splits and batching."""

from edgeskip.data.dataset import ArrayDataset, Normalization, Splits
from edgeskip.data.registry import DATASETS, load_splits

__all__ = ["ArrayDataset", "Normalization", "Splits", "DATASETS", "load_splits"]
