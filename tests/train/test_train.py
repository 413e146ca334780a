import os

import pytest
import torch

from edgeskip.errors import EdgeskipError
from edgeskip.models import ResNetConfig
from edgeskip.train import DataSpec, TrainConfig, evaluate, load_checkpoint, load_model, train

CFG = ResNetConfig(depth=14, widths=(4, 8, 16))
TCFG = TrainConfig(epochs=3, batch_size=64, lr=0.05)


def test_trained_model_learns(tiny_checkpoint, digits_splits):
    model, ck = load_model(tiny_checkpoint)
    acc = evaluate(model, digits_splits.test, ck.norm)
    assert acc > 0.8, acc
    assert ck.history[-1]["loss"] < ck.history[0]["loss"]


def test_checkpoint_is_self_contained(tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)
    assert ck.model_cfg.in_channels == 1 and ck.model_cfg.input_size == (8, 8) and ck.model_cfg.num_classes == 10
    assert ck.model_cfg.sd_mode == "batch" and ck.model_cfg.p_last == 0.5
    assert ck.class_names == [str(i) for i in range(10)] and ck.dataset_id == "digits"
    assert len(ck.norm.mean) == 1 and ck.data.name == "digits" and ck.complete
    # only the checkpoint file itself: no side files
    assert sorted(os.listdir(tiny_checkpoint.parent)) == ["model.pt"]


def test_deterministic_given_seed(tmp_path, digits_splits):
    a = train(tmp_path / "a.pt", DataSpec("digits"), CFG, TCFG, splits=digits_splits, progress=False)
    b = train(tmp_path / "b.pt", DataSpec("digits"), CFG, TCFG, splits=digits_splits, progress=False)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


# exact resume: tests/train/test_engine.py (every objective)


def test_refuses_to_overwrite_and_resume_needs_a_file(tmp_path, tiny_checkpoint):
    with pytest.raises(EdgeskipError, match="--resume"):
        train(tiny_checkpoint, DataSpec("digits"), CFG, TCFG, progress=False)
    with pytest.raises(EdgeskipError, match="no checkpoint"):
        train(tmp_path / "none.pt", DataSpec("digits"), resume=True, progress=False)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(EdgeskipError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(EdgeskipError, match="not a readable edgeskip checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(EdgeskipError, match="not an edgeskip checkpoint"):
        load_checkpoint(other)


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(EdgeskipError, match="not a readable"):
        load_checkpoint(cut)


@pytest.mark.parametrize(
    "kwargs", [{"epochs": 0}, {"lr": -1.0}, {"schedule": "linear"}, {"label_smoothing": 1.0}, {"cutout": -1}]
)
def test_bad_train_configs(kwargs):
    with pytest.raises(EdgeskipError):
        TrainConfig(**kwargs)


def test_a_checkpoint_is_continued_only_with_the_settings_it_was_trained_with(tiny_checkpoint):
    """compile's implicit checkpoint (``.<out>.model.pt``) was resumed whatever --lr, --epochs or --model asked;
    settings_differ says what differs, and compile trains anew where anything does."""
    import dataclasses

    from edgeskip.models import NetConfig
    from edgeskip.train.checkpoint import settings_differ
    from tests.conftest import TINY

    ck = load_checkpoint(tiny_checkpoint)
    same = TrainConfig(epochs=12, batch_size=64, lr=0.1)
    assert settings_differ(ck, DataSpec("digits"), TINY, same) == []  # as asked before training: derived fields aside
    assert settings_differ(ck, DataSpec("digits"), TINY, dataclasses.replace(same, lr=0.05)) == ["lr: 0.1 -> 0.05"]
    wider = dataclasses.replace(TINY, widths=(16, 32, 64))
    assert settings_differ(ck, DataSpec("digits", seed=1), wider, same) == [
        "model widths: [8, 16, 32] -> [16, 32, 64]",
        "data seed: 0 -> 1",
    ]
    # a folder however it is spelled, --blocks as globs or in another order: the same run, continued
    here = os.path.relpath(os.getcwd())
    spelled = dataclasses.replace(ck, data=dataclasses.replace(ck.data, name="imagefolder", data_dir=os.getcwd()))
    assert settings_differ(spelled, DataSpec("imagefolder", data_dir=here + "/"), TINY, same) == []
    chain = NetConfig("torchvision:resnet18", blocks=("layer2.1", "layer4.1"))
    traced = dataclasses.replace(ck, model_cfg=dataclasses.replace(chain, blocks=("layer2.1", "layer4.1")))
    for asked in (("layer4.1", "layer2.1"), ("layer*.1",)):
        assert settings_differ(traced, ck.data, dataclasses.replace(chain, blocks=asked), same) == [], asked
    assert settings_differ(traced, ck.data, dataclasses.replace(chain, blocks=("layer3.1",)), same) == [
        "model blocks: ['layer2.1', 'layer4.1'] -> ['layer3.1']"
    ]
