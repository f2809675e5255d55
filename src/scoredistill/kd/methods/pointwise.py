"""Pointwise score regression, Margin-MSE's comparison on retrieval:
``alpha · ITC + (1 − alpha) · Σ_d (s_d − t_d)²`` per query, averaged over queries.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import logit_method, mix

__all__ = ["METHOD", "loss"]


def loss(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """``s, t: (B, N)`` student and teacher scores of each list, ``y: (B,)`` the positives."""
    return mix(cfg, s, y, (s - t.detach()).square().sum(-1).mean())


METHOD = logit_method(loss)
