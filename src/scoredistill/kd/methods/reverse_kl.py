"""Reverse KL, mode-seeking: ``alpha · CE + (1 − alpha) · T² · KL(p_s^T ‖ p_t^T)``.

The token-free form of the reverse-KL objective of GKD (Agarwal et al. 2024) and MiniLLM.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..losses import reverse_kl
from .base import logit_method, mix

__all__ = ["METHOD", "loss"]


def loss(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """``s, t: (B, C)`` student and teacher logits, ``y: (B,)`` labels (``-1``: unlabelled)."""
    return mix(cfg, s, y, cfg.temperature**2 * reverse_kl(s, t, cfg.temperature))


METHOD = logit_method(loss)
