"""BD-KD's student term (Amara et al., arXiv 2212.12965) against a frozen teacher (offline; the
online mode is a procedure)::

    L = alpha · CE + (1 − alpha) · T² · [ w_fwd · KL(p_t ‖ p_s) + w_rev · KL(p_s ‖ p_t) ]

The entropy gap ``H(p_s^T) − H(p_t^T)`` gives the emphasised direction the weight
``bdkd_delta`` (``bdkd_mode="hard"``) or weighs the two smoothly (``"soft"``) [R].
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..losses import bdkd_loss
from .base import logit_method, mix

__all__ = ["METHOD", "loss"]


def loss(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """``s, t: (B, C)`` student and teacher logits, ``y: (B,)`` labels (``-1``: unlabelled)."""
    div = bdkd_loss(s, t, cfg.temperature, mode=cfg.bdkd_mode, delta=cfg.bdkd_delta)
    return mix(cfg, s, y, div)


METHOD = logit_method(loss)
