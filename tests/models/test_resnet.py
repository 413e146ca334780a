import random
import re

import pytest
import torch

from edgeskip.errors import EdgeskipError
from edgeskip.models import ResNetConfig, build_model, remove_blocks, skip_from_indices
from edgeskip.models.resnet import BasicBlock
from edgeskip.models.stochastic_depth import scale_rows


def _randomize_bn(model):
    """Make every block contribute (zero-init last BN would make branches vanish at init)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model


@pytest.mark.parametrize("shortcut", ["pad", "proj"])
def test_all_ones_equals_ungated(shortcut):
    m = _randomize_bn(build_model(ResNetConfig(depth=20, shortcut=shortcut))).eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(m(x), m(x, [1] * 6))
    assert torch.equal(m(x), m(x, torch.ones(6, dtype=torch.bool)))


@pytest.mark.parametrize("depth,shortcut", [(20, "pad"), (32, "proj")])
def test_skipping_equals_network_without_the_blocks(depth, shortcut):
    cfg = ResNetConfig(depth=depth, shortcut=shortcut, in_channels=1, input_size=(12, 10), num_classes=7)
    m = _randomize_bn(build_model(cfg)).eval()
    x = torch.randn(4, 1, 12, 10)
    rng = random.Random(0)
    arrays = [skip_from_indices([i], cfg.num_gates) for i in range(cfg.num_gates)]
    arrays += [tuple(rng.random() < 0.5 for _ in range(cfg.num_gates)) for _ in range(5)]
    for s in arrays:
        static = remove_blocks(m, s).eval()
        assert len(static.blocks) == cfg.num_blocks - s.count(False)
        assert torch.equal(m(x, s), static(x))
        assert not torch.equal(m(x, s), m(x)) or all(s)


def test_skipped_block_is_not_computed():
    m = build_model(ResNetConfig(depth=20)).eval()
    calls = []
    for name, blk in m.blocks.items():
        blk.conv1.register_forward_hook(lambda mod, i, o, name=name: calls.append(int(name)))
    m(torch.randn(1, 3, 32, 32), skip_from_indices([0, 3], 6))
    gated = m.cfg.gated_blocks
    assert gated[0] not in calls and gated[3] not in calls
    assert sorted(calls) == [b for b in range(9) if b not in (gated[0], gated[3])]


def test_gating_adds_no_parameters():
    m = build_model(ResNetConfig(depth=20))
    # hand count: stem conv+bn, 9 blocks of two conv+bn, fc (the standard 0.27M of He et al.)
    stem = 3 * 16 * 9 + 2 * 16

    def stage(cin, c, n):
        return (cin * c * 9 + 2 * c + c * c * 9 + 2 * c) + (n - 1) * 2 * (c * c * 9 + 2 * c)

    fc = 64 * 10 + 10
    assert sum(p.numel() for p in m.parameters()) == stem + stage(16, 16, 3) + stage(16, 32, 3) + stage(32, 64, 3) + fc
    assert sum(p.numel() for p in m.parameters()) == 269_722


def test_stochastic_depth_train_vs_eval():
    cfg = ResNetConfig(depth=20, p_last=0.2)
    torch.manual_seed(0)
    m = _randomize_bn(build_model(cfg))
    x = torch.randn(8, 3, 32, 32)
    calls = []
    for name, blk in m.blocks.items():
        blk.conv1.register_forward_hook(lambda mod, i, o, name=name: calls.append(int(name)))
    m.train()
    runs = 300
    counts = [0] * 9
    for _ in range(runs):
        calls.clear()
        m(x)
        for b in calls:
            counts[b] += 1
    # each block's branch is computed with its survival probability (linear decay to p_L = 0.2)
    for b, p in enumerate(cfg.survival_probs()):
        assert abs(counts[b] / runs - p) < 0.1, (b, counts[b] / runs, p)
    assert counts[8] < counts[0]
    m.eval()
    calls.clear()
    y1 = m(x)
    assert sorted(calls) == list(range(9))
    assert torch.equal(y1, m(x))


def test_survival_probabilities_linear_decay():
    cfg = ResNetConfig(depth=20, p_last=0.5)
    p = cfg.survival_probs()
    assert len(p) == 9 and p[-1] == pytest.approx(0.5) and p[0] == pytest.approx(1 - 0.5 / 9)
    assert all(a > b for a, b in zip(p, p[1:]))
    m = build_model(ResNetConfig(depth=20, sd_mode="none"))
    assert all(b.p_survive == 1.0 for b in m.blocks.values())


def test_sd_scope_gated_keeps_stage_entry_blocks():
    full, gated = ResNetConfig(depth=20).survival_probs(), ResNetConfig(depth=20, sd_scope="gated").survival_probs()
    for i in range(9):  # blocks 0, 3, 6 open their stage: never gated, so never dropped in training
        assert gated[i] == (1.0 if i % 3 == 0 else full[i])
    m = build_model(ResNetConfig(depth=20, sd_scope="gated")).train()
    assert [m.blocks[str(i)].p_survive for i in (0, 3, 6)] == [1.0] * 3
    with pytest.raises(EdgeskipError, match="scope"):
        ResNetConfig(sd_scope="some")


def test_row_mode_drops_per_sample_with_inverted_scaling():
    torch.manual_seed(0)
    branch = torch.ones(1000, 2, 3, 3)
    out = scale_rows(branch, 0.25, training=True)
    per_row = out.flatten(1)
    assert set(per_row.unique().tolist()) <= {0.0, 4.0}
    assert 0.15 < (per_row[:, 0] > 0).float().mean() < 0.35
    assert torch.equal(scale_rows(branch, 0.25, training=False), branch)


def test_eval_block_is_plain_residual():
    blk = BasicBlock(16, 16, 1, "pad", p_survive=0.5, sd_mode="batch").eval()
    _randomize_bn(blk)
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(blk(x), torch.relu(x + blk.branch(x)))


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"depth": 21}, "6n+2"),
        ({"depth": 2}, "6n+2"),
        ({"p_last": 0.0}, "(0, 1]"),
        ({"p_last": 1.5}, "(0, 1]"),
        ({"shortcut": "x"}, "shortcut"),
        ({"sd_mode": "x"}, "mode"),
    ],
)
def test_bad_configs(kwargs, msg):
    with pytest.raises(EdgeskipError, match=re.escape(msg)):
        ResNetConfig(**kwargs)


def test_config_roundtrip():
    cfg = ResNetConfig(depth=32, widths=(8, 16, 32), input_size=(8, 8), in_channels=1)
    assert ResNetConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.num_gates == 12 and cfg.gated_blocks[:4] == (1, 2, 3, 4) and 5 not in cfg.gated_blocks


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_last_is_an_option(zero_init):
    m = build_model(ResNetConfig(depth=14, zero_init_last=zero_init))
    scales = torch.cat([b.bn2.weight for b in m.blocks.values()])
    assert torch.all(scales == (0.0 if zero_init else 1.0))
    assert torch.all(m.blocks["0"].bn1.weight == 1.0)
    assert ResNetConfig.from_dict(ResNetConfig(zero_init_last=zero_init).to_dict()).zero_init_last is zero_init
