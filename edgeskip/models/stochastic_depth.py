"""Stochastic depth (Huang et al. 2016) for residual branches.

Convention: *inverted* scaling. In training a surviving branch is multiplied by 1/p, so in eval
mode the block is the plain ``x + F(x)`` -- the deployed network needs no rescaling at all
(same convention as timm's ``drop_path(scale_by_keep=True)`` and torchvision's ``stochastic_depth``).
"""

from __future__ import annotations

import torch


def keep_branch(p_survive: float, training: bool) -> bool:
    """Per-batch mode: draw whether the whole mini-batch keeps the branch (always True in eval)."""
    if not training or p_survive >= 1.0:
        return True
    return bool(torch.rand(()) < p_survive)


def scale_rows(branch: torch.Tensor, p_survive: float, training: bool) -> torch.Tensor:
    """Per-sample mode: zero the branch for random samples and rescale survivors by 1/p."""
    if not training or p_survive >= 1.0:
        return branch
    shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
    mask = torch.empty(shape, dtype=branch.dtype, device=branch.device).bernoulli_(p_survive)
    return branch * mask.div_(p_survive)
