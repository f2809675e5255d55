"""GKD's generalised JSD(β) (Agarwal et al. 2024), token-free:
``alpha · CE + (1 − alpha) · T² · JSD_β(p_t^T, p_s^T)``; ``beta`` 0 is forward KL, 1 reverse KL.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..losses import jsd
from .base import logit_method, mix

__all__ = ["METHOD", "loss"]


def loss(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """``s, t: (B, C)`` student and teacher logits, ``y: (B,)`` labels (``-1``: unlabelled)."""
    return mix(cfg, s, y, cfg.temperature**2 * jsd(s, t, cfg.beta, cfg.temperature))


METHOD = logit_method(loss)
