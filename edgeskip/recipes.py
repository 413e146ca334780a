"""Named training recipes and the training and design option vocabularies (torch-free, so the CLI can list them).

A recipe is a set of defaults for ``edgeskip train``; options given on the command line override it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

AMP_CHOICES = ("auto", "bf16", "fp32")
SD_SCOPES = ("all", "gated")  # which blocks stochastic depth drops in training
GATE_KINDS = ("ffgate1", "ffgate2", "rnn", "dfs")  # learned gates: SkipNet's three, and DFS's
GATE_MODES = ("sp", "hrl", "dfs-full", "dfs")  # how they are trained (DFS: its steps 1 and 2)
DFS_BITS = (4, 8, 16)  # the bit widths a DFS option may run a block at (besides skip and full precision)
SEARCHES = ("greedy", "beam", "exhaustive")  # where a design space's candidates come from (edgeskip.pareto.search)
EXHAUSTIVE_LIMIT = 4096  # skip arrays an exhaustive search evaluates when no budget is given


@dataclass(frozen=True)
class Recipe:
    """Defaults for ``edgeskip train`` options, keyed by the option's parameter name."""

    name: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "cifar-resnet",
            "edgeskip's recipe for CIFAR ResNets, from the diagnosis in bench/README: 200 epochs, "
            "batch 128, lr 0.1 cosine, weight decay 5e-4, Nesterov momentum 0.9, projection shortcut, last BN "
            "not zero-initialised, stochastic depth on the gated blocks only, bf16 where native",
            {
                "epochs": 200,
                "batch_size": 128,
                "lr": 0.1,
                "schedule": "cosine",
                "weight_decay": 5e-4,
                "warmup": 0.0,
                "nesterov": True,
                "shortcut": "proj",
                "zero_init_last": False,
                "sd_scope": "gated",
            },
        ),
        Recipe(
            "he2016",
            "He et al. 2016, CIFAR ResNets: 164 epochs, batch 128, lr 0.1 /10 at 50% and 75%, "
            "weight decay 1e-4, momentum 0.9 (not Nesterov), zero-pad shortcut, conventional",
            {
                "epochs": 164,
                "batch_size": 128,
                "lr": 0.1,
                "schedule": "step",
                "weight_decay": 1e-4,
                "warmup": 0.0,
                "nesterov": False,
                "sd": False,
                "shortcut": "pad",
                "zero_init_last": False,
                "sd_scope": "all",
            },
        ),
        Recipe(
            "huang2016",
            "Huang et al. 2016, stochastic depth on CIFAR: 500 epochs, batch 128, lr 0.1 /10 at 50% "
            "and 75%, weight decay 1e-4, Nesterov momentum 0.9, zero-pad shortcut, p_L 0.5",
            {
                "epochs": 500,
                "batch_size": 128,
                "lr": 0.1,
                "schedule": "step",
                "weight_decay": 1e-4,
                "warmup": 0.0,
                "nesterov": True,
                "sd": True,
                "p_last": 0.5,
                "shortcut": "pad",
                "zero_init_last": False,
                "sd_scope": "all",
            },
        ),
    )
}
RECIPE_NAMES = tuple(RECIPES)
