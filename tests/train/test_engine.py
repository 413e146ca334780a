"""The one training engine: every objective (cross-entropy, SkipNet SP and HRL, DFS's two steps) resumes exactly,
and a new objective plugs in with its own per-sample statistics and validation figures."""

import pytest
import torch

from edgeskip.models.gates import GateConfig
from edgeskip.train import DataSpec, TrainConfig, load_checkpoint, train
from edgeskip.train.checkpoint import Checkpoint
from edgeskip.train.engine import run_epochs
from edgeskip.train.gates import GateTraining, train_gates
from edgeskip.train.loop import CrossEntropy, make_optimizer
from tests.conftest import TINY

TCFG = TrainConfig(epochs=3, batch_size=64, lr=0.05)


class Interrupt(Exception):
    pass


def run(kind, path, splits, resume=False, on_epoch_end=None):
    if kind == "ce":
        if resume:
            return train(path, DataSpec("digits"), resume=True, splits=splits, progress=False)
        return train(path, DataSpec("digits"), TINY, TCFG, splits=splits, progress=False, on_epoch_end=on_epoch_end)
    if resume:
        return train_gates(
            path, None, GateConfig(), TrainConfig(), GateTraining(), resume=True, splits=splits, progress=False
        )
    gates = GateConfig("dfs") if kind.startswith("dfs") else GateConfig("rnn")
    return train_gates(
        path,
        DataSpec("digits"),
        gates,
        TCFG,
        GateTraining(kind, alpha=0.5, cp_target=0.5),
        model_cfg=TINY,
        splits=splits,
        progress=False,
        on_epoch_end=on_epoch_end,
    )


@pytest.mark.parametrize("kind", ["ce", "sp", "hrl", "dfs-full", "dfs"])
def test_every_objective_resumes_exactly(tmp_path, digits_splits, kind):
    full = run(kind, tmp_path / "full.pt", digits_splits)

    def stop_after_first(ck):
        if ck.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(kind, tmp_path / "cut.pt", digits_splits, on_epoch_end=stop_after_first)
    assert load_checkpoint(tmp_path / "cut.pt").epoch == 1
    resumed = run(kind, tmp_path / "cut.pt", digits_splits, resume=True)
    assert resumed.epoch == 3 and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for k in full.state_dict:
        assert torch.equal(full.state_dict[k], resumed.state_dict[k]), k
    drop = ("seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in full.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in resumed.history
    ]
    if kind in ("sp", "hrl"):
        assert "train_skipped" in full.history[-1] and "val_macs" in full.history[-1]
    if kind.startswith("dfs"):
        assert "train_cp" in full.history[-1] and "val_cp" in full.history[-1]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


class Margin(CrossEntropy):
    """A new objective in a few lines: cross-entropy plus a per-sample statistic and a validation figure."""

    label = "margin "

    def loss(self, logits, yb):
        loss, logits, _ = super().loss(logits, yb)
        top2 = logits.detach().topk(2, dim=1).values
        return loss, logits, {"margin": float((top2[:, 0] - top2[:, 1]).sum())}

    def validate(self, splits, ddp):
        return {**super().validate(splits, ddp), "val_margin_runs": 1.0}

    def summary(self, rec):
        return f"  margin {rec['train_margin']:.2f}"


def test_a_new_objective_plugs_in(tmp_path, digits_splits, capsys):
    torch.manual_seed(0)
    from edgeskip.models import ResNetConfig, build_model

    cfg = ResNetConfig(**{**TINY.to_dict(), "num_classes": 10, "in_channels": 1, "input_size": (8, 8)})
    model = build_model(cfg).to(memory_format=torch.channels_last)
    tcfg = TrainConfig(epochs=2, batch_size=64, amp="fp32")
    steps = len(digits_splits.train) // 64
    opt, sched = make_optimizer(model, tcfg, steps)
    ck = Checkpoint(
        cfg,
        model.state_dict(),
        digits_splits.norm,
        digits_splits.class_names,
        digits_splits.dataset_id,
        DataSpec("digits"),
        tcfg,
    )
    ck = run_epochs(model, Margin(model, model), opt, sched, digits_splits, ck, tmp_path / "m.pt", steps)
    assert ck.epoch == 2 and load_checkpoint(tmp_path / "m.pt").epoch == 2
    rec = ck.history[-1]
    assert rec["train_margin"] > 0 and rec["val_margin_runs"] == 1.0 and 0 <= rec["val_acc"] <= 1
    err = capsys.readouterr().err
    assert "margin epoch 2/2" in err and "  margin " in err
