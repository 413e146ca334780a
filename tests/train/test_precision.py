"""The fast training path (bf16 autocast, torch.compile) against fp32 eager, and its option checks."""

import pytest
import torch

from edgeskip.errors import EdgeskipError
from edgeskip.models import ResNetConfig, build_model
from edgeskip.train import DataSpec, TrainConfig, load_checkpoint, precision, train
from edgeskip.train.loop import make_optimizer, train_step

TINY = ResNetConfig(depth=14, widths=(8, 16, 32), num_classes=10, in_channels=1, input_size=(8, 8), sd_mode="none")
needs_bf16 = pytest.mark.skipif(not precision.cpu_has_native_bf16(), reason="this CPU has no native bf16")


def one_step(cfg: TrainConfig, compile_: bool = False):
    """Loss, logits and gradients of one step from the same initial weights and batch."""
    torch.manual_seed(0)
    model = build_model(TINY).to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg, 10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 1, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,), generator=g)
    forward = torch.compile(model) if compile_ else model
    loss, logits = train_step(forward, opt, sched, x, y, cfg)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(loss), logits.detach(), grads


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@needs_bf16
def test_bf16_step_matches_fp32_within_tolerance():
    # stated tolerance: bf16 keeps 8 mantissa bits (~0.4% per rounding), so the loss agrees to 2%, logits to 3%
    # of their scale, and the gradient direction, after 14 layers forward and back, to cosine >= 0.98
    l32, z32, g32 = one_step(TrainConfig(amp="fp32"))
    l16, z16, g16 = one_step(TrainConfig(amp="bf16"))
    assert abs(l16 - l32) <= 0.02 * abs(l32)
    assert float((z16 - z32).abs().max()) <= 0.03 * float(z32.abs().max()) + 1e-3
    assert cosine(g16, g32) >= 0.98
    assert not torch.equal(z16, z32)  # bf16 really ran


def test_convolutions_that_stride_past_their_input_run_in_fp32_under_bf16():
    """oneDNN's bf16 weight gradient is wrong where a convolution's stride exceeds its input
    (bench/onednn_bf16_stride.py): inside edgeskip's autocast those run in fp32, every other convolution in bf16."""
    assert precision.stride_beyond_input(torch.zeros(1, 16, 1, 1), torch.zeros(32, 16, 3, 3), 2)
    assert precision.stride_beyond_input(torch.zeros(1, 16, 3, 3), torch.zeros(32, 16, 3, 3), (1, 4))
    assert not precision.stride_beyond_input(torch.zeros(1, 16, 2, 2), torch.zeros(32, 16, 3, 3), 2)
    assert not precision.stride_beyond_input(torch.zeros(1, 16, 1, 1), torch.zeros(32, 16, 1, 1), 2)  # 1x1 kernel
    assert not precision.stride_beyond_input(torch.zeros(1, 16, 1, 1), torch.zeros(32, 16, 3, 3), 1)
    past, within = torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.Conv2d(16, 32, 3, 2, 1)
    with precision.autocast("bf16"):
        assert past(torch.randn(4, 16, 1, 1)).dtype == torch.float32
        assert within(torch.randn(4, 16, 4, 4)).dtype == torch.bfloat16
        assert (
            torch.nn.functional.conv2d(torch.randn(4, 16, 2, 2), past.weight, stride=3, padding=1).dtype
            == torch.float32
        )
    assert past(torch.randn(4, 16, 1, 1)).dtype == torch.float32  # outside autocast: untouched


@needs_bf16
def test_bf16_weight_gradient_of_a_convolution_striding_past_its_input():
    # without the workaround 9 of 10 such gradients hold stale memory (up to 1e37) on this kind of CPU
    for seed in range(10):
        torch.manual_seed(seed)
        conv = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(128, 16, 1, 1).contiguous(memory_format=torch.channels_last)
        with precision.autocast("bf16"):
            y = conv(x)
        y.float().square().mean().backward()
        got, conv.weight.grad = conv.weight.grad.clone(), None
        conv(x).square().mean().backward()
        assert float((got - conv.weight.grad).abs().max()) <= 0.02 * float(conv.weight.grad.abs().max())


def test_compiled_step_matches_eager():
    l0, z0, g0 = one_step(TrainConfig(amp="fp32"))
    l1, z1, g1 = one_step(TrainConfig(amp="fp32"), compile_=True)
    assert l1 == pytest.approx(l0, rel=1e-4)
    assert torch.allclose(z1, z0, atol=1e-4, rtol=1e-4)
    assert cosine(g1, g0) >= 0.9999


@needs_bf16
def test_bf16_training_reaches_fp32_accuracy(tmp_path, digits_splits):
    # equal epochs, same seed: validation accuracy within 3 points on digits
    cfg = ResNetConfig(depth=14, widths=(8, 16, 32))
    acc = {}
    for amp in ("fp32", "bf16"):
        ck = train(
            tmp_path / f"{amp}.pt",
            DataSpec("digits"),
            cfg,
            TrainConfig(epochs=4, batch_size=64, amp=amp),
            splits=digits_splits,
            progress=False,
        )
        assert ck.train_cfg.amp == amp
        acc[amp] = ck.history[-1]["val_acc"]
    assert acc["fp32"] > 0.8 and abs(acc["bf16"] - acc["fp32"]) <= 0.03, acc


def test_auto_resolves_and_is_recorded(tmp_path, digits_splits):
    ck = train(
        tmp_path / "a.pt",
        DataSpec("digits"),
        ResNetConfig(depth=8, widths=(4, 8, 16)),
        TrainConfig(epochs=1, batch_size=64),
        splits=digits_splits,
        progress=False,
    )
    want = "bf16" if precision.cpu_has_native_bf16() else "fp32"
    assert ck.train_cfg.amp == want and load_checkpoint(tmp_path / "a.pt").train_cfg.amp == want


def test_bf16_refused_without_native_support(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(EdgeskipError, match="no native bf16"):
        precision.resolve_amp("bf16")
    assert precision.resolve_amp("auto") == "fp32"  # auto falls back to fp32 silently: it is the documented rule
    assert precision.resolve_amp("fp32") == "fp32"


def test_resume_of_a_bf16_run_refused_without_bf16(tmp_path, digits_splits, monkeypatch):
    path = tmp_path / "r.pt"
    train(
        path,
        DataSpec("digits"),
        ResNetConfig(depth=8, widths=(4, 8, 16)),
        TrainConfig(epochs=2, batch_size=64, amp="fp32"),
        splits=digits_splits,
        progress=False,
        stop_after=1,
    )
    ck = load_checkpoint(path)
    ck.train_cfg = TrainConfig.from_dict({**ck.train_cfg.to_dict(), "amp": "bf16"})
    ck.save(path)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(EdgeskipError, match="no native bf16"):
        train(path, DataSpec("digits"), resume=True, progress=False)


def test_old_checkpoints_read_as_fp32():
    d = TrainConfig().to_dict()
    del d["amp"], d["compile"], d["world_size"]
    cfg = TrainConfig.from_dict(d)
    assert cfg.amp == "fp32" and cfg.world_size == 1 and not cfg.compile


@pytest.mark.parametrize("kwargs", [{"amp": "fp16"}, {"world_size": 0}])
def test_bad_precision_configs(kwargs):
    with pytest.raises(EdgeskipError):
        TrainConfig(**kwargs)
