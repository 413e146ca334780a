"""Models: the built-in CIFAR ResNet and any traced CNN, with stochastic depth and weightless skip gates."""

from __future__ import annotations

from edgeskip.models.blocknet import BlockNet
from edgeskip.models.config import ModelConfig, NetConfig, ResNetConfig, config_from_dict
from edgeskip.models.cost import block_macs, macs
from edgeskip.models.resnet import CifarResNet, remove_blocks
from edgeskip.skip import normalize_skip, skip_from_indices


def build_model(cfg: ModelConfig, init_weights: str | None = None) -> BlockNet:
    """Build a full network from its configuration (a NetConfig's blocks are found or checked here; the built
    network's ``cfg`` is the resolved one). ``init_weights``: a local state dict for the source model."""
    if isinstance(cfg, NetConfig):
        from edgeskip.models.chain import build_chain

        return build_chain(cfg, init_weights)
    model = CifarResNet(cfg)
    if init_weights:
        from edgeskip.models.zoo import load_weights

        load_weights(model, init_weights)
    return model


__all__ = [
    "BlockNet",
    "ModelConfig",
    "NetConfig",
    "ResNetConfig",
    "config_from_dict",
    "CifarResNet",
    "build_model",
    "remove_blocks",
    "normalize_skip",
    "skip_from_indices",
    "macs",
    "block_macs",
]
