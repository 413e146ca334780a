"""The training loop: deterministic given the seed, checkpoint every epoch, exact resume."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from edgeskip.data.batches import iterate, num_batches
from edgeskip.data.dataset import ArrayDataset, Normalization, Splits
from edgeskip.errors import EdgeskipError
from edgeskip.models import CifarResNet, ResNetConfig, build_model
from edgeskip.train.checkpoint import Checkpoint, load_checkpoint
from edgeskip.train.config import DataSpec, TrainConfig
from edgeskip.train.distributed import Distributed, from_environment
from edgeskip.train.precision import autocast, resolve_amp

EpochHook = Callable[[Checkpoint], None]


@torch.no_grad()
def evaluate(model: CifarResNet, ds: ArrayDataset, norm: Normalization, skip: object | None = None,
             batch_size: int = 500, ddp: Distributed | None = None) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``ds`` with the given skip array.

    With ``ddp`` each rank evaluates its share of every batch and the counts are summed.
    """
    ddp = ddp or Distributed()
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    correct = seen = 0
    for xb, yb in iterate(ds, norm, batch_size, shard=(ddp.rank, ddp.world_size)):
        correct += int((model(xb.to(device), skip).argmax(1).cpu() == yb).sum())
        seen += len(yb)
    model.train(was)
    correct, seen = ddp.sum(correct, seen)
    return correct / seen


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``t`` (warm-up, then cosine or step)."""
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    bounds = [int(m * total) for m in cfg.milestones]

    def f(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (t - warm) / max(1, total - warm)))
        return cfg.gamma ** sum(t >= b for b in bounds)

    return f


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """SGD (no weight decay on BN/bias parameters) and its per-step learning-rate schedule."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, steps_per_epoch))


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
               sched: torch.optim.lr_scheduler.LRScheduler, xb: torch.Tensor, yb: torch.Tensor,
               cfg: TrainConfig, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch: (loss, fp32 logits). ``cfg.amp`` must be resolved."""
    with autocast(cfg.amp, device):
        logits = forward(xb).float()
    loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss, logits


def training_forward(model: CifarResNet, cfg: TrainConfig, ddp: Distributed) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable a training step runs: ``model``, wrapped in DDP under torchrun and compiled if asked."""
    net: torch.nn.Module = model
    if ddp.active:  # batch-mode stochastic depth leaves dropped blocks without gradients
        net = DistributedDataParallel(model, find_unused_parameters=model.cfg.sd_mode == "batch")
    return torch.compile(net) if cfg.compile else net


def augment_default(cfg: TrainConfig, shape: tuple[int, int, int]) -> bool:
    if cfg.augment is not None:
        return cfg.augment
    c, h, w = shape
    return c == 3 and h >= 32 and w >= 32


def train(
    out: str | os.PathLike,
    data: DataSpec,
    model_cfg: ResNetConfig | None = None,
    train_cfg: TrainConfig | None = None,
    resume: bool = False,
    splits: Splits | None = None,
    progress: bool = True,
    on_epoch_end: EpochHook | None = None,
    stop_after: int | None = None,
) -> Checkpoint:
    """Train a model and write its checkpoint to ``out`` after every epoch.

    ``model_cfg``'s input shape and class count are taken from the data. With ``resume`` the run
    continues from ``out`` (its stored settings win), reproducing the uninterrupted run exactly.
    ``stop_after`` ends this invocation once that epoch's checkpoint is written (continue with ``resume``).
    Under ``torchrun`` each process trains on its shard of every batch and rank 0 writes ``out``.
    """
    out = Path(out)
    ddp = from_environment()
    if stop_after is not None and stop_after < 1:
        raise EdgeskipError(f"--stop-after must be an epoch number >= 1, got {stop_after}")
    if resume:
        if not out.is_file():
            raise EdgeskipError(f"--resume: no checkpoint at {out}")
        resumed = load_checkpoint(out)
        data, model_cfg, train_cfg = resumed.data, resumed.model_cfg, resumed.train_cfg
        if resumed.train_cfg.world_size != ddp.world_size:
            raise EdgeskipError(f"--resume: {out} was trained by {resumed.train_cfg.world_size} process(es), this run "
                                f"has {ddp.world_size}; resume with torchrun --nproc_per_node "
                                f"{resumed.train_cfg.world_size} (the world size is part of the run)")
        resolve_amp(train_cfg.amp, ddp.device)  # refuses a bf16 run resumed where bf16 is not native
        if resumed.complete:
            return resumed
    elif out.exists():
        raise EdgeskipError(f"{out} exists; pass --resume to continue it or choose another --out")
    else:  # the precision actually used and the world size are part of the recipe stored in the checkpoint
        train_cfg = train_cfg or TrainConfig()
        train_cfg = dataclasses.replace(train_cfg, amp=resolve_amp(train_cfg.amp, ddp.device),
                                        world_size=ddp.world_size)
    if train_cfg.batch_size % ddp.world_size:
        raise EdgeskipError(f"batch size {train_cfg.batch_size} does not split evenly over {ddp.world_size} processes")
    splits = splits or data.load()
    c, h, w = splits.shape
    base = model_cfg or ResNetConfig()
    model_cfg = ResNetConfig(**{**base.to_dict(), "num_classes": len(splits.class_names),
                                "in_channels": c, "input_size": (h, w)})

    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg)
    # on the device before the optimizer exists, so resumed optimizer state lands beside the weights
    model.to(device=ddp.device, memory_format=torch.channels_last)  # ~10% faster convolutions on CPU
    steps = num_batches(len(splits.train), train_cfg.batch_size, drop_last=True)
    opt, sched = make_optimizer(model, train_cfg, steps)
    ck = Checkpoint(model_cfg, model.state_dict(), splits.norm, splits.class_names, splits.dataset_id,
                    data, train_cfg)
    if resume:
        ck = resumed
        model.load_state_dict(ck.state_dict)
        opt.load_state_dict(ck.optimizer)
        sched.load_state_dict(ck.scheduler)
        torch.set_rng_state(ck.rng)
        splits.norm = ck.norm
    augment = augment_default(train_cfg, splits.shape)
    forward = training_forward(model, train_cfg, ddp)
    shard = (ddp.rank, ddp.world_size)
    progress = progress and ddp.is_main
    last = train_cfg.epochs if stop_after is None else min(stop_after, train_cfg.epochs)

    for epoch in range(ck.epoch, last):
        model.train()
        t0 = time.time()
        seen = correct = 0
        loss_sum = 0.0
        batches = iterate(splits.train, splits.norm, train_cfg.batch_size, shuffle=True, augment=augment,
                          seed=train_cfg.seed * 100_003 + epoch, drop_last=True, shard=shard)
        bar = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{train_cfg.epochs}", leave=False,
                   disable=not progress or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)
        for xb, yb in bar:
            xb, yb = xb.to(ddp.device, memory_format=torch.channels_last), yb.to(ddp.device)
            loss, logits = train_step(forward, opt, sched, xb, yb, train_cfg, ddp.device)
            n = len(yb)
            seen += n
            loss_sum += loss.item() * n
            correct += int((logits.argmax(1) == yb).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        seen, loss_sum, correct = ddp.sum(seen, loss_sum, correct)
        if not math.isfinite(loss_sum):
            raise EdgeskipError(f"training diverged at epoch {epoch + 1} (loss is not finite); lower --lr")
        val_acc = evaluate(model, splits.val, splits.norm, ddp=ddp)
        rec = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen, "val_acc": val_acc,
               "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        ck = Checkpoint(model_cfg, state, splits.norm, splits.class_names, splits.dataset_id, data,
                        train_cfg, epoch + 1, ck.history + [rec], opt.state_dict(), sched.state_dict(),
                        torch.get_rng_state())
        if ddp.is_main:
            ck.save(out)
        ddp.barrier()  # no rank runs ahead of the checkpoint it would resume from
        if progress:
            print(f"epoch {epoch + 1}/{train_cfg.epochs}  loss {rec['loss']:.4f}  train {rec['train_acc']:.4f}  "
                  f"val {val_acc:.4f}  {rec['seconds']:.1f}s", file=sys.stderr)
        if on_epoch_end is not None:
            on_epoch_end(ck)
    ddp.close()
    return ck
