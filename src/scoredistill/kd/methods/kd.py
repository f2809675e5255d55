"""Hinton KD (Hinton et al. 2015): ``alpha · CE + (1 − alpha) · T² · KL(p_t^T ‖ p_s^T)``.

On retrieval the "logits" are a list's candidate scores: score KD.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..losses import kd_loss
from .base import logit_method, mix

__all__ = ["METHOD", "loss"]


def loss(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """``s, t: (B, C)`` student and teacher logits, ``y: (B,)`` labels (``-1``: unlabelled)."""
    return mix(cfg, s, y, kd_loss(s, t, cfg.temperature))


METHOD = logit_method(loss)
