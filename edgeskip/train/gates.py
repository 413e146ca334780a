"""Training learned gates: SkipNet's supervised pre-training (straight-through) and hybrid RL refinement, and
Dynamic Fractional Skipping's two steps.

- ``sp`` (SkipNet Eq. 7): hard decisions forward, soft probabilities backward, cross-entropy only.
- ``hrl``: decisions sampled from the gates' Bernoulli policy; the network is trained on the
  cross-entropy of the executed path, the gates by REINFORCE with per-input reward
  ``-beta * loss + alpha / B_s * skipped`` (mean reward of the batch as baseline). ``credit="shared"``: every
  gate's decision gets that one reward; ``credit="to-go"`` (SkipNet's own, discount 1): gate i's decision gets
  ``-beta * loss + alpha / B_s * (blocks skipped from gate i on)``, with a per-gate batch-mean baseline, so a
  gate is no longer credited with the skips of the gates before it.
- ``dfs-full`` (DFS step 1; ``--gates dfs``): the backbone frozen, the gate learns to choose full precision for
  every block.
- ``dfs`` (DFS step 2): joint training on cross-entropy + alpha * cp, the sign of alpha switched per batch so that
  the computation percentage cp moves toward ``cp_target`` (DFS's rule).

Either starts from scratch, from a trained backbone (gates added, whole net fine-tuned) or from a
SkipNet checkpoint (e.g. HRL after SP). Both are objectives of the one training engine
(:mod:`edgeskip.train.engine`): checkpoints after every epoch, exact resume, as for plain training.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeskip.data.batches import iterate, num_batches
from edgeskip.data.dataset import ArrayDataset, Normalization, Splits
from edgeskip.errors import EdgeskipError
from edgeskip.models import ModelConfig, ResNetConfig
from edgeskip.models.gates import GateConfig
from edgeskip.models.skipnet import SkipNetResNet, skipnet_macs
from edgeskip.recipes import GATE_MODES
from edgeskip.train.checkpoint import Checkpoint, build_network, load_checkpoint
from edgeskip.train.config import DataSpec, TrainConfig
from edgeskip.train.engine import run_epochs
from edgeskip.train.loop import make_optimizer

DFS_MODES = ("dfs-full", "dfs")
HRL_CREDIT = ("shared", "to-go")


@dataclass(frozen=True)
class GateTraining:
    """How the gates are trained; stored in the checkpoint."""

    mode: str = "sp"
    alpha: float = 0.1
    beta: float = 1.0
    init: str | None = None  # checkpoint the run started from (None: from scratch)
    cp_target: float = 0.5  # DFS: the computation percentage step 2 steers toward
    credit: str = "shared"  # HRL: which reward each gate's decision gets (see the module docstring)

    def __post_init__(self) -> None:
        if self.mode not in GATE_MODES:
            raise EdgeskipError(f"gate training mode must be one of {', '.join(GATE_MODES)}, got {self.mode!r}")
        if self.credit not in HRL_CREDIT:
            raise EdgeskipError(f"HRL credit must be one of {', '.join(HRL_CREDIT)}, got {self.credit!r}")
        if self.alpha < 0 or self.beta < 0:
            raise EdgeskipError("alpha and beta must be >= 0")
        if not 0.0 < float(self.cp_target) <= 1.0:
            raise EdgeskipError(f"the cp target must be in (0, 1], got {self.cp_target}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateStats:
    """Accuracy, mean skipped blocks and mean MACs (gates included) of a SkipNet on a data set."""

    accuracy: float
    mean_skipped: float
    mean_macs: float
    skip_rate_per_gate: list[float]


@torch.no_grad()
def _eval_pass(
    model: Any, ds: ArrayDataset, norm: Normalization, run: Callable[[torch.Tensor], Any], batch_size: int
) -> tuple[int, list[Any]]:
    """One eval-mode pass of ``run`` over ``ds``: (correct predictions, each batch's output)."""
    was = model.training
    model.eval()
    correct, outs = 0, []
    for xb, yb in iterate(ds, norm, batch_size):
        out = run(xb)
        correct += int((out.logits.argmax(1) == yb).sum())
        outs.append(out)
    model.train(was)
    return correct, outs


def _mean_macs(model: Any, executed: torch.Tensor) -> float:
    """Mean MACs per input (gates included) of the blocks ``executed`` [N, B_s] ran, counted once per distinct
    decision row."""
    rows, counts = torch.unique(executed.bool(), dim=0, return_counts=True)
    total = sum(int(n) * skipnet_macs(model.cfg, model.gate_cfg, row) for row, n in zip(rows, counts))
    return float(total / len(executed))


def evaluate_gated(model: SkipNetResNet, ds: ArrayDataset, norm: Normalization, batch_size: int = 500) -> GateStats:
    """Hard per-input decisions on ``ds`` (eval mode)."""
    correct, outs = _eval_pass(model, ds, norm, lambda xb: model.run(xb, "hard"), batch_size)
    ex = torch.cat([o.execute for o in outs]).float()
    return GateStats(
        correct / len(ds), float((1 - ex).sum(1).mean()), _mean_macs(model, ex), [float(v) for v in (1 - ex).mean(0)]
    )


class GateObjective:
    """SkipNet's gate training as an engine objective (:mod:`edgeskip.train.engine`): ``sp`` runs hard
    decisions forward and soft probabilities backward; ``hrl`` samples decisions and adds the REINFORCE
    term. Per-sample statistic: blocks skipped; validation: accuracy, skipped blocks and MACs with hard
    decisions."""

    def __init__(self, model: SkipNetResNet, gt: GateTraining, label_smoothing: float = 0.0) -> None:
        self.model, self.gt, self.label_smoothing = model, gt, label_smoothing
        self.label = f"{gt.mode} "

    def forward(self, xb: torch.Tensor) -> Any:
        return self.model.run(xb, "st" if self.gt.mode == "sp" else "sample")

    def loss(self, out: Any, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        gt, skipped = self.gt, {"skipped": float((~out.execute).sum())}
        if gt.mode == "sp":
            return F.cross_entropy(out.logits, yb, label_smoothing=self.label_smoothing), out.logits, skipped
        ce = F.cross_entropy(out.logits, yb, reduction="none", label_smoothing=self.label_smoothing)
        g = max(1, out.execute.shape[1])
        skips = (~out.execute).float()
        if gt.credit == "to-go":  # [N, B_s]: the loss plus the skips from each gate on
            reward = -gt.beta * ce.detach()[:, None] + gt.alpha / g * skips.flip(1).cumsum(1).flip(1)
            policy = -(out.log_probs * (reward - reward.mean(0))).sum(1).mean()
        else:
            reward = -gt.beta * ce.detach() + gt.alpha / g * skips.sum(1)
            policy = -(out.log_prob * (reward - reward.mean())).mean()
        return ce.mean() + policy, out.logits, skipped

    def validate(self, splits: Splits, ddp: Any) -> dict[str, float]:
        stats = evaluate_gated(self.model, splits.val, splits.norm)
        return {"val_acc": stats.accuracy, "val_skipped": stats.mean_skipped, "val_macs": stats.mean_macs}

    def summary(self, rec: dict[str, float]) -> str:
        return f"  skipped {rec['val_skipped']:.2f}/{self.model.cfg.num_gates}"


@dataclass(frozen=True)
class DFSStats:
    """Accuracy, mean computation percentage (DFS's bit-weighted cost), mean skipped blocks, the rate of each
    option, each gate's skip rate and the mean MACs run (skipped blocks removed, quantised ones counted in full:
    they run as many multiply-accumulates; gates included)."""

    accuracy: float
    mean_cp: float
    mean_skipped: float
    option_rates: list[float]
    skip_rate_per_gate: list[float]
    mean_macs: float


def evaluate_dfs(model: Any, ds: ArrayDataset, norm: Normalization, batch_size: int = 500) -> DFSStats:
    """Per-input argmax options on ``ds`` (eval mode: only the chosen option is computed)."""
    correct, outs = _eval_pass(model, ds, norm, model.run, batch_size)
    ch = torch.cat([o.choice for o in outs])
    n_opt = len(model.gate_cfg.options)
    return DFSStats(
        correct / len(ds),
        float(torch.cat([o.cp for o in outs]).mean()),
        float((ch == 0).sum(1).float().mean()),
        [float((ch == o).float().mean()) for o in range(n_opt)],
        [float(v) for v in (ch == 0).float().mean(0)],
        _mean_macs(model, ch != 0),
    )


class DFSObjective:
    """DFS's training steps as an engine objective. ``dfs-full``: each gate's softmax is pulled toward the full
    option (cross-entropy; the backbone is frozen by :func:`train_gates`); ``dfs``: classification cross-entropy
    plus ``alpha * cp``, with alpha's sign + while the batch's cp is above ``cp_target`` and - below it.
    Per-sample statistics: cp and skipped blocks; validation: accuracy, cp, skipped blocks."""

    def __init__(self, model: Any, gt: GateTraining, label_smoothing: float = 0.0) -> None:
        self.model, self.gt, self.label_smoothing = model, gt, label_smoothing
        self.label = f"{gt.mode} "

    def forward(self, xb: torch.Tensor) -> Any:
        return self.model.run(xb)

    def loss(self, out: Any, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        stats = {"cp": float(out.cp.detach().sum()), "skipped": float((out.choice == 0).sum())}
        if self.gt.mode == "dfs-full":
            full = torch.full_like(out.choice, out.probs.shape[2] - 1).flatten()
            return F.nll_loss(torch.log(out.probs.clamp_min(1e-8)).flatten(0, 1), full), out.logits, stats
        cp = out.cp.mean()
        sign = 1.0 if float(cp.detach()) > self.gt.cp_target else -1.0
        ce = F.cross_entropy(out.logits, yb, label_smoothing=self.label_smoothing)
        return ce + self.gt.alpha * sign * cp, out.logits, stats

    def validate(self, splits: Splits, ddp: Any) -> dict[str, float]:
        st = evaluate_dfs(self.model, splits.val, splits.norm)
        return {"val_acc": st.accuracy, "val_cp": st.mean_cp, "val_skipped": st.mean_skipped}

    def summary(self, rec: dict[str, float]) -> str:
        return f"  cp {rec['val_cp']:.3f} (target {self.gt.cp_target:g})  skipped {rec['val_skipped']:.2f}"


def _start(init: Checkpoint | None, model_cfg: ModelConfig | None, gate_cfg: GateConfig, splits: Splits):
    """Model config and initial weights (backbone or SkipNet checkpoint, or fresh)."""
    if init is None:
        c, h, w = splits.shape
        cfg = replace(
            model_cfg or ResNetConfig(), num_classes=len(splits.class_names), in_channels=c, input_size=(h, w)
        )
        return cfg, None
    if splits.shape != (init.model_cfg.in_channels, *init.model_cfg.input_size):
        raise EdgeskipError(f"data shape {splits.shape} does not match the initial checkpoint's model input")
    if init.gate_cfg is not None and init.gate_cfg.kind != gate_cfg.kind:
        raise EdgeskipError(f"initial checkpoint has {init.gate_cfg.kind} gates, not {gate_cfg.kind}")
    return init.model_cfg, init.state_dict


def train_gates(
    out: str | os.PathLike,
    data: DataSpec | None,
    gate_cfg: GateConfig,
    train_cfg: TrainConfig,
    gate_training: GateTraining,
    init: str | os.PathLike | None = None,
    model_cfg: ModelConfig | None = None,
    resume: bool = False,
    splits: Splits | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[Checkpoint], None] | None = None,
) -> Checkpoint:
    """Train a SkipNet (gates + backbone) and write its checkpoint to ``out`` after every epoch.

    With ``init``, ``data=None`` reuses the initial checkpoint's data spec, so validation and test
    splits are the backbone's.
    """
    out = Path(out)
    resumed = None
    if resume:
        if not out.is_file():
            raise EdgeskipError(f"--resume: no checkpoint at {out}")
        resumed = load_checkpoint(out)
        if resumed.gate_cfg is None:
            raise EdgeskipError(f"{out} has no gates; resume it with plain `edgeskip train --resume`")
        if resumed.complete:
            return resumed
        data, gate_cfg, train_cfg = resumed.data, resumed.gate_cfg, resumed.train_cfg
        gate_training = GateTraining(
            **{k: v for k, v in (resumed.gate_training or {}).items() if k in GateTraining.__dataclass_fields__}
        )
    elif out.exists():
        raise EdgeskipError(f"{out} exists; pass --resume to continue it or choose another --out")
    else:  # gate training has no fast path yet: it runs eager fp32, and its checkpoint says so
        if train_cfg.amp == "bf16" or train_cfg.compile:
            raise EdgeskipError("--amp bf16 and --compile apply to plain training; gate training runs in fp32")
        train_cfg = replace(train_cfg, amp="fp32")
    init_ck = load_checkpoint(init) if (init is not None and resumed is None) else None
    if init_ck is not None:
        data = init_ck.data if data is None else data
    if data is None:
        raise EdgeskipError("no data set given and no initial checkpoint to take it from")
    if init_ck is not None:
        gate_training = replace(gate_training, init=str(init))
    splits = splits or data.load()
    if resumed is not None:
        cfg, state, norm = resumed.model_cfg, resumed.state_dict, resumed.norm
    else:
        cfg, state = _start(init_ck, model_cfg, gate_cfg, splits)
        norm = init_ck.norm if init_ck is not None else splits.norm
    splits.norm = norm

    if (gate_cfg.kind == "dfs") != (gate_training.mode in DFS_MODES):
        raise EdgeskipError(
            f"gate mode {gate_training.mode} does not train {gate_cfg.kind} gates "
            f"(dfs gates: {', '.join(DFS_MODES)}; SkipNet gates: sp, hrl)"
        )
    torch.manual_seed(train_cfg.seed)
    model = build_network(cfg, gate_cfg)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith(("gates.", "gate_core.", "ranges."))] + list(unexpected)
        if bad:
            raise EdgeskipError(f"initial weights do not fit the model: {', '.join(bad[:3])}")
    if gate_training.mode == "dfs-full":  # DFS step 1: the backbone frozen, only the gate learns
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(("gates.", "gate_core.")))
    steps = num_batches(len(splits.train), train_cfg.batch_size, drop_last=True)
    opt, sched = make_optimizer(model, train_cfg, steps)
    ck = Checkpoint(
        cfg,
        model.state_dict(),
        norm,
        splits.class_names,
        splits.dataset_id,
        data,
        train_cfg,
        gate_cfg=gate_cfg,
        gate_training=gate_training.to_dict(),
    )
    if resumed is not None:
        ck = resumed
        opt.load_state_dict(ck.optimizer)
        sched.load_state_dict(ck.scheduler)
        torch.set_rng_state(ck.rng)
    model.to(memory_format=torch.channels_last)
    if gate_cfg.kind == "dfs":
        objective: Any = DFSObjective(model, gate_training, train_cfg.label_smoothing)
    else:
        objective = GateObjective(model, gate_training, train_cfg.label_smoothing)
    return run_epochs(
        model, objective, opt, sched, splits, ck, out, steps, progress=progress, on_epoch_end=on_epoch_end
    )
