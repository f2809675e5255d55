"""VSD as a one-step generator — SwiftBrush, Nguyen & Tran, CVPR 2024 (ProlificDreamer's VSD,
Wang et al. 2023, eq. 9, with a one-step student; ``train_swiftbrush.py``, reference note b3).

    t ~ U[2 %, 98 %],  x_t = alpha x + sigma eps
    g = sigma^2 (eps_real(x_t) - eps_fake(x_t)) = alpha sigma (D_fake - D_real)     (no w)
    L = 0.5 ||x - sg(x - g)||^2

``eps = (x_t - alpha D)/sigma`` (``parametrization.from_denoiser``), so the push is toward
``D_real`` as in DMD and ``E[(dx/dθ)^T g] = (sigma^3/alpha) ∇_θ KL(q_t || p_t)``. CFG of the same
scale goes on the teacher *and* the fake (SwiftBrush); PG-SB (SNOOPI, Nguyen et al. 2024) draws
that scale from ``U(guidance_range)`` once per call. Neither denoiser gets gradients. The critic
(SwiftBrush's LoRA) learns by DSM on ``sg(x)`` with the label dropped with probability
``cond_drop`` so it can be guided. Departure: its DSM uses the shared EDM weighting, not
SwiftBrush's ``alpha_bar``-weighted eps-MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..parametrization import from_denoiser
from ._ingredients import (
    Loss,
    add_noise,
    bcast,
    denoising_loss,
    drop_labels,
    guided_denoise,
    matching_logs,
    sample_t,
    surrogate_loss,
)

__all__ = ["VSD"]


@dataclass(frozen=True)
class VSD:
    """Variational score distillation for a generator (SwiftBrush; PG-SB with ``guidance_range``)."""

    t_range: tuple[float, float] = (0.02, 0.98)  # SwiftBrush: t ~ U{20, ..., 980} of 1000
    guidance: float = 4.5  # SwiftBrush README command (argparse default 7.5)
    guidance_range: tuple[float, float] | None = None  # PG-SB: scale ~ U(min, max) per step
    critic_t_range: tuple[float, float] = (0.0, 1.0)  # SwiftBrush LoRA step: t ~ U{0, ..., 999}
    cond_drop: float = 0.1  # SwiftBrush LoRA step: empty prompt with p = 0.1
    sigma_data: float = 0.5  # EDM's sigma_d in the critic's weighting

    def scale(self, rng: torch.Generator | None) -> float:
        """The CFG scale for this step: fixed, or drawn from ``guidance_range`` (PG-SB)."""
        if self.guidance_range is None:
            return self.guidance
        lo, hi = self.guidance_range
        return lo + (hi - lo) * torch.rand((), generator=rng, dtype=torch.float64).item()

    def gradient(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic, rng
    ) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        kappa = self.scale(rng)
        t = sample_t(
            x.shape[0], teacher.schedule, self.t_range, rng, dtype=x.dtype, device=x.device
        )
        with torch.no_grad():
            x_t, _, alpha, sigma = add_noise(x.detach(), t, teacher.schedule, rng)
            d_real = guided_denoise(teacher, kappa, cond)(x_t, t, cond)
            d_fake = guided_denoise(critic, kappa, cond)(x_t, t, cond)
            eps_real = from_denoiser(d_real, x_t, alpha, sigma, "eps")
            eps_fake = from_denoiser(d_fake, x_t, alpha, sigma, "eps")
            g = torch.nan_to_num(bcast(sigma, x) ** 2 * (eps_real - eps_fake))
        return {"g": g, "t": t, "d_real": d_real, "d_fake": d_fake, "guidance": kappa}

    def generator_loss(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic, rng: torch.Generator | None
    ) -> Loss:
        """Surrogate whose gradient w.r.t. ``x: (B, *D)`` is ``g / B``."""
        parts = self.gradient(x, cond, teacher=teacher, critic=critic, rng=rng)
        logs = {
            **matching_logs(parts),
            "guidance": float(parts["guidance"]),
        }
        return Loss(surrogate_loss(x, parts["g"]), logs)

    def critic_loss(self, x: Tensor, cond: Tensor | None, *, critic, rng) -> Loss:
        """DSM of the critic on ``sg(x)``; labels dropped to ``NULL_LABEL`` w.p. ``cond_drop``."""
        if cond is not None:
            cond = drop_labels(cond, self.cond_drop, rng)
        return denoising_loss(
            critic, x, cond, rng, t_range=self.critic_t_range, sigma_data=self.sigma_data
        )
