"""The ``Testbed`` record: a teacher beside the exact law its metrics use."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .analytic import GaussianMixtureTeacher

__all__ = ["Testbed"]


@dataclass(frozen=True)
class Testbed:
    """A named data distribution with exact ground truth.

    ``teacher`` is what samplers query (``.denoise(x_t, t, cond)``, ``.schedule``,
    ``.num_classes``); ``truth`` is the exact mixture the metrics use; ``modes: (K,)`` maps each
    component of ``truth`` to a mode id in ``0..num_modes-1``.
    """

    name: str
    teacher: Any
    truth: GaussianMixtureTeacher
    modes: torch.Tensor
    image_shape: tuple[int, ...] | None
    description: str

    def __post_init__(self) -> None:
        k = self.truth.num_components
        if self.modes.shape != (k,) or self.modes.dtype != torch.long:
            raise ValueError(f"modes must be a long tensor of shape ({k},), got {self.modes.shape}")
        if set(self.modes.tolist()) != set(range(int(self.modes.max()) + 1)):
            raise ValueError("mode ids must cover 0..num_modes-1 without gaps")
        if self.image_shape is not None and math.prod(self.image_shape) != self.truth.dim:
            raise ValueError(
                f"image_shape {self.image_shape} does not hold {self.truth.dim} values"
            )

    @property
    def conditional(self) -> bool:
        return self.truth.num_classes > 0

    @property
    def dim(self) -> int:
        return self.truth.dim

    @property
    def num_modes(self) -> int:
        return int(self.modes.max()) + 1
