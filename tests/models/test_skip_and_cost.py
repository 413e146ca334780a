import random

import numpy as np
import pytest
import torch

from edgeskip.errors import EdgeskipError
from edgeskip.models import ResNetConfig, block_macs, build_model, macs, normalize_skip


def test_resnet20_macs_hand_count():
    # stem 3->16 @32x32; stage 1: 6 convs 16->16 @32x32; stage 2: 16->32 s2 then 5 convs 32->32 @16x16;
    # stage 3: 32->64 s2 then 5 convs 64->64 @8x8; fc 64->10
    stem = 32 * 32 * 3 * 16 * 9
    s1 = 6 * 32 * 32 * 16 * 16 * 9
    s2 = 16 * 16 * 16 * 32 * 9 + 5 * 16 * 16 * 32 * 32 * 9
    s3 = 8 * 8 * 32 * 64 * 9 + 5 * 8 * 8 * 64 * 64 * 9
    assert macs(ResNetConfig(depth=20)) == stem + s1 + s2 + s3 + 640 == 40_551_040
    # each gated block of stage 1 costs two 16->16 convs at 32x32
    assert block_macs(ResNetConfig(depth=20))[1] == 2 * 32 * 32 * 16 * 16 * 9
    # every gated block of ResNet-20 costs two convs of 2,359,296 MACs (channels double as the map halves)
    assert macs(ResNetConfig(depth=20), [0] * 6) == 40_551_040 - 6 * 2 * 2_359_296 == 12_239_488


def _hook_macs(model, x, skip):
    total = 0

    def conv_hook(m, i, o):
        nonlocal total
        total += o.numel() // o.shape[0] * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def fc_hook(m, i, o):
        nonlocal total
        total += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(fc_hook)
    model(x, skip)
    return total


@pytest.mark.parametrize(
    "depth,shortcut,size,ch", [(20, "pad", (32, 32), 3), (32, "proj", (8, 8), 1), (44, "pad", (15, 9), 2)]
)
def test_macs_match_counted_convolutions(depth, shortcut, size, ch):
    cfg = ResNetConfig(depth=depth, shortcut=shortcut, input_size=size, in_channels=ch)
    rng = random.Random(1)
    for _ in range(4):
        s = [rng.randint(0, 1) for _ in range(cfg.num_gates)]
        m = build_model(cfg).eval()
        assert macs(cfg, s) == _hook_macs(m, torch.randn(1, ch, *size), s)


def test_normalize_skip_forms():
    assert normalize_skip("1101", 4) == (True, True, False, True)
    assert normalize_skip("1,1,0,1", 4) == (True, True, False, True)
    assert normalize_skip(np.array([1, 0]), 2) == (True, False)
    assert normalize_skip(torch.tensor([True, False]), 2) == (True, False)


@pytest.mark.parametrize(
    "bad,msg",
    [([1, 1], "length 2"), ([1, 2, 1], "0 or 1"), ("1a1", "only 0 and 1"), ([0.5, 1, 1], "0 or 1"), (7, "sequence")],
)
def test_normalize_skip_rejects(bad, msg):
    with pytest.raises(EdgeskipError, match=msg):
        normalize_skip(bad, 3)


def test_forward_rejects_bad_skip():
    m = build_model(ResNetConfig(depth=20)).eval()
    with pytest.raises(EdgeskipError, match="B_s = 6"):
        m(torch.randn(1, 3, 32, 32), [1, 1, 1])
