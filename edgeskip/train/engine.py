"""The one training engine: epochs of optimizer steps under a pluggable objective, validation, an atomic
checkpoint after every epoch, exact resume.

An :class:`Objective` says what a step computes and what validation reports; the engine owns everything
else (batch order, augmentation, precision, the optimizer step, the divergence check, data parallelism,
the checkpoint and the progress line). Plain cross-entropy (``edgeskip train``) and SkipNet's SP and HRL
(``edgeskip train --gates``) are objectives; a new one is a small class.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from tqdm import tqdm

from edgeskip.data.batches import iterate
from edgeskip.data.dataset import Splits
from edgeskip.errors import EdgeskipError
from edgeskip.train.checkpoint import Checkpoint
from edgeskip.train.config import TrainConfig
from edgeskip.train.distributed import Distributed
from edgeskip.train.precision import autocast


class Objective(Protocol):
    """What a training step computes. ``label`` prefixes the progress line ("" or e.g. "hrl ")."""

    label: str

    def forward(self, xb: torch.Tensor) -> Any:
        """The network's output for a batch (run under the run's autocast)."""

    def loss(self, out: Any, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(loss to minimise, fp32 logits, per-batch sums of extra statistics, reported per sample as
        ``train_<name>``)."""

    def validate(self, splits: Splits, ddp: Distributed) -> dict[str, float]:
        """Validation figures for the epoch's record; ``val_acc`` among them."""

    def summary(self, rec: dict[str, float]) -> str:
        """What the epoch's progress line adds after the validation accuracy."""


def step(
    objective: Objective,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    xb: torch.Tensor,
    yb: torch.Tensor,
    amp: str,
    device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """One optimizer step on a batch: (loss, fp32 logits, extra statistics). ``amp`` must be resolved."""
    with autocast(amp, device):
        out = objective.forward(xb)
    loss, logits, extra = objective.loss(out, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss, logits, extra


def augment_default(cfg: TrainConfig, shape: tuple[int, int, int]) -> bool:
    """Crop + flip unless asked otherwise, for RGB images of at least 32x32."""
    if cfg.augment is not None:
        return cfg.augment
    c, h, w = shape
    return c == 3 and h >= 32 and w >= 32


def run_epochs(
    model: torch.nn.Module,
    objective: Objective,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    splits: Splits,
    ck: Checkpoint,
    out: str | os.PathLike,
    steps: int,
    ddp: Distributed | None = None,
    last: int | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[Checkpoint], None] | None = None,
) -> Checkpoint:
    """Train from ``ck``'s epoch to ``last`` (default: all of ``ck.train_cfg.epochs``), writing ``out`` after
    every epoch (rank 0) and returning the last checkpoint. ``ck`` holds the run's settings and history;
    the model, optimizer and scheduler are in the state it describes. Under torchrun each rank takes its
    shard of every batch, drawn exactly as the single-process run draws it."""
    ddp = ddp or Distributed()
    cfg = ck.train_cfg
    augment = augment_default(cfg, splits.shape)
    shard = (ddp.rank, ddp.world_size)
    progress = progress and ddp.is_main
    last = cfg.epochs if last is None else min(last, cfg.epochs)
    for epoch in range(ck.epoch, last):
        model.train()
        t0 = time.time()
        seen = correct = 0
        loss_sum = 0.0
        extra_sums: dict[str, float] = {}
        batches = iterate(
            splits.train,
            splits.norm,
            cfg.batch_size,
            shuffle=True,
            augment=augment,
            seed=cfg.seed * 100_003 + epoch,
            drop_last=True,
            shard=shard,
            cutout_size=cfg.cutout,
        )
        bar = tqdm(
            batches,
            total=steps,
            desc=f"{objective.label}epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not progress or not sys.stderr.isatty(),
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for xb, yb in bar:
            xb, yb = xb.to(ddp.device, memory_format=torch.channels_last), yb.to(ddp.device)
            loss, logits, extra = step(objective, opt, sched, xb, yb, cfg.amp, ddp.device)
            n = len(yb)
            seen += n
            loss_sum += loss.item() * n
            correct += int((logits.argmax(1) == yb).sum())
            for k, v in extra.items():
                extra_sums[k] = extra_sums.get(k, 0.0) + v
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}",
                acc=f"{correct / seen:.3f}",
                **{k: f"{v / seen:.2f}" for k, v in extra_sums.items()},
            )
        names = list(extra_sums)
        seen, loss_sum, correct, *sums = ddp.sum(seen, loss_sum, correct, *extra_sums.values())
        if not math.isfinite(loss_sum):
            raise EdgeskipError(f"training diverged at epoch {epoch + 1} (loss is not finite); lower --lr")
        rec = {
            "epoch": epoch + 1,
            "loss": loss_sum / seen,
            "train_acc": correct / seen,
            **{f"train_{k}": v / seen for k, v in zip(names, sums)},
            **objective.validate(splits, ddp),
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - t0,
        }
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        ck = dataclasses.replace(
            ck,
            state_dict=state,
            epoch=epoch + 1,
            history=ck.history + [rec],
            optimizer=opt.state_dict(),
            scheduler=sched.state_dict(),
            rng=torch.get_rng_state(),
        )
        if ddp.is_main:
            ck.save(out)
        ddp.barrier()  # no rank runs ahead of the checkpoint it would resume from
        if progress:
            print(
                f"{objective.label}epoch {epoch + 1}/{cfg.epochs}  loss {rec['loss']:.4f}  train "
                f"{rec['train_acc']:.4f}  val {rec['val_acc']:.4f}{objective.summary(rec)}  {rec['seconds']:.1f}s",
                file=sys.stderr,
            )
        if on_epoch_end is not None:
            on_epoch_end(ck)
    return ck
