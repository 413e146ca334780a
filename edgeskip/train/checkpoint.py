"""Self-contained checkpoints: architecture, SD settings, weights, normalisation, class names,
data set id and spec, training state. Written atomically; loaded with ``weights_only=True``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeskip import __version__
from edgeskip.data.dataset import Normalization
from edgeskip.errors import EdgeskipError
from edgeskip.models import BlockNet, ModelConfig, ResNetConfig, build_model, config_from_dict
from edgeskip.models.gates import GateConfig
from edgeskip.models.skipnet import SkipNetResNet
from edgeskip.train.config import DataSpec, TrainConfig
from edgeskip.utils.atomic import atomic_path

FORMAT = "edgeskip-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """Everything needed to rebuild the model and to resume training."""

    model_cfg: ModelConfig
    state_dict: dict[str, torch.Tensor]
    norm: Normalization
    class_names: list[str]
    dataset_id: str
    data: DataSpec
    train_cfg: TrainConfig
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: torch.Tensor | None = None
    gate_cfg: GateConfig | None = None  # SkipNet gates (None: the weightless-gate model)
    gate_training: dict[str, Any] | None = None  # how the gates were trained (mode, alpha, backbone, ...)

    @property
    def complete(self) -> bool:
        return self.epoch >= self.train_cfg.epochs

    def model(self) -> BlockNet:
        """Rebuild the network in eval mode (a :class:`SkipNetResNet` or :class:`DFSResNet` if it has gates)."""
        m = build_network(self.model_cfg, self.gate_cfg)
        m.load_state_dict(self.state_dict)
        return m.eval()

    def to_obj(self, slim: bool = False) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "edgeskip_version": __version__,
            "model": self.model_cfg.to_dict(),
            "state_dict": self.state_dict,
            "norm": self.norm.to_dict(),
            "class_names": list(self.class_names),
            "dataset_id": self.dataset_id,
            "data": self.data.to_dict(),
            "train": self.train_cfg.to_dict(),
            "epoch": self.epoch,
            "history": self.history,
        }
        if self.gate_cfg is not None:
            obj["gates"] = self.gate_cfg.to_dict()
            obj["gate_training"] = self.gate_training or {}
        if not slim:
            obj.update(optimizer=self.optimizer, scheduler=self.scheduler, rng=self.rng)
        return obj

    def save(self, path: str | os.PathLike, slim: bool = False) -> None:
        """Atomic write; ``slim`` drops optimizer/scheduler/RNG state (inference-only copy)."""
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(self.to_obj(slim), tmp)


def build_network(cfg: ModelConfig, gate_cfg: GateConfig | None = None) -> BlockNet:
    """The backbone alone, with SkipNet gates, or with DFS's gate (``kind="dfs"``)."""
    if gate_cfg is None:
        return build_model(cfg)
    if not isinstance(cfg, ResNetConfig):
        raise EdgeskipError(
            f"learned gates (--gates {gate_cfg.kind}) are built for edgeskip's own ResNet, not {cfg.name}"
        )
    if gate_cfg.kind == "dfs":
        from edgeskip.models.dfs import DFSResNet

        return DFSResNet(cfg, gate_cfg)
    return SkipNetResNet(cfg, gate_cfg)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and validate a checkpoint; any problem raises a one-line EdgeskipError."""
    path = Path(path)
    if not path.is_file():
        raise EdgeskipError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on junk; all mean "unreadable"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeskipError(f"{path} is not a readable edgeskip checkpoint ({msg[:120]})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise EdgeskipError(f"{path} is not an edgeskip checkpoint")
    if obj.get("version") != VERSION:
        raise EdgeskipError(f"{path} has checkpoint version {obj.get('version')}, this edgeskip reads {VERSION}")
    try:
        ck = Checkpoint(
            model_cfg=config_from_dict(obj["model"]),
            state_dict=obj["state_dict"],
            norm=Normalization.from_dict(obj["norm"]),
            class_names=list(obj["class_names"]),
            dataset_id=obj["dataset_id"],
            data=DataSpec.from_dict(obj["data"]),
            train_cfg=TrainConfig.from_dict(obj["train"]),
            epoch=int(obj["epoch"]),
            history=list(obj.get("history", [])),
            optimizer=obj.get("optimizer"),
            scheduler=obj.get("scheduler"),
            rng=obj.get("rng"),
            gate_cfg=GateConfig.from_dict(obj["gates"]) if obj.get("gates") else None,
            gate_training=obj.get("gate_training"),
        )
        build_network(ck.model_cfg, ck.gate_cfg).load_state_dict(ck.state_dict)
    except (KeyError, TypeError, RuntimeError) as e:
        raise EdgeskipError(f"{path} is a damaged edgeskip checkpoint ({str(e).splitlines()[0][:120]})") from None
    return ck


def load_model(path: str | os.PathLike) -> tuple[BlockNet, Checkpoint]:
    """Convenience: (model in eval mode, checkpoint)."""
    ck = load_checkpoint(path)
    return ck.model(), ck


# filled in by training (from the data) or by tracing the model: not settings a user asks for
_DERIVED = ("num_classes", "in_channels", "input_size", "num_blocks", "gated_blocks")


def settings_differ(ck: Checkpoint, data: DataSpec, model_cfg: ModelConfig, train_cfg: TrainConfig) -> list[str]:
    """What a run asking for ``data``, ``model_cfg`` and ``train_cfg`` would do differently from the run that wrote
    ``ck`` (``name: stored -> asked``); empty where continuing ``ck`` gives what was asked."""
    asked, stored = model_cfg.to_dict(), ck.model_cfg.to_dict()
    blocks = asked.get("blocks") or []
    # no --blocks: the tracer's choice; globs: resolved when the model was built (stored as paths, in call order)
    skip = set(_DERIVED) | ({"blocks"} if not blocks or any(c in b for b in blocks for c in "*?[") else set())
    pairs = [(f"model {k}", stored.get(k), v) for k, v in asked.items() if k not in skip and k != "blocks"]
    if "blocks" not in skip and set(blocks) != set(stored.get("blocks") or []):
        pairs.append(("model blocks", stored.get("blocks"), blocks))
    where = [None if d is None else str(Path(d).resolve()) for d in (ck.data.data_dir, data.data_dir)]
    pairs.append(("data data_dir", *where))  # the same folder, however it is spelled
    pairs += [(f"data {k}", getattr(ck.data, k), getattr(data, k)) for k in ("name", "val_fraction", "seed")]
    size = (ck.data.image_size, data.image_size)
    pairs.append(("data image_size", *(tuple(v) if v else None for v in size)))
    pairs += [(k, getattr(ck.train_cfg, k), getattr(train_cfg, k)) for k in ("epochs", "lr", "seed")]
    return [f"{name}: {a!r} -> {b!r}" for name, a, b in pairs if a != b]
