"""Gate training on digits: SP lowers the loss, HRL trades accuracy for skipping, resume is exact."""

import subprocess
import sys

import pytest
import torch

from edgeskip.errors import EdgeskipError
from edgeskip.models.gates import GateConfig
from edgeskip.train import DataSpec, TrainConfig, load_checkpoint
from edgeskip.train.gates import GateTraining, evaluate_gated, train_gates
from tests.conftest import TINY


class Interrupt(Exception):
    pass


def test_sp_from_scratch_lowers_the_loss(tmp_path, digits_splits):
    ck = train_gates(
        tmp_path / "sp.pt",
        DataSpec("digits"),
        GateConfig("ffgate2"),
        TrainConfig(epochs=4, batch_size=64),
        GateTraining("sp"),
        model_cfg=TINY,
        splits=digits_splits,
        progress=False,
    )
    losses = [h["loss"] for h in ck.history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert ck.history[-1]["val_acc"] > 0.8
    again = load_checkpoint(tmp_path / "sp.pt")
    assert again.gate_cfg == GateConfig("ffgate2") and again.gate_training["mode"] == "sp"


def test_sp_from_a_backbone_keeps_its_splits_and_accuracy(tmp_path, tiny_checkpoint):
    base = load_checkpoint(tiny_checkpoint)
    ck = train_gates(
        tmp_path / "g.pt",
        None,
        GateConfig("rnn"),
        TrainConfig(epochs=2, batch_size=64, lr=0.01),
        GateTraining("sp"),
        init=tiny_checkpoint,
        progress=False,
    )
    assert ck.data == base.data and ck.dataset_id == base.dataset_id and ck.norm.to_dict() == base.norm.to_dict()
    assert ck.gate_training["init"] == str(tiny_checkpoint)
    assert ck.history[-1]["val_acc"] >= base.history[-1]["val_acc"] - 0.03


@pytest.fixture(scope="module")
def sp_checkpoint(tmp_path_factory, tiny_checkpoint):
    path = tmp_path_factory.mktemp("sp") / "sp.pt"
    train_gates(
        path,
        None,
        GateConfig("ffgate1"),
        TrainConfig(epochs=2, batch_size=64, lr=0.01),
        GateTraining("sp"),
        init=tiny_checkpoint,
        progress=False,
    )
    return path


def test_hrl_skip_reward_increases_skipping(tmp_path, sp_checkpoint, digits_splits):
    sp = load_checkpoint(sp_checkpoint)
    before = evaluate_gated(sp.model(), digits_splits.val, sp.norm)
    ck = train_gates(
        tmp_path / "hrl.pt",
        None,
        GateConfig("ffgate1"),
        TrainConfig(epochs=8, batch_size=64, lr=0.01),
        GateTraining("hrl", alpha=1.0),
        init=sp_checkpoint,
        progress=False,
    )
    after = evaluate_gated(ck.model(), digits_splits.val, ck.norm)
    assert after.mean_skipped > before.mean_skipped + 0.3, (before, after)
    assert after.mean_macs < before.mean_macs
    assert after.accuracy > 0.85


@pytest.mark.parametrize("credit", ["shared", "to-go"])
def test_hrl_credit_assignment(credit):
    """Input 0 skips only the first gated block, input 1 executes both; equal losses. Shared credit rewards both
    of input 0's decisions for that skip; SkipNet's return-to-go credits only the first gate (and the gates before
    a skip), so the second gate's decisions get no gradient."""
    from edgeskip.models.skipnet import GatedOutput
    from edgeskip.train.gates import GateObjective

    logps = torch.full((2, 2), -0.5, requires_grad=True)
    out = GatedOutput(
        torch.zeros(2, 3, requires_grad=True),
        torch.tensor([[False, True], [True, True]]),
        torch.full((2, 2), 0.5),
        logps.sum(1),
        logps,
    )
    obj = GateObjective(None, GateTraining("hrl", alpha=2.0, credit=credit))
    loss, _, stats = obj.loss(out, torch.zeros(2, dtype=torch.long))
    loss.backward()
    assert stats["skipped"] == 1.0
    g = logps.grad
    assert g[0, 0] < 0 and g[1, 0] > 0  # the skip is rewarded at the first gate either way
    if credit == "to-go":
        assert torch.equal(g[:, 1], torch.zeros(2))
    else:
        assert torch.equal(g[:, 1], g[:, 0])


def test_resume_after_interruption_matches_uninterrupted(tmp_path, sp_checkpoint):
    args = (None, GateConfig("ffgate1"), TrainConfig(epochs=3, batch_size=64, lr=0.01), GateTraining("hrl", alpha=0.5))
    full = train_gates(tmp_path / "full.pt", *args, init=sp_checkpoint, progress=False)

    def stop(ck):
        if ck.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_gates(tmp_path / "cut.pt", *args, init=sp_checkpoint, progress=False, on_epoch_end=stop)
    resumed = train_gates(
        tmp_path / "cut.pt", None, GateConfig(), TrainConfig(), GateTraining(), resume=True, progress=False
    )
    assert resumed.epoch == 3 and resumed.gate_training["mode"] == "hrl"
    for k in full.state_dict:
        assert torch.equal(full.state_dict[k], resumed.state_dict[k]), k


def test_bad_gate_training_inputs(tmp_path, tiny_checkpoint, sp_checkpoint):
    with pytest.raises(EdgeskipError, match="has ffgate1 gates, not rnn"):
        train_gates(
            tmp_path / "x.pt", None, GateConfig("rnn"), TrainConfig(epochs=1), GateTraining(), init=sp_checkpoint
        )
    with pytest.raises(EdgeskipError, match="no gates"):
        train_gates(tiny_checkpoint, None, GateConfig(), TrainConfig(epochs=1), GateTraining(), resume=True)
    with pytest.raises(EdgeskipError, match="HRL credit must be one of"):
        GateTraining("hrl", credit="per-block")
    with pytest.raises(EdgeskipError, match="mode"):
        GateTraining("rl")
    with pytest.raises(EdgeskipError, match="exists"):
        train_gates(sp_checkpoint, None, GateConfig(), TrainConfig(epochs=1), GateTraining(), init=sp_checkpoint)
    assert not (tmp_path / "x.pt").exists()


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgeskip.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_cli_train_and_evaluate_skipnet(tmp_path, tiny_checkpoint):
    out = tmp_path / "cli.pt"
    r = _cli(
        "train",
        "--gates",
        "ffgate2",
        "--init",
        tiny_checkpoint,
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--lr",
        "0.01",
        "--out",
        out,
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stdout and load_checkpoint(out).gate_cfg.kind == "ffgate2"
    r = _cli("evaluate", "--checkpoint", out)
    assert r.returncode == 0 and "mean MACs" in r.stdout and "gates included" in r.stdout
    r = _cli("train", "--init", tiny_checkpoint, "--out", tmp_path / "y.pt")
    assert r.returncode == 2 and r.stderr.strip().startswith(
        "error: --init needs --gates (plain training starts from scratch"
    )
    r = _cli("train", "--gates", "rnn", "--init", out, "--out", tmp_path / "z.pt", "--epochs", "1")
    assert r.returncode == 2 and "has ffgate2 gates, not rnn" in r.stderr and len(r.stderr.strip().splitlines()) == 1
