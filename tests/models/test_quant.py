"""int8 block variants (#15): the quantised block against the float block, calibration, option arrays."""

import pytest
import torch

from edgeskip.data.batches import iterate
from edgeskip.errors import EdgeskipError
from edgeskip.models.quant import BlockQuant, Int8Block, Int8Stem, RestQuant, TensorQuant, calibrate, calibrate_rest
from edgeskip.models.resnet import BasicBlock
from edgeskip.pareto.design import calibration_batches
from edgeskip.pareto.evaluate import evaluate_skip_arrays
from edgeskip.skip import REST8


@pytest.fixture(scope="module")
def quantized(tiny_checkpoint, digits_splits):
    from edgeskip.train import load_checkpoint

    m = load_checkpoint(tiny_checkpoint).model().eval()
    cal = calibrate(m, calibration_batches(digits_splits, images=256), m.cfg.gated_blocks)
    m.attach_int8(cal)
    return m, cal


def test_tensor_quant_ranges():
    t = TensorQuant.from_range(0.0, 2.55)
    assert t.zero_point == 0 and t.scale == pytest.approx(0.01)
    a = TensorQuant.from_range(-1.0, 3.0)  # asymmetric: zero is exactly representable
    assert 0 < a.zero_point < 255 and a.scale == pytest.approx(4 / 255)
    x = torch.linspace(-1, 3, 1001)
    assert (a.fake(x) - x).abs().max() <= a.scale / 2 + 1e-6
    assert TensorQuant.from_range(0.5, 2.0).zero_point == 0  # the range always includes 0
    assert float(a.fake(torch.tensor([100.0]))) == pytest.approx(3.0, abs=a.scale)  # saturates


def test_int8_block_is_close_to_the_float_block(quantized, digits_splits):
    m, cal = quantized
    xb, _ = next(iterate(digits_splits.test, digits_splits.norm, 64))
    with torch.no_grad():
        h = m.stem(xb)
        for b in m.block_ids:
            block = m.blocks[str(b)]
            if b in cal:
                ref, got = block(h), m.int8[b](h)
                # a few output steps: the input, the mid activation and the weights each round once, and the
                # mid activation's error is summed over a 3x3 convolution (6.8 steps seen on the worst of 64 images
                # with a model trained in fp32, under 6 with bf16); a wrong scale or zero point is off by far more
                assert (got - ref).abs().max() <= 8 * cal[b].y.scale
                assert (got - ref).abs().mean() <= cal[b].y.scale
                # int8 weights: values in [-127, 127], the largest magnitude used
                q = m.int8[b]
                assert q.w1.dtype == torch.int8 and int(q.w1.abs().max()) == 127 and q.b1.dtype == torch.int32
            h = block(h)


def test_option_arrays_run_the_int8_variants(quantized, digits_splits):
    m, _ = quantized
    g = m.cfg.num_gates
    xb, _ = next(iterate(digits_splits.test, digits_splits.norm, 32))
    with torch.no_grad():
        full, all8 = m(xb, (1,) * g), m(xb, (8,) * g)
        assert not torch.equal(full, all8)
        assert (full.argmax(1) == all8.argmax(1)).float().mean() >= 0.9
        plan = dict(m.plan("810180"))  # gated blocks 1 2 4 5 7 8: 4 and 8 skipped, 1 and 7 in int8
        assert list(plan) == [0, 1, 2, 3, 5, 6, 7]
        assert [b for b, mod in plan.items() if isinstance(mod, Int8Block)] == [1, 7]
        # a skip array means exactly what it meant before
        assert torch.equal(m(xb, (1, 0, 1, 1, 0, 1)), m(xb, [True, False, True, True, False, True]))
    val = evaluate_skip_arrays(m, digits_splits.val, digits_splits.norm, [(1,) * g, (8,) * g])
    assert abs(val[0] - val[1]) <= 0.03  # int8 costs little accuracy on the tiny model
    torch_val = float(
        (
            m(torch.cat([x for x, _ in iterate(digits_splits.val, digits_splits.norm, 500)]), (8,) * g).argmax(1)
            == torch.as_tensor(digits_splits.val.y)
        )
        .float()
        .mean()
    )
    assert torch_val == pytest.approx(val[1])  # the shared-prefix evaluator runs the same int8 blocks


def test_bad_int8_requests(quantized, tiny_model, digits_splits):
    m, cal = quantized
    g = m.cfg.num_gates
    with pytest.raises(EdgeskipError, match="no int8 variant"):
        tiny_model(torch.zeros(1, *digits_splits.shape), (8,) * g)  # not calibrated
    with pytest.raises(EdgeskipError, match="not a gated block"):
        m.attach_int8({0: cal[1]})  # block 0 is a stage's first block
    with pytest.raises(EdgeskipError, match="projection shortcut needs"):
        Int8Block(BasicBlock(4, 8, 2, "proj", 1.0, "none"), cal[1])  # no calibrated scale for its projection
    with pytest.raises(EdgeskipError, match="calibration data is empty"):
        calibrate(m, [], m.cfg.gated_blocks)
    with pytest.raises(EdgeskipError, match="option array values must be 0 or 1 or 8"):
        m(torch.zeros(1, *digits_splits.shape), (2,) * g)
    with pytest.raises(EdgeskipError, match="scale must be > 0"):
        BlockQuant.from_dict({k: {"scale": 0.0 if k == "c" else 1.0, "zero_point": 0} for k in "xhcy"})
    assert BlockQuant.from_dict(cal[1].to_dict()) == cal[1]


def test_the_rest_of_the_network_in_int8(quantized, digits_splits):
    """Issue #34: the stem, the ungated blocks (each stage's entry) and the head as one more int8 option."""
    m, _ = quantized
    g = m.cfg.num_gates
    rest = calibrate_rest(m, calibration_batches(digits_splits, images=256))
    assert sorted(rest.blocks) == [0, 3, 6] and rest.stem_x.zero_point > 0  # the normalised image is signed
    m.attach_int8_rest(rest)
    plan = dict(m.plan("810180+8"))
    assert [b for b, mod in plan.items() if isinstance(mod, Int8Block)] == [0, 1, 3, 6, 7]
    assert m.ends("810180") is None and isinstance(m.ends("810180+8")[0], Int8Stem)
    xb, _ = next(iterate(digits_splits.test, digits_splits.norm, 64))
    with torch.no_grad():
        h = m.stem(xb)
        for b in m.block_ids:  # an entry block's int8 variant (strided, zero-padded shortcut) is close to it
            if b in rest.blocks:
                ref, got = m.blocks[str(b)](h), m.int8_rest[str(b)](h)
                assert (got - ref).abs().max() <= 8 * rest.blocks[b].y.scale
            h = m.blocks[str(b)](h)
        full, whole = m(xb, (1,) * g), m(xb, (8,) * g + (REST8,))
        assert not torch.equal(full, whole) and (full.argmax(1) == whole.argmax(1)).float().mean() >= 0.9
    configs = [(1,) * g, (1,) * g + (REST8,), (8,) * g + (REST8,), (8, 1, 0, 1, 8, 0, REST8)]
    val = evaluate_skip_arrays(m, digits_splits.val, digits_splits.norm, configs)
    assert abs(val[0] - val[2]) <= 0.03
    x = torch.cat([x for x, _ in iterate(digits_splits.val, digits_splits.norm, 500)])
    y = torch.as_tensor(digits_splits.val.y)
    with torch.no_grad():
        direct = [float((m(x, c).argmax(1) == y).float().mean()) for c in configs]
    assert direct == pytest.approx(val)  # the shared-prefix evaluator runs the int8 stem, entries and head too
    with pytest.raises(EdgeskipError, match="int8 calibration of the rest names blocks"):
        m.attach_int8_rest(RestQuant(rest.stem_x, rest.stem_y, {0: rest.blocks[0]}, rest.head))


def test_fake_quantisation_evaluates_bit_identical_to_the_exported_ops():
    """TensorQuant.fake runs in place outside export (2x faster int8 evaluation); the values are exactly those of
    the Q and DQ ops the graph carries, asymmetric zero point and saturation included."""
    from edgeskip.models.quant import U8, qd

    t = TensorQuant(0.0937, 3)
    x = torch.randn(100_000) * 12
    before = x.clone()
    q = qd.quantize_per_tensor(x, t.scale, t.zero_point, *U8, torch.uint8)
    assert torch.equal(t.fake(x), qd.dequantize_per_tensor(q, t.scale, t.zero_point, *U8, torch.uint8))
    assert torch.equal(x, before)  # the input is not modified in place
