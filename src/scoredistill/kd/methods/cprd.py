"""ITC + λ·CPRD (Chen et al., CVPR 2024) [R]: contrastive partial ranking distillation over the
``K`` hardest negatives the student mines; the positive is excluded from the chain.

CPRD's fields live in the run's ``retrieval`` section (``retrieval.cprd_k``, ``cprd_tau``,
``cprd_weight``, ``cprd_margin_weighting``).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..ranking import cprd_loss
from .base import ce, logit_method

__all__ = ["METHOD", "loss"]


def loss(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """``s, t: (B, N)`` student and teacher scores of each list, ``y: (B,)`` the positives."""
    r = cfg.retrieval
    exclude = F.one_hot(y.clamp_min(0), s.shape[-1]).bool()
    chain = cprd_loss(
        s,
        t,
        num_hard=r.cprd_k,
        temperature=r.cprd_tau,
        exclude=exclude,
        margin_weighting=r.cprd_margin_weighting,
    )
    return ce(s, y) + r.cprd_weight * chain


METHOD = logit_method(loss)
