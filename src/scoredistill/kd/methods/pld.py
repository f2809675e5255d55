"""Plackett-Luce distillation (Bassam et al. 2025, arXiv 2506.12542)::

    L = mean_batch Σ_k α_k · ( logsumexp_{j≥k} s_{π*_j} − s_{π*_k} )

``π* = [y, the other classes by teacher logit]``, ``α_k = softmax(t/τ)[π*_k]`` with ``τ`` the
run's ``temperature``. No CE and no alpha; an unlabelled row takes the teacher's top class as y.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ranking import pld_loss
from .base import logit_method

__all__ = ["METHOD", "loss"]


def loss(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """``s, t: (B, C)`` student and teacher logits, ``y: (B,)`` labels (``-1``: unlabelled)."""
    y = torch.where(y >= 0, y, t.argmax(-1))
    return pld_loss(s, t, y, cfg.temperature)


METHOD = logit_method(loss)
