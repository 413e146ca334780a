"""Any CNN with residual blocks: block discovery, the chain cut, skipping, stochastic depth and traced MACs."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from edgeskip.errors import EdgeskipError
from edgeskip.models import NetConfig, ResNetConfig, build_model, macs, zoo
from edgeskip.models.chain import ChainNet, ResidualUnit
from edgeskip.models.cost import breakdown, count_macs
from edgeskip.models.residual import ResidualSplit, find_blocks, select_blocks, why_not_residual

torch.set_num_threads(1)

# (source, factory arguments, number of gated blocks)
FAMILIES = [
    ("torchvision:resnet18", {}, 5),  # layer1.0 keeps its shape: identity shortcut, gated
    ("torchvision:resnet34", {}, 13),
    ("torchvision:resnet50", {}, 12),
    ("torchvision:wide_resnet50_2", {}, 12),
    ("torchvision:resnext50_32x4d", {}, 12),
    ("torchvision:mobilenet_v2", {"width_mult": 0.25}, None),
    ("timm:resnet18", {"channels": [8, 16, 32, 64], "stem_width": 8}, 4),
    ("timm:resnet26d", {"channels": [8, 16, 32, 64], "stem_width": 8}, 4),
    # their own stochastic depth / drop-path and (timm) BatchNormAct2d with shape assertions (issue #35)
    ("torchvision:efficientnet_b0", {}, 9),
    ("timm:mobilenetv3_small_050", {}, 7),
]


def _identity_shortcut_blocks(source):
    """The oracle: the library's own flags (ResNet blocks without downsample, InvertedResidual/MBConv
    use_res_connect, timm's has_skip)."""
    out = []
    for n, m in source.named_modules():
        kind = type(m).__name__
        if kind in ("BasicBlock", "Bottleneck") and m.downsample is None:
            out.append(n)
        elif kind in ("InvertedResidual", "MBConv") and getattr(m, "use_res_connect", False):
            out.append(n)
        elif getattr(m, "has_skip", False):  # timm's mobile blocks
            out.append(n)
    return out


def _source(spec, kw, seed=0):
    torch.manual_seed(seed)
    return zoo.create(spec, 10, 3, kw)


@pytest.mark.parametrize("spec,kw,expected", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_each_family_cuts_into_a_chain_that_computes_the_source_model(spec, kw, expected):
    source = _source(spec, kw).eval()
    found = find_blocks(source)
    assert found == _identity_shortcut_blocks(source)
    if expected is not None:
        assert len(found) == expected
    net = ChainNet(NetConfig(spec, kwargs=kw), source).eval()
    assert net.cfg.blocks == tuple(found) and net.cfg.num_gates == len(found)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), source(x), rtol=1e-5, atol=1e-5)
        # every option array is one forward walk: all-skip and a mixed array run and differ from the full net
        g = net.cfg.num_gates
        assert net(x, [0] * g).shape == (2, 10)
    bd = count_macs(net)
    assert all(bd.blocks[b] > 0 for b in net.cfg.gated_blocks)
    assert macs(net.cfg, [0] * g) == bd.total() - sum(bd.blocks[b] for b in net.cfg.gated_blocks)


def test_a_models_own_mode_dependent_layers_follow_the_networks_mode():
    """Eval means eval (issue #35): a source model built in training mode (as factories build it) is traced with its
    stochastic depth, drop-path, dropout and norm layers as modules, not with their training flag frozen into the
    graph (torchvision's ``stochastic_depth(x, p, 'row', True)`` used to run in eval mode, at random)."""
    from edgeskip.models.residual import mode_dependent

    for spec, kw in (("torchvision:efficientnet_b0", {}), ("timm:mobilenetv3_small_050", {"drop_path_rate": 0.2})):
        source = _source(spec, kw)
        assert source.training
        net = ChainNet(NetConfig(spec, kwargs=kw), source)
        for gm in (m for m in net.modules() if isinstance(m, torch.fx.GraphModule)):
            for n in gm.graph.nodes:  # no frozen mode, no shape assertion left in any traced piece
                frozen = any(a is True for a in n.args[1:]) or n.kwargs.get("training") is True
                assert not (n.op == "call_function" and frozen), (spec, n.format_node())
                assert n.target not in (torch._assert, torch._assert_async), (spec, n.format_node())
        own = [m for m in net.modules() if mode_dependent(m) and not isinstance(m, nn.BatchNorm2d)]
        assert own, spec  # the model's own drop layers are in the network ...
        net.train()
        assert all(m.training for m in own)  # ... and follow its mode
        net.eval()
        x = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            a = net(x)
            assert torch.equal(a, net(x)), spec
            torch.testing.assert_close(a, source.eval()(x), rtol=1e-5, atol=1e-5)


def test_traced_mac_count_equals_the_builtin_resnets_formula():
    for cfg in (
        ResNetConfig(depth=20),
        ResNetConfig(depth=14, widths=(8, 16, 32), shortcut="proj"),
        ResNetConfig(depth=20, in_channels=1, input_size=(8, 8), num_classes=10),
    ):
        assert count_macs(build_model(cfg)) == breakdown(cfg)


def test_a_skipped_block_computes_what_a_zero_branch_would():
    """Skipping block b == running it with F(x) = 0; for ReLU-tailed blocks on a non-negative input nothing runs."""
    torch.manual_seed(0)
    net = build_model(NetConfig("torchvision:resnet18")).eval()
    x = torch.randn(2, 3, 32, 32)
    for k, b in enumerate(net.cfg.gated_blocks):
        assert net.bypass(b) is None  # each input is a ReLU output (or a max-pool of one): relu(x) == x
        skip = [1] * net.cfg.num_gates
        skip[k] = 0
        unit = net.blocks[str(b)]
        bn = [m for m in unit.branch.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        saved = (bn.weight.clone(), bn.bias.clone())
        with torch.no_grad():
            bn.weight.zero_(), bn.bias.zero_()
            zero = net(x)
            bn.weight.copy_(saved[0]), bn.bias.copy_(saved[1])
            torch.testing.assert_close(net(x, skip), zero)


def test_a_tail_that_is_not_the_identity_runs_when_its_block_is_skipped():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, 1, 1)

        def forward(self, x):
            return torch.tanh(x + self.conv(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, 1, 1)
            self.b = Block()
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.b(self.stem(x)).mean((2, 3)))

    split = why_not_residual(Block())
    assert isinstance(split, ResidualSplit) and split.tail is not None and not split.tail_is_relu
    src = Net().eval()
    net = ChainNet(NetConfig("x.y:z", blocks=("b",)), src).eval()
    x = torch.randn(1, 3, 8, 8)
    assert net.bypass(0) is not None
    with torch.no_grad():
        torch.testing.assert_close(net(x, [0]), src.fc(torch.tanh(src.stem(x)).mean((2, 3))))


def test_stochastic_depth_in_batch_mode_does_not_compute_dropped_branches():
    torch.manual_seed(0)
    net = build_model(NetConfig("torchvision:resnet18", p_last=0.5))
    units = [net.blocks[str(b)] for b in net.cfg.gated_blocks]
    assert all(isinstance(u, ResidualUnit) for u in units)
    probs = [u.p_survive for u in units]
    assert probs == sorted(probs, reverse=True) and probs[-1] == pytest.approx(0.5)
    calls = [0] * len(units)
    for k, u in enumerate(units):
        u.branch.register_forward_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1))
    net.train()
    x = torch.randn(4, 3, 32, 32)
    for _ in range(40):
        net(x)
    assert calls[-1] < 32 and calls[0] > calls[-1]  # the last survives p=0.5 of 40 batches
    net.eval()
    before = list(calls)
    net(x)
    assert [c - b for c, b in zip(calls, before)] == [1] * len(units)


def test_user_blocks_by_path_and_glob_and_the_errors():
    src = _source("torchvision:resnet18", {})
    assert select_blocks(src, ["layer*.1"]) == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    net = ChainNet(NetConfig("torchvision:resnet18", blocks=("layer2.1", "layer4.1")), src)
    assert net.cfg.blocks == ("layer2.1", "layer4.1") and net.cfg.num_gates == 2
    with pytest.raises(EdgeskipError, match="identity shortcut"):
        select_blocks(src, ["layer2.0"])  # has a projection (downsample) shortcut
    with pytest.raises(EdgeskipError, match="names no module"):
        select_blocks(src, ["layer9.*"])
    with pytest.raises(EdgeskipError, match="identity shortcut"):
        ChainNet(NetConfig("torchvision:resnet18", blocks=("layer3.0",)), _source("torchvision:resnet18", {}))


def _user_module(tmp_path, monkeypatch, body):
    name = f"usermodels_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name


def test_a_users_factory_from_a_file(tmp_path, monkeypatch):
    mod = _user_module(
        tmp_path,
        monkeypatch,
        """
        import torch
        from torch import nn

        class Res(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.f = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1))
            def forward(self, x):
                return x + self.f(x)

        def tiny(num_classes, in_channels, width=8):
            return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1), nn.ReLU(), Res(width), Res(width),
                                 nn.Conv2d(width, 2 * width, 3, 2, 1), Res(2 * width), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(2 * width, num_classes))

        def bare():
            return tiny(10, 1)

        def broken(num_classes):
            raise ValueError("no such width")

        def not_a_module(num_classes):
            return 42

        def plain(num_classes, in_channels):
            return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, num_classes))

        class Dense(nn.Module):  # a value crosses a block: not a chain
            def __init__(self):
                super().__init__()
                self.stem = nn.Conv2d(1, 4, 3, 1, 1)
                self.b = Res(4)
                self.fc = nn.Linear(8, 10)
            def forward(self, x):
                h = self.stem(x)
                return self.fc(torch.cat([h, self.b(h)], 1).mean((2, 3)))

        def dense(num_classes):
            return Dense()

        def fixed8(num_classes, in_channels):  # its classifier takes the features of 8x8 images only
            return nn.Sequential(nn.Conv2d(in_channels, 4, 3, 1, 1), nn.ReLU(), Res(4), nn.Flatten(),
                                 nn.Linear(4 * 8 * 8, num_classes))
    """,
    )
    net = build_model(NetConfig(f"{mod}:tiny", in_channels=1, input_size=(8, 8), kwargs={"width": 4}))
    assert net.cfg.blocks == ("2", "3", "5") and net.cfg.num_gates == 3
    assert net(torch.randn(2, 1, 8, 8), [1, 0, 1]).shape == (2, 10)
    assert build_model(NetConfig(f"{mod}:bare", in_channels=1, input_size=(8, 8))).cfg.num_gates == 3
    for factory, msg in [
        ("broken", "factory raised ValueError: no such width"),
        ("not_a_module", "returned int"),
        ("plain", "no residual block"),
        ("dense", "not a chain"),
        ("missing", "no callable"),
    ]:
        with pytest.raises(EdgeskipError, match=msg):
            build_model(NetConfig(f"{mod}:{factory}", in_channels=1, input_size=(8, 8)))
    with pytest.raises(EdgeskipError, match="cannot take 1x5x5 inputs"):
        build_model(NetConfig(f"{mod}:fixed8", in_channels=1, input_size=(5, 5)))


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("resnet18", "SOURCE:NAME"),
        ("torchvision:no_such_net", "unknown torchvision model"),
        ("timm:no_such_net", "unknown timm model"),
        ("edgeskip:vgg16", "unknown built-in model"),
        ("9bad:x", "unknown model source"),
        ("no_such_module_xyz:f", "cannot import"),
    ],
)
def test_bad_model_sources(spec, msg):
    with pytest.raises(EdgeskipError, match=msg):
        if spec.startswith("edgeskip:"):
            zoo.builtin_depth(spec)
        else:
            build_model(NetConfig(spec))


def test_init_weights_load_by_name_and_shape_and_refuse_another_model(tmp_path):
    src = _source("torchvision:resnet18", {}, seed=1)
    state = {k: v for k, v in src.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # a pretrained ImageNet head: skipped, the rest loaded
    torch.save(state, tmp_path / "r18.pt")
    torch.manual_seed(2)
    net = build_model(NetConfig("torchvision:resnet18"), init_weights=str(tmp_path / "r18.pt"))
    torch.testing.assert_close(net.stem.conv1.weight, src.conv1.weight)
    assert not torch.equal(net.head_net.fc.weight, src.fc.weight)
    torch.save(_source("torchvision:mobilenet_v2", {"width_mult": 0.25}).state_dict(), tmp_path / "mb.pt")
    with pytest.raises(EdgeskipError, match="weights of another model"):
        build_model(NetConfig("torchvision:resnet18"), init_weights=str(tmp_path / "mb.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a state dict")
    with pytest.raises(EdgeskipError, match="not a readable state dict"):
        build_model(NetConfig("torchvision:resnet18"), init_weights=str(tmp_path / "junk.pt"))


def test_resolved_config_round_trips_and_rebuilds_the_same_network():
    torch.manual_seed(0)
    net = build_model(NetConfig("torchvision:mobilenet_v2", kwargs={"width_mult": 0.25}))
    cfg2 = NetConfig.from_dict(net.cfg.to_dict())
    assert cfg2 == net.cfg
    again = build_model(cfg2)
    again.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), net.eval()(x))


@pytest.mark.parametrize(
    "spec,gmacs", [("torchvision:resnet18", 1.81), ("torchvision:resnet50", 4.09), ("torchvision:mobilenet_v2", 0.30)]
)
def test_traced_macs_at_224_match_torchvisions_published_counts(spec, gmacs):
    """torchvision's model cards give GFLOPS (multiply-accumulates) at 224x224, 1000 classes."""
    net = build_model(NetConfig(spec, input_size=(224, 224), num_classes=1000))
    assert round(count_macs(net).total() / 1e9, 2) == gmacs
