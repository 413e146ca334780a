"""SkipNet gates on the shared backbone: shapes, exact costs, straight-through gradients, real per-input skipping."""

import pytest
import torch
from torch import nn

from edgeskip.errors import EdgeskipError
from edgeskip.models import CifarResNet, ResNetConfig, block_macs, build_model, macs
from edgeskip.models.gates import GateConfig
from edgeskip.models.skipnet import SkipNetResNet, gate_costs, skipnet_macs

R20 = ResNetConfig(depth=20)
TINY = ResNetConfig(depth=20, widths=(8, 16, 32), num_classes=10, in_channels=1, input_size=(8, 8))


def _randomized(kind, cfg=R20, seed=0):
    """A SkipNet whose blocks are not identities (random last-BN scales) and whose gates disagree across inputs."""
    torch.manual_seed(seed)
    m = SkipNetResNet(cfg, GateConfig(kind))
    for name, p in m.named_parameters():
        if name.endswith("bn2.weight"):
            nn.init.uniform_(p, 0.2, 1.0)
        elif ("linear" in name or "core.out" in name) and name.endswith("weight"):
            nn.init.normal_(p, 0, 3.0)
        elif ("linear" in name or "core.out" in name) and name.endswith("bias"):
            nn.init.zeros_(p)
    return m.eval()


def _measured_macs(module, x, *extra):
    """MACs of convolutions, linear layers and LSTM cells, counted from the real tensors by hooks."""
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            total[0] += (
                out.numel() // out.shape[0] * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
            )
        elif isinstance(mod, nn.Linear):
            total[0] += mod.in_features * mod.out_features
        elif isinstance(mod, nn.LSTMCell):
            total[0] += 4 * mod.hidden_size * (mod.input_size + mod.hidden_size)

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    with torch.no_grad():
        module(x, *extra)
    for h in handles:
        h.remove()
    return total[0]


@pytest.mark.parametrize("kind,expected,paper", [("ffgate1", 5 / 32, 0.19), ("ffgate2", 1 / 8, 0.125)])
def test_feedforward_gate_cost_relative_to_a_block(kind, expected, paper):
    ratios = [g / block_macs(R20)[b] for g, b in zip(gate_costs(R20, GateConfig(kind)), R20.gated_blocks)]
    # exact: the gate's convolutions (2x2 pool, then 3x3 s1 and 3x3 s2 for FFGate-I) plus the 1x1 output
    assert all(r == pytest.approx(expected, rel=2e-3) for r in ratios), ratios
    assert all(abs(r - paper) < 0.04 for r in ratios)  # SkipNet reports ~19% and 12.5%


def test_rnn_gate_cost_is_negligible():
    ratios = [g / block_macs(R20)[b] for g, b in zip(gate_costs(R20, GateConfig("rnn")), R20.gated_blocks)]
    assert all(0 < r < 0.0005 for r in ratios), ratios  # SkipNet: ~0.04% of a block


@pytest.mark.parametrize("kind", ["ffgate1", "ffgate2", "rnn"])
def test_cost_model_matches_the_real_modules(kind):
    m = _randomized(kind)
    x = torch.randn(1, 3, 32, 32)
    out = m.run(x)
    # per-input cost model = what the hooks count when this input's blocks are removed and all gates run
    assert _measured_macs(m, x) == skipnet_macs(R20, GateConfig(kind), out.execute[0])
    gates_only = sum(gate_costs(R20, GateConfig(kind)))
    assert skipnet_macs(R20, GateConfig(kind), [1] * 6) == macs(R20) + gates_only


@pytest.mark.parametrize("kind", ["ffgate1", "ffgate2", "rnn"])
def test_gate_shapes_and_placement(kind):
    m = SkipNetResNet(R20, GateConfig(kind))
    assert len(m.gates) == R20.num_gates == 6
    out = m.eval().run(torch.randn(5, 3, 32, 32))
    assert out.logits.shape == (5, 10) and out.execute.shape == (5, 6) and out.probs.shape == (5, 6)
    assert ((out.probs > 0) & (out.probs < 1)).all()
    # backbone parameter names are unchanged: a plain checkpoint's weights load with only gate keys missing
    missing, unexpected = m.load_state_dict(build_model(R20).state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith(("gates.", "gate_core.")) for k in missing)


@pytest.mark.parametrize("kind", ["ffgate1", "rnn"])
def test_fresh_gates_execute_everything_so_training_starts_from_the_backbone(kind):
    torch.manual_seed(1)
    backbone = build_model(R20).eval()
    for b in backbone.blocks.values():
        nn.init.uniform_(b.bn2.weight, 0.2, 1.0)
    m = SkipNetResNet(R20, GateConfig(kind))
    m.load_state_dict(backbone.state_dict(), strict=False)
    x = torch.randn(4, 3, 32, 32)
    out = m.eval().run(x)
    assert out.execute.all()
    torch.testing.assert_close(out.logits, backbone(x))


@pytest.mark.parametrize("kind", ["ffgate1", "ffgate2", "rnn"])
def test_per_input_skipping_equals_the_network_without_those_blocks(kind):
    m = _randomized(kind)
    x = torch.randn(16, 3, 32, 32)
    out = m.run(x)
    rates = (~out.execute).float().mean(0)
    assert ((rates > 0) & (rates < 1)).any(), "decisions must differ across inputs for this test to mean anything"
    backbone_state = {k: v for k, v in m.state_dict().items() if not k.startswith(("gates.", "gate_core."))}
    for i in range(len(x)):
        keep = m.executed_blocks(out.execute[i].tolist())
        static = CifarResNet(R20, keep=keep).eval()
        static.load_state_dict(
            {k: v for k, v in backbone_state.items() if not k.startswith("blocks.") or int(k.split(".")[1]) in keep}
        )
        torch.testing.assert_close(out.logits[i : i + 1], static(x[i : i + 1]), rtol=1e-5, atol=1e-5)
        single = m.run(x[i : i + 1])  # batch of one decides the same
        assert torch.equal(single.execute[0], out.execute[i])


def test_skipped_blocks_are_not_computed():
    m = _randomized("ffgate2")
    calls = []
    for b, block in m.blocks.items():
        block.register_forward_hook(lambda mod, inp, o, b=b: calls.append((b, inp[0].shape[0])))
    x = torch.randn(16, 3, 32, 32)
    out = m.run(x)
    rows = {str(b): int(out.execute[:, k].sum()) for k, b in enumerate(R20.gated_blocks)}
    for b, n in calls:
        if b in rows:
            assert n == rows[b] and n > 0  # only the inputs that execute the block reach it
    assert all(rows[b] == 0 for b in rows if b not in {c[0] for c in calls})


@pytest.mark.parametrize("kind", ["ffgate1", "ffgate2", "rnn"])
def test_straight_through_gradients_reach_every_gate(kind):
    m = _randomized(kind).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    out = m.run(x, "st")
    assert set(out.execute.unique().tolist()) <= {True, False}
    nn.functional.cross_entropy(out.logits, y).backward()
    if kind == "rnn":
        grads = [g.proj.weight.grad for g in m.gates] + [m.gate_core.lstm.weight_ih.grad]
    else:
        grads = [g.conv1[0].weight.grad for g in m.gates]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_hard_forward_soft_backward():
    m = _randomized("ffgate2").train()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        hard = m.eval().run(x)
    m.train()
    for mod in m.modules():  # batch statistics would change the numbers; compare like with like
        if isinstance(mod, nn.BatchNorm2d):
            mod.eval()
    st = m.run(x, "st")
    torch.testing.assert_close(st.logits, hard.logits, rtol=1e-5, atol=1e-5)  # forward uses hard 0/1 decisions
    assert torch.equal(st.execute, hard.execute)


def test_sampled_decisions_have_log_probabilities():
    m = _randomized("rnn").train()
    out = m.run(torch.randn(8, 3, 32, 32), "sample")
    assert out.log_prob.shape == (8,) and (out.log_prob <= 0).all() and out.log_prob.requires_grad


def test_bad_gate_configs():
    with pytest.raises(EdgeskipError, match="gate kind"):
        GateConfig("lstm")
    with pytest.raises(EdgeskipError, match="threshold"):
        GateConfig("ffgate1", threshold=1.0)
    with pytest.raises(EdgeskipError, match="unknown gate config"):
        GateConfig.from_dict({"kind": "rnn", "bogus": 1})


def test_tiny_inputs_work():
    m = _randomized("ffgate1", TINY)
    out = m.run(torch.randn(3, 1, 8, 8))
    assert out.logits.shape == (3, 10)
