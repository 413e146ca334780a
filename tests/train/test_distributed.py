"""Data-parallel training under torchrun: 2 CPU processes (gloo) on a tiny model."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from edgeskip.data.batches import iterate
from edgeskip.train import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--depth", "8", "--width", "4", "--batch-size", "64", "--epochs", "3", "--quiet", "--threads", "1"]


def free_port():
    """A port free now on 127.0.0.1 (tests run in parallel workers, and other runs may share the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GROUP_IS_DESTROYED = """
import os, sys, torch
from edgeskip.models.config import ResNetConfig
from edgeskip.train import DataSpec, TrainConfig, train
torch.set_num_threads(1)
train(sys.argv[1], DataSpec(), ResNetConfig(depth=8, widths=(4, 8, 16)), TrainConfig(epochs=1, batch_size=64),
      progress=False)
comms = [open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task")]
left = sum(c.startswith(("pt_gloo", "gloo")) for c in comms)
open(sys.argv[1] + f".rank{os.environ['RANK']}", "w").write(str(left))  # a file each: printed lines interleave
"""


def torchrun(*args, nproc=2):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        "-m",
        "edgeskip",
        *map(str, args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def test_sharded_batches_are_the_single_process_batches(digits_splits):
    s = digits_splits
    whole = list(iterate(s.train, s.norm, 64, shuffle=True, augment=True, seed=5, drop_last=True))
    parts = [
        list(iterate(s.train, s.norm, 64, shuffle=True, augment=True, seed=5, drop_last=True, shard=(r, 2)))
        for r in range(2)
    ]
    assert len(whole) == len(parts[0]) == len(parts[1])
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        assert len(y0) == len(y1) == 32
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    # evaluation batches that do not split evenly: the last rank takes the remainder
    ev = [list(iterate(s.val, s.norm, 25, shard=(r, 2))) for r in range(2)]
    assert sum(len(y) for part in ev for _, y in part) == len(s.val)


@pytest.mark.slow
def test_torchrun_trains_checkpoints_and_resumes_exactly(tmp_path):
    full = tmp_path / "full.pt"
    res = torchrun("train", *TINY, "--out", full)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote") == 1  # rank 0 speaks for the run
    ck = load_checkpoint(full)
    assert ck.epoch == 3 and ck.train_cfg.world_size == 2 and len(ck.history) == 3

    cut = tmp_path / "cut.pt"
    res = torchrun("train", *TINY, "--out", cut, "--stop-after", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_checkpoint(cut).epoch == 1
    res = torchrun("train", "--out", cut, "--resume", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = load_checkpoint(cut)
    assert resumed.epoch == 3 and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for k in ck.state_dict:  # the seed (and the world size) determine the run
        assert torch.equal(ck.state_dict[k], resumed.state_dict[k]), k
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in ck.history]

    # a resume under another world size is refused with one line, exit 2
    one = subprocess.run(
        [sys.executable, "-m", "edgeskip", "train", "--out", str(full), "--resume"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert one.returncode == 2 and one.stderr.strip().count("\n") == 0, one.stderr
    assert "2 process(es)" in one.stderr and "this run has 1" in one.stderr


def test_the_process_group_is_destroyed_when_training_ends(tmp_path):
    # DDP pins a group created before torch.distributed.nn is imported; a live gloo group's threads can abort the
    # process at exit, after the checkpoint is written (bench/gloo_exit_abort.py). Its threads must be gone.
    script = tmp_path / "worker.py"
    script.write_text(GROUP_IS_DESTROYED)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    res = subprocess.run([*cmd, script, tmp_path / "m.pt"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    left = [(tmp_path / f"m.pt.rank{r}").read_text() for r in (0, 1)]
    assert left == ["0", "0"], f"gloo threads left after training, per rank: {left}"


def test_batch_that_does_not_split_is_refused(tmp_path):
    res = torchrun(
        "train",
        "--depth",
        "8",
        "--width",
        "4",
        "--batch-size",
        "63",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        tmp_path / "m.pt",
    )
    assert res.returncode != 0 and "does not split evenly over 2 processes" in res.stderr
    assert not (tmp_path / "m.pt").exists()
