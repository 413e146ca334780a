"""Plain training (cross-entropy) on the engine (:mod:`edgeskip.train.engine`): deterministic given the
seed, checkpoint every epoch, exact resume, torchrun data parallelism."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from edgeskip.data.batches import iterate, num_batches
from edgeskip.data.dataset import ArrayDataset, Normalization, Splits
from edgeskip.errors import EdgeskipError
from edgeskip.models import BlockNet, ModelConfig, ResNetConfig, build_model
from edgeskip.train.checkpoint import Checkpoint, load_checkpoint
from edgeskip.train.config import DataSpec, TrainConfig
from edgeskip.train.distributed import Distributed, from_environment
from edgeskip.train.engine import run_epochs, step
from edgeskip.train.precision import resolve_amp

EpochHook = Callable[[Checkpoint], None]


@torch.no_grad()
def evaluate(
    model: BlockNet,
    ds: ArrayDataset,
    norm: Normalization,
    skip: object | None = None,
    batch_size: int = 500,
    ddp: Distributed | None = None,
) -> float:
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
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, steps_per_epoch))


class CrossEntropy:
    """The plain objective: cross-entropy of ``forward``'s logits (label smoothing per the run's config);
    validation is top-1 accuracy with every block executed."""

    label = ""

    def __init__(
        self, forward: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module, label_smoothing: float = 0.0
    ) -> None:
        self._forward, self.model, self.label_smoothing = forward, model, label_smoothing

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        return self._forward(xb).float()

    def loss(self, logits: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        return F.cross_entropy(logits, yb, label_smoothing=self.label_smoothing), logits, {}

    def validate(self, splits: Splits, ddp: Distributed) -> dict[str, float]:
        return {"val_acc": evaluate(self.model, splits.val, splits.norm, ddp=ddp)}  # type: ignore[arg-type]

    def summary(self, rec: dict[str, float]) -> str:
        return ""


def train_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    xb: torch.Tensor,
    yb: torch.Tensor,
    cfg: TrainConfig,
    device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One cross-entropy optimizer step on a batch: (loss, fp32 logits). ``cfg.amp`` must be resolved."""
    loss, logits, _ = step(
        CrossEntropy(forward, None, cfg.label_smoothing),
        opt,
        sched,
        xb,
        yb,  # type: ignore[arg-type]
        cfg.amp,
        device,
    )
    return loss, logits


def training_forward(model: BlockNet, cfg: TrainConfig, ddp: Distributed) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable a training step runs: ``model``, wrapped in DDP under torchrun and compiled if asked."""
    net: torch.nn.Module = model
    if ddp.active:  # batch-mode stochastic depth leaves dropped blocks without gradients
        net = DistributedDataParallel(model, find_unused_parameters=model.cfg.sd_mode == "batch")
    return torch.compile(net) if cfg.compile else net


def train(
    out: str | os.PathLike,
    data: DataSpec,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    resume: bool = False,
    splits: Splits | None = None,
    progress: bool = True,
    on_epoch_end: EpochHook | None = None,
    stop_after: int | None = None,
    init_weights: str | None = None,
) -> Checkpoint:
    """Train a model and write its checkpoint to ``out`` after every epoch.

    ``model_cfg``'s input shape and class count are taken from the data. With ``resume`` the run
    continues from ``out`` (its stored settings win), reproducing the uninterrupted run exactly.
    ``init_weights``: a local state dict loaded into a new run's model before training (e.g. pretrained weights).
    ``stop_after`` ends this invocation once that epoch's checkpoint is written (continue with ``resume``).
    Under ``torchrun`` each process trains on its shard of every batch and rank 0 writes ``out``.
    """
    ddp = from_environment()
    try:
        return _train(
            ddp, Path(out), data, model_cfg, train_cfg, resume, splits, progress, on_epoch_end, stop_after, init_weights
        )
    finally:
        ddp.close()


def _train(
    ddp: Distributed,
    out: Path,
    data: DataSpec,
    model_cfg: ModelConfig | None,
    train_cfg: TrainConfig | None,
    resume: bool,
    splits: Splits | None,
    progress: bool,
    on_epoch_end: EpochHook | None,
    stop_after: int | None,
    init_weights: str | None,
) -> Checkpoint:
    if stop_after is not None and stop_after < 1:
        raise EdgeskipError(f"--stop-after must be an epoch number >= 1, got {stop_after}")
    if resume:
        if not out.is_file():
            raise EdgeskipError(f"--resume: no checkpoint at {out}")
        resumed = load_checkpoint(out)
        data, model_cfg, train_cfg = resumed.data, resumed.model_cfg, resumed.train_cfg
        if resumed.train_cfg.world_size != ddp.world_size:
            raise EdgeskipError(
                f"--resume: {out} was trained by {resumed.train_cfg.world_size} process(es), this run "
                f"has {ddp.world_size}; resume with torchrun --nproc_per_node "
                f"{resumed.train_cfg.world_size} (the world size is part of the run)"
            )
        resolve_amp(train_cfg.amp, ddp.device)  # refuses a bf16 run resumed where bf16 is not native
        if resumed.complete:
            return resumed
    elif out.exists():
        raise EdgeskipError(f"{out} exists; pass --resume to continue it or choose another --out")
    else:  # the precision actually used and the world size are part of the recipe stored in the checkpoint
        train_cfg = train_cfg or TrainConfig()
        train_cfg = dataclasses.replace(
            train_cfg, amp=resolve_amp(train_cfg.amp, ddp.device), world_size=ddp.world_size
        )
    if train_cfg.batch_size % ddp.world_size:
        raise EdgeskipError(f"batch size {train_cfg.batch_size} does not split evenly over {ddp.world_size} processes")
    splits = splits or data.load()
    c, h, w = splits.shape
    if not resume:
        model_cfg = dataclasses.replace(
            model_cfg or ResNetConfig(), num_classes=len(splits.class_names), in_channels=c, input_size=(h, w)
        )

    torch.manual_seed(train_cfg.seed)
    if ddp.device == "cuda":  # every training batch has one shape (drop_last): let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    model = build_model(model_cfg, None if resume else init_weights)
    model_cfg = model.cfg  # a traced model's blocks, found while building it
    # on the device before the optimizer exists, so resumed optimizer state lands beside the weights
    model.to(device=ddp.device, memory_format=torch.channels_last)  # ~10% faster convolutions on CPU
    steps = num_batches(len(splits.train), train_cfg.batch_size, drop_last=True)
    opt, sched = make_optimizer(model, train_cfg, steps)
    ck = Checkpoint(model_cfg, model.state_dict(), splits.norm, splits.class_names, splits.dataset_id, data, train_cfg)
    if resume:
        ck = resumed
        model.load_state_dict(ck.state_dict)
        opt.load_state_dict(ck.optimizer)
        sched.load_state_dict(ck.scheduler)
        torch.set_rng_state(ck.rng)
        splits.norm = ck.norm
    objective = CrossEntropy(training_forward(model, train_cfg, ddp), model, train_cfg.label_smoothing)
    try:
        return run_epochs(model, objective, opt, sched, splits, ck, out, steps, ddp, stop_after, progress, on_epoch_end)
    finally:  # the DDP wrapper holds the process group, which train() destroys next; a traceback keeps this frame
        del objective
