"""Ingredients of the score-distillation-as-optimization objectives (SDS and its variants).

Reference note b14 writes every method as ``w(t) · Σ_i a_i P_i`` over a few denoiser
evaluations; this module holds the pieces that are not already in ``_ingredients``:

- ``weight``: the ``w(t)`` zoo of note b0, written with the VP-equivalent
  ``abar = alpha^2 / (alpha^2 + sigma^2) = sigmoid(lambda)``, ``lambda = log(alpha^2 / sigma^2)``
  (= ``alpha_bar_t`` on the VP tables; on other schedules the VP ``alpha_bar`` of the same
  log-SNR), so every weight is a function of the noise level alone, equal on VP and EDM;
- ``eps_hat``: ``eps = (x_t - alpha D) / sigma`` of a (possibly guided) denoiser;
- ``ddim_step``: the deterministic DDIM move between two per-sample times, used forward as
  DDIM inversion (ISM) and backward as the probability-flow ODE step (CDS). With ``D`` frozen it
  is exact, and it is Euler in the VE level ``sigma / alpha`` (``samplers.ddim``);
- ``fixed_noise``: one noise tensor per run (CDS, CSM, LucidDreamer's ``fix_noise``);
- ``score_logs``: ``||g||`` per sample (the surrogate's value is meaningless, note b0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..parametrization import cat_conditions, from_denoiser
from ._ingredients import bcast, per_t_bins

__all__ = [
    "WEIGHTINGS",
    "class_eps",
    "ddim_step",
    "eps_hat",
    "fixed_noise",
    "need_labels",
    "score_logs",
    "weight",
]

WEIGHTINGS = ("sds", "uniform", "fantasia3d", "sigma_over_alpha", "sqrt_abar")


def weight(name: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``w(t)``, shape ``(B,)``, a function of ``lambda`` only (``abar = sigmoid(lambda)``):
    ``sds`` = 1 - abar = sigmoid(-lambda) (sigma^2 on VP; DreamFusion, ProlificDreamer, SwiftBrush),
    ``uniform`` = 1, ``fantasia3d`` = sqrt(abar)(1 - abar), ``sigma_over_alpha`` = sigma/alpha =
    exp(-lambda/2) (ISM), ``sqrt_abar`` = sqrt(abar) (BSD)."""
    abar = alpha**2 / (alpha**2 + sigma**2)
    if name == "sds":
        return 1 - abar
    if name == "uniform":
        return torch.ones_like(alpha)
    if name == "fantasia3d":
        return abar.sqrt() * (1 - abar)
    if name == "sigma_over_alpha":
        return sigma / alpha
    if name == "sqrt_abar":
        return abar.sqrt()
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {name!r}")


def eps_hat(denoise, x_t: Tensor, t: Tensor, cond: Tensor | None, alpha, sigma) -> Tensor:
    """``(x_t - alpha D(x_t, t, cond)) / sigma`` for ``x_t: (B, *D)``, ``alpha, sigma: (B,)``."""
    return from_denoiser(denoise(x_t, t, cond), x_t, alpha, sigma, "eps")


def ddim_step(
    d: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, alpha2: Tensor, sigma2: Tensor
) -> Tensor:
    """DDIM (eta = 0) from ``(alpha, sigma)`` to ``(alpha2, sigma2)`` keeping ``D`` and ``eps``:
    ``x' = alpha2 D + sigma2 (x_t - alpha D) / sigma``; coefficients ``(B,)``. Equal times give
    ``x' = x_t`` exactly."""
    eps = (x_t - bcast(alpha, x_t) * d) / bcast(sigma, x_t)
    return bcast(alpha2, x_t) * d + bcast(sigma2, x_t) * eps


def class_eps(teacher, x_t: Tensor, t: Tensor, alpha, sigma, labels: list[Tensor]) -> list[Tensor]:
    """Teacher noise predictions at ``x_t`` under each ``(B,)`` label tensor, one batched call."""
    n = len(labels)
    eps = eps_hat(
        teacher.denoise,
        torch.cat([x_t] * n),
        torch.cat([t] * n),
        cat_conditions(labels),
        torch.cat([alpha] * n),
        torch.cat([sigma] * n),
    )
    return list(eps.chunk(n))


def need_labels(name: str, cond: Tensor | None) -> Tensor:
    """``cond``, or a ``ValueError`` naming the method when it is ``None``."""
    if cond is None:
        raise ValueError(f"{name} distils the classifier eps_c - eps_∅: it needs labels (cond)")
    return cond


def fixed_noise(x: Tensor, noise: Tensor | None, seed: int) -> Tensor:
    """``noise`` if given (shape of ``x``), else ``N(0, I)`` drawn from ``seed`` alone, so every
    call with the same batch shape sees the same tensor (one noise per batch position)."""
    if noise is not None:
        if noise.shape != x.shape:
            raise ValueError(f"noise must have the shape of x {tuple(x.shape)}, got {noise.shape}")
        return noise.to(dtype=x.dtype, device=x.device)
    rng = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape, generator=rng, dtype=x.dtype).to(x.device)


def score_logs(g: Tensor, t: Tensor) -> dict[str, float]:
    """``grad_norm`` (mean per-sample ``||g||``), ``g_abs`` and the norm binned by ``t``."""
    norm = g.flatten(1).norm(dim=1)
    return {
        "grad_norm": norm.mean().item(),
        "g_abs": g.abs().mean().item(),
        **per_t_bins("grad_norm", norm, t),
    }
