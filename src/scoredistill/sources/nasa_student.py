"""SNOOPI's NASA-T: a one-step student trained with the negative prompt in its cross-attention.

Nguyen et al., "SNOOPI: Supercharged One-step Diffusion Distillation with Proper Guidance",
arXiv 2412.02687 v3, Sec. 5.3 (NASA-T) and Sec. 6.1 (its settings), read in the stored v3 text:

- the student is SwiftBrush's (VSD, ``objectives/vsd.py``) with PG-SB's random scale;
- the teacher's guidance takes the negative prompt ``y-`` as its unconditional branch
  (``eps(x_t, t, y, y-, kappa) = eps(y-) + kappa (eps(y) - eps(y-))``, eq. 5: the library's
  ``negative_prompt``);
- the LoRA teacher (the critic) keeps the empty prompt ("not using them yields better
  results", Table 5);
- the student's cross-attention runs NASA (eq. 9, ``Z = Z+ - alpha Z-``,
  ``sources.nasa_attention``) with the negative prompt's embedding, ``alpha ~ U(0, 1)`` drawn
  "in each iteration" so that the student adapts to every scale.

``NasaStudent`` wraps any generator whose ``denoiser.model`` is a diffusers UNet with
cross-attention (a full copy or a LoRA view on the teacher's base): each training call draws
``alpha`` from the call's ``rng`` (the loop's, checkpointed, so a resumed run is the same run)
and runs the generator with NASA on; ``fixed_alpha`` sets one ``alpha`` for evaluation (0: the
paper's "NASA-T" rows, the plain student; > 0: "NASA-T + NASA-I"). The processors are installed
for the call only, so a shared base serves the teacher and the critic unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .nasa_attention import check_alpha, disable_nasa, enable_nasa, nasa_layers

__all__ = ["NasaStudent", "fixed_alpha", "nasa_on", "unwrap_nasa"]


@contextmanager
def nasa_on(unet: nn.Module, alpha: float, negative: Tensor) -> Iterator[None]:
    """NASA with ``alpha`` and ``negative: (1, L, E)`` on every cross-attention layer of
    ``unet`` for the block; the previous processors (the same objects) afterwards."""
    enable_nasa(unet, alpha, negative)
    try:
        yield
    finally:
        disable_nasa(unet)


class NasaStudent(nn.Module):
    """``generator`` trained under NASA with ``alpha ~ U(alpha_range)`` per call (module
    docstring). ``negative: (1, L, E)`` is the negative prompt's embedding (a plain attribute:
    not a parameter, not in checkpoints). Other attributes are the generator's."""

    def __init__(
        self, generator: nn.Module, negative: Tensor, alpha_range: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        super().__init__()
        lo, hi = (check_alpha(a, "nasa.alpha_range") for a in alpha_range)
        if lo > hi:
            raise ValueError(
                f"nasa.alpha_range must be (low, high) with low <= high, got {alpha_range}"
            )
        if not nasa_layers(generator.denoiser.model):
            raise ValueError("NASA-T needs a UNet with cross-attention layers (none found)")
        self.generator = generator
        self.negative, self.alpha_range = negative.detach(), (lo, hi)
        self.alpha: float | None = None  # None: drawn per call; else fixed (fixed_alpha)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["generator"], name)

    def draw_alpha(self, rng: torch.Generator | None) -> float:
        """This call's ``alpha``: the fixed one, or ``U(alpha_range)`` from ``rng``."""
        if self.alpha is not None:
            return self.alpha
        lo, hi = self.alpha_range
        where = rng.device if rng is not None else "cpu"
        return lo + (hi - lo) * float(torch.rand((), generator=rng, device=where))

    def forward(
        self,
        z: Tensor,
        cond: Any = None,
        *,
        rng: torch.Generator | None = None,
        k: int | None = None,
    ) -> Tensor:
        alpha = self.draw_alpha(rng)
        with nasa_on(self.generator.denoiser.model, alpha, self.negative):
            return self.generator(z, cond, rng=rng, k=k)

    def backward_simulation(
        self, z: Tensor, cond: Any = None, *, rng: torch.Generator | None, k: int | None = None
    ) -> tuple[Tensor, int]:
        """DMD2's backward simulation (``DiffusersGenerator.backward_simulation``) under NASA."""
        k = self.generator.draw_step(rng) if k is None else k
        return self(z, cond, rng=rng, k=k), k


@contextmanager
def fixed_alpha(model: nn.Module, alpha: float) -> Iterator[nn.Module]:
    """``model`` (a ``NasaStudent``, or any generator: unchanged) sampling at one ``alpha``."""
    if not isinstance(model, NasaStudent):
        yield model
        return
    before, model.alpha = model.alpha, check_alpha(alpha, "nasa.eval_alpha")
    try:
        yield model
    finally:
        model.alpha = before


def unwrap_nasa(model: nn.Module) -> nn.Module:
    """The plain generator inside a ``NasaStudent`` (what is exported), or ``model`` itself."""
    return model.generator if isinstance(model, NasaStudent) else model
