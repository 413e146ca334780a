"""Models: CIFAR-style ResNets with stochastic depth and weightless skip gates."""

from edgeskip.models.config import ResNetConfig
from edgeskip.models.resnet import CifarResNet, build_model, remove_blocks
from edgeskip.skip import normalize_skip, skip_from_indices
from edgeskip.models.cost import macs, block_macs

__all__ = [
    "ResNetConfig",
    "CifarResNet",
    "build_model",
    "remove_blocks",
    "normalize_skip",
    "skip_from_indices",
    "macs",
    "block_macs",
]
