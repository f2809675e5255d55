"""Margin-MSE (Hofstätter et al. 2020) over every (positive, candidate) pair of a list:
``alpha · ITC + (1 − alpha) · Σ_d ((s_+ − s_d) − (t_+ − t_d))²`` averaged over queries; a
per-query offset of the teacher's scores cancels in the margins.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..ranking import margin_mse
from .base import logit_method, mix, positive

__all__ = ["METHOD", "loss"]


def loss(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """``s, t: (B, N)`` student and teacher scores of each list, ``y: (B,)`` the positives."""
    return mix(cfg, s, y, margin_mse(positive(s, y), s, positive(t, y), t))


METHOD = logit_method(loss)
