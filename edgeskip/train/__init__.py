"""Training: SGD with stochastic depth, atomic per-epoch checkpoints, exact resume."""

from edgeskip.train.checkpoint import Checkpoint, load_checkpoint, load_model
from edgeskip.train.config import DataSpec, TrainConfig
from edgeskip.train.loop import evaluate, train

__all__ = ["Checkpoint", "load_checkpoint", "load_model", "DataSpec", "TrainConfig", "evaluate", "train"]
