"""SIM — Luo et al., "One-Step Diffusion Distillation through Score Implicit Matching", NeurIPS 2024
(§3.2, the score-gradient theorem; §3.3, the pseudo-Huber distance; reference note b7).

SIM minimises a score divergence ``D(θ) = E_t E_{q_t} d(y_t)`` between teacher and student,
``y_t = s_real(x_t) - s_fake(x_t)``, with ``d(y) = sqrt(||y||^2 + c^2) - c`` (pseudo-Huber, §3.3):

    t ~ U[t_range],  x_t = alpha x + sigma eps
    f_r = D_real(x_t),  f_f = D_fake(x_t)          (parameters frozen, x_t differentiable)
    y   = f_r - f_f                                (= (sigma^2/alpha) (s_real - s_fake))
    L_G = loss_scale · mean_b [ d(y) + d'(y) · (f_f - x) ],    d'(y) = y / sqrt(||y||^2 + c^2)

With the exact fake, ``E[∇_θ L_G] = loss_scale ∇_θ E_{q_t} d(y)`` (score identity
``E[h(x_t)^T (f_f - x)] = 0``; derived in ``tests/test_objectives_extra.py``). For
``d = ½||·||^2`` the bracket is ``y·(f_r - x) - ½||y||^2``: SiD at ``sid_alpha = 0.5``; as
``c → ∞``, ``c · L_G`` tends to exactly that. ``||·||`` runs over all non-batch dims.

Reconstructed (the paper has no public training code; each is a field below):

- the surrogate's form: the paper states the gradient through a stop-gradient ``d'(y_t)``; the
  bracket above is our derivation of a surrogate whose expected gradient is the divergence's,
  checked against closed forms on the Gaussian/affine toy. Note b7's shortcut (SiD's term times
  ``sg(1/sqrt(||y||^2 + c^2))``) is biased for finite ``c`` and is not what is implemented;
- ``y`` in denoiser space ``f_r - f_f`` (the score difference times ``sigma^2/alpha``, SiD's
  weighting), and ``c = huber_c · sqrt(dim)`` so that ``huber_c`` is a per-element RMS scale;
- the times, the critic's DSM and ``loss_scale``, taken from SiD, on which SIM's CIFAR runs build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._ingredients import Loss, check_reference, denoise_pair_through_input, mean_abs
from .sid import SiD

__all__ = ["SIM"]


@dataclass(frozen=True)
class SIM:
    """Score implicit matching with the pseudo-Huber distance (the fake denoiser is ``critic``)."""

    huber_c: float = 0.03  # reconstructed: c / sqrt(dim); must be > 0 (c → 0 is ||y||, L1-like)
    t_range: tuple[float, float] = (0.0, 0.8)  # reconstructed: SiD's tmax = 800
    t_reference: str = "edm"  # reconstructed: SiD's Karras steps (sid.py)
    loss_scale: float = 1.0  # reconstructed: d'(y) is O(1) already, so no SiD-style 100
    guidance: float = 1.0  # teacher CFG scale, 1 = none
    critic_p_mean: float = -1.2  # reconstructed: SiD fake step, ln sigma ~ N(-1.2, 1.2^2)
    critic_p_std: float = 1.2  # EDM's P_std
    sigma_data: float | None = None  # EDM's sigma_d in the critic's weighting; None: the critic's

    def __post_init__(self) -> None:
        if not self.huber_c > 0:
            raise ValueError(f"SIM.huber_c must be > 0 (d'(0) is 0/0 at c = 0), got {self.huber_c}")
        check_reference("SIM", self.t_reference)

    def distance(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(d(y), d'(y))`` for ``y: (B, *D)``: ``d`` is ``(B,)``, ``d'`` is ``(B, *D)``."""
        c = self.huber_c * math.sqrt(y[0].numel())
        root = (y.flatten(1).pow(2).sum(1) + c**2).sqrt()
        return root - c, y / root.reshape((-1,) + (1,) * (y.dim() - 1))

    def generator_loss(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic, rng: torch.Generator | None
    ) -> Loss:
        """``L_G`` for ``x: (B, *D)``; gradients reach ``x`` directly and through ``x_t``."""
        f_r, f_f = denoise_pair_through_input(
            x,
            cond,
            teacher=teacher,
            critic=critic,
            t_range=self.t_range,
            guidance=self.guidance,
            rng=rng,
            t_reference=self.t_reference,
        )
        y = f_r - f_f
        d, d_prime = self.distance(y)
        per_sample = d + (d_prime * (f_f - x)).flatten(1).sum(1)
        value = self.loss_scale * per_sample.mean()
        logs = {
            "sim_loss": value.item(),
            "distance": d.detach().mean().item(),
            "d_diff_abs": mean_abs(y.detach()).mean().item(),
        }
        return Loss(value, logs)

    def critic_loss(self, x: Tensor, cond: Tensor | None, *, critic, rng) -> Loss:
        """SiD's fake step: summed EDM-weighted DSM on ``sg(x)``, lognormal sigma."""
        sid = SiD(
            critic_p_mean=self.critic_p_mean,
            critic_p_std=self.critic_p_std,
            sigma_data=self.sigma_data,
        )
        return sid.critic_loss(x, cond, critic=critic, rng=rng)
