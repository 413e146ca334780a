"""Dynamic Fractional Skipping (#14): gate shapes, cost accounting, option selection, the cp controller."""

import pytest
import torch

from edgeskip.data.batches import iterate
from edgeskip.errors import EdgeskipError
from edgeskip.models import ResNetConfig
from edgeskip.models.dfs import DFSResNet, fake_quant, option_costs, quant_params
from edgeskip.models.gates import GateConfig, gate_macs
from edgeskip.train import DataSpec, TrainConfig, load_checkpoint
from edgeskip.train.gates import GateTraining, evaluate_dfs, train_gates
from tests.conftest import TINY

CFG = ResNetConfig(**{**TINY.to_dict(), "num_classes": 10, "in_channels": 1, "input_size": (8, 8)})


def fresh(bits=(8, 16)):
    torch.manual_seed(0)
    return DFSResNet(CFG, GateConfig("dfs", bits=bits))


def test_gate_shapes_and_cost_accounting():
    m = fresh()
    assert GateConfig("dfs").options == (0, 8, 16, 32)
    assert option_costs(GateConfig("dfs")) == (0.0, 0.0625, 0.25, 1.0)  # (k/32)^2
    x = torch.randn(5, 1, 8, 8)
    for train in (True, False):
        m.train(train)
        out = m.run(x)
        assert out.logits.shape == (5, 10) and out.choice.shape == (5, 6) and out.probs.shape == (5, 6, 4)
        assert torch.allclose(out.probs.sum(2), torch.ones(5, 6))
        assert torch.all(out.choice == 3) and torch.allclose(out.cp, torch.ones(5))  # a fresh gate: all full
    # cp weighs each gated block by its MACs: stage widths double and sizes halve, so every block costs the same here
    assert torch.allclose(m.block_share, torch.full((6,), 1 / 6))
    with torch.no_grad():  # force 8-bit everywhere: cp = (8/32)^2
        m.gate_core.out.bias.copy_(torch.tensor([0.0, 9.0, 0.0, 0.0]))
    m.eval()
    assert torch.allclose(m.run(x).cp, torch.full((5,), 0.0625))
    rnn, dfs = GateConfig("rnn"), GateConfig("dfs")
    assert gate_macs(dfs, 16, 8, 8) - gate_macs(rnn, 16, 8, 8) == dfs.hidden_dim * 3  # 4 outputs instead of 1


def test_options_at_inference_are_the_block_variants(digits_splits):
    m = fresh()
    xb = next(iterate(digits_splits.test, digits_splits.norm, 32))[0]
    outs = {}
    for o in range(4):
        with torch.no_grad():
            bias = torch.zeros(4)
            bias[o] = 9.0
            m.gate_core.out.bias.copy_(bias)
            for r in m.ranges:  # unset: the training pass below sets each range from this batch exactly once
                r.lo.fill_(float("nan"))
                r.hi.fill_(float("nan"))
            m.train()
            for mod in m.modules():  # BatchNorm in eval: the comparison is about the selection, not BN statistics
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.eval()
            mixed = m.run(xb).logits  # training: every option computed, the straight-through one-hot selects
            m.eval()
            chosen = m.run(xb).logits  # eval: only the chosen option computed, per input
        assert torch.allclose(mixed, chosen, atol=1e-5), o
        outs[o] = chosen
    g = CFG.num_gates
    with torch.no_grad():
        assert torch.allclose(outs[0], m(xb, (0,) * g), atol=1e-5)  # skip everywhere = the all-skip backbone
        assert torch.allclose(outs[3], m(xb, (1,) * g), atol=1e-5)  # full everywhere = the backbone
    d8, d16 = (outs[1] - outs[3]).abs().max(), (outs[2] - outs[3]).abs().max()
    assert 0 < d16 < d8  # 16-bit is closer to full precision than 8-bit


def test_fake_quant_levels_and_gradient():
    x = torch.linspace(-0.5, 1, 1001, requires_grad=True)
    q = fake_quant(x, 4, -0.5, 1.0)  # scale 0.1, zero point 5: 16 levels, 0 exact
    assert len(torch.unique(q.detach())) == 16 and (q - x).abs().max() <= 0.05 + 1e-6
    assert float(fake_quant(torch.zeros(1), 4, -0.5, 1.0)) == 0.0
    assert float(fake_quant(torch.zeros(1), 8, 0.3, 1.0)) == 0.0  # a range above 0 is widened to include it
    scale, zp = quant_params(8, 0.3, 1.0)
    assert float(zp) == 0 and abs(float(scale) - 1 / 255) < 1e-9
    q.sum().backward()
    assert torch.all(x.grad == 1)  # straight-through


def test_cp_controller_moves_cp_toward_the_target(tmp_path, digits_splits):
    step1 = train_gates(
        tmp_path / "s1.pt",
        DataSpec("digits"),
        GateConfig("dfs"),
        TrainConfig(epochs=1, batch_size=64, lr=0.05),
        GateTraining("dfs-full"),
        model_cfg=TINY,
        splits=digits_splits,
        progress=False,
    )
    m1 = load_checkpoint(tmp_path / "s1.pt").model()
    start = evaluate_dfs(m1, digits_splits.val, digits_splits.norm)
    assert start.mean_cp == pytest.approx(1.0)
    ck = train_gates(
        tmp_path / "s2.pt",
        None,
        GateConfig("dfs"),
        TrainConfig(epochs=3, batch_size=64, lr=0.05),
        GateTraining("dfs", alpha=2.0, cp_target=0.3),
        init=tmp_path / "s1.pt",
        splits=digits_splits,
        progress=False,
    )
    cps = [h["val_cp"] for h in ck.history]
    assert cps[-1] < start.mean_cp - 0.2, cps  # pulled down from 1.0 toward 0.3
    assert all(0.0 <= c <= 1.0 for c in cps)
    del step1


def test_step1_freezes_the_backbone(tmp_path, digits_splits, tiny_checkpoint):
    ck = train_gates(
        tmp_path / "s1.pt",
        None,
        GateConfig("dfs"),
        TrainConfig(epochs=1, batch_size=64, lr=0.05),
        GateTraining("dfs-full"),
        init=tiny_checkpoint,
        splits=digits_splits,
        progress=False,
    )
    base = load_checkpoint(tiny_checkpoint).state_dict
    for k, v in base.items():
        if k.endswith(("weight", "bias")) and "bn" not in k and "stem.1" not in k:
            assert torch.equal(ck.state_dict[k], v), k


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: GateConfig("dfs", bits=(3,)), "DFS bit widths must be distinct values of 4, 8, 16"),
        (lambda: GateConfig("dfs", bits=(8, 8)), "distinct"),
        (lambda: GateConfig("lstm"), "gate kind must be one of"),
        (lambda: GateTraining("dfs", cp_target=0.0), "cp target must be in (0, 1]"),
        (lambda: GateTraining("dfs", cp_target=1.5), "cp target must be in (0, 1]"),
    ],
)
def test_bad_dfs_settings(make, fragment):
    with pytest.raises(EdgeskipError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_mode_must_fit_the_gate(tmp_path, digits_splits):
    with pytest.raises(EdgeskipError, match="does not train dfs gates"):
        train_gates(
            tmp_path / "x.pt",
            DataSpec("digits"),
            GateConfig("dfs"),
            TrainConfig(epochs=1),
            GateTraining("sp"),
            model_cfg=TINY,
            splits=digits_splits,
            progress=False,
        )
    with pytest.raises(EdgeskipError, match="does not train rnn gates"):
        train_gates(
            tmp_path / "y.pt",
            DataSpec("digits"),
            GateConfig("rnn"),
            TrainConfig(epochs=1),
            GateTraining("dfs"),
            model_cfg=TINY,
            splits=digits_splits,
            progress=False,
        )
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()
