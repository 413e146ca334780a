"""Stochastic depth (Huang et al. 2016) for residual branches.

Convention: *inverted* scaling. In training a surviving branch is multiplied by 1/p, so in eval
mode the block is the plain ``x + F(x)`` -- the deployed network needs no rescaling at all
(same convention as timm's ``drop_path(scale_by_keep=True)`` and torchvision's ``stochastic_depth``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


def keep_branch(p_survive: float, training: bool) -> bool:
    """Per-batch mode: draw whether the whole mini-batch keeps the branch (always True in eval)."""
    if not training or p_survive >= 1.0:
        return True
    return bool(torch.rand(()) < p_survive)


def residual(
    x: torch.Tensor, identity: torch.Tensor, branch: Fn, finish: Fn, p_survive: float, mode: str, training: bool
) -> torch.Tensor:
    """``finish(identity + F(x))`` with stochastic depth on ``F = branch``: ``"batch"`` drops it for the whole
    mini-batch (and does not compute it), ``"row"`` per sample, ``"none"`` never."""
    if mode == "batch":
        if not keep_branch(p_survive, training):
            return finish(identity)
        out = branch(x)
        if training and p_survive < 1.0:
            out = out / p_survive
    elif mode == "row":
        out = scale_rows(branch(x), p_survive, training)
    else:
        out = branch(x)
    return finish(identity + out)


def scale_rows(branch: torch.Tensor, p_survive: float, training: bool) -> torch.Tensor:
    """Per-sample mode: zero the branch for random samples and rescale survivors by 1/p."""
    if not training or p_survive >= 1.0:
        return branch
    shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
    mask = torch.empty(shape, dtype=branch.dtype, device=branch.device).bernoulli_(p_survive)
    return branch * mask.div_(p_survive)
