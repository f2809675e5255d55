"""No teacher: cross-entropy on the labels the student may see (the run's baseline arm).

On retrieval the label is the index of a list's positive, so this is in-list ITC.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import ce, logit_method

__all__ = ["METHOD", "loss"]


def loss(s: Tensor, t: Tensor | None, y: Tensor, cfg: Any) -> Tensor:
    """``CE(y, s)`` over the labelled rows; the teacher's logits ``t`` are ignored."""
    return ce(s, y)


METHOD = logit_method(loss)
