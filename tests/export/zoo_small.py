"""Small instances of library model families, for the zoo test (``--model tests.export.zoo_small:<factory>``).

Each is built from the family's own torchvision classes (blocks, stems, heads), at widths its public factory does not
offer (torchvision's ResNets, RegNets, EfficientNets and ConvNeXts take none): what edgeskip traces, gates, exports and
compiles is the library's code, at a size a test can afford.
"""

from __future__ import annotations

from torch import nn

from edgeskip.models.zoo import import_torchvision


def _resnet(block_name: str, layers: list[int], num_classes: int, in_channels: int, div: int, **kw) -> nn.Module:
    """torchvision's ResNet with every stage ``div`` times narrower (its stem keeps 64 channels)."""
    import_torchvision()
    from torchvision.models import resnet

    block = getattr(resnet, block_name)

    class Narrow(resnet.ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # type: ignore[no-untyped-def]
            return super()._make_layer(block, planes // div, blocks, stride, dilate)

    model = Narrow(block, layers, num_classes=num_classes, **kw)
    model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    model.fc = nn.Linear(512 // div * block.expansion, num_classes)
    return model


def resnet_basic(num_classes: int, in_channels: int) -> nn.Module:
    """The resnet18/34 family: BasicBlock stages, 8-64 channels."""
    return _resnet("BasicBlock", [1, 2, 1, 1], num_classes, in_channels, div=8)


def resnet_bottleneck(num_classes: int, in_channels: int) -> nn.Module:
    """The resnet50 / resnext50_32x4d / wide_resnet50_2 family: Bottleneck stages, grouped and widened."""
    return _resnet("Bottleneck", [1, 2, 1, 1], num_classes, in_channels, div=16, groups=2, width_per_group=64)


def regnet_y(num_classes: int, in_channels: int) -> nn.Module:
    """The regnet_x/y family: ResBottleneckBlock stages with squeeze-excitation (regnet_y)."""
    import_torchvision()
    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams([1, 2], [16, 32], [8, 8], [1.0, 1.0], [2, 2], se_ratio=0.25)
    model = RegNet(params, num_classes=num_classes, stem_width=16)
    model.stem[0] = nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False)
    return model


def efficientnet(num_classes: int, in_channels: int) -> nn.Module:
    """The efficientnet family: MBConv stages (depthwise, squeeze-excitation, the model's own stochastic depth)."""
    import_torchvision()
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    setting = [MBConvConfig(1, 3, 1, 8, 8, 1), MBConvConfig(4, 3, 2, 8, 16, 2), MBConvConfig(4, 5, 2, 16, 24, 2)]
    model = EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.2, num_classes=num_classes, last_channel=64)
    model.features[0][0] = nn.Conv2d(in_channels, 8, 3, 2, 1, bias=False)
    return model


def convnext(num_classes: int, in_channels: int) -> nn.Module:
    """The convnext family: CNBlocks (LayerNorm, layer scale, the model's own stochastic depth), four stages, so at
    32x32 the last downsampling covers a 2x2 map (bench/iree_unhoisted_alloca.py)."""
    import_torchvision()
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    setting = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 1)]
    model = ConvNeXt(setting, stochastic_depth_prob=0.1, num_classes=num_classes)
    model.features[0][0] = nn.Conv2d(in_channels, 8, 4, 4)
    return model
