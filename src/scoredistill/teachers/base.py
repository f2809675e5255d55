"""The teacher role: anything that gives the canonical denoiser ``D(x_t, t, cond)``.

Every teacher (exact mixture, neural denoiser, diffusers model) exposes the same call so that
samplers and objectives never ask what is inside. A teacher's forward never calls ``no_grad``
itself; the caller decides whether gradients flow through it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from ..parametrization import NULL_LABEL  # the CFG conventions live with the conversions
from ..schedules import Schedule

__all__ = ["NULL_LABEL", "Teacher"]


@runtime_checkable
class Teacher(Protocol):
    """A denoiser on a schedule.

    ``denoise(x_t, t, cond)``: ``x_t`` is ``(B, *D)``, ``t`` is ``(B,)`` in [0, 1], ``cond`` is
    ``None`` or integer labels ``(B,)`` where ``NULL_LABEL`` marks unconditional rows.
    Returns ``E[x | x_t, cond]`` with the shape of ``x_t``.
    """

    schedule: Schedule
    num_classes: int  # 0 for an unconditional teacher
    dim: int  # values in one sample, prod(D)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor: ...
