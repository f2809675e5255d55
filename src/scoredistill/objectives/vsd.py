"""VSD as a one-step generator — SwiftBrush, Nguyen & Tran, CVPR 2024 (ProlificDreamer's VSD,
Wang et al. 2023, eq. 9, with a one-step student; ``VinAIResearch/SwiftBrush:train_swiftbrush.py``,
reference note b3).

    t ~ U{20, ..., 980} of SD's 1000 steps,  x_t = alpha x + sigma eps
    g = w(lambda) (eps_real(x_t) - eps_fake(x_t)),   w = 1 - alpha_bar = sigmoid(-lambda)   (no DMD w)
    L = 0.5 ||x - sg(x - g)||^2

SwiftBrush (and ProlificDreamer, threestudio) write ``w = sigma_t^2`` with ``sigma_t^2 = 1 -
alpha_bar_t`` on SD's VP table. On another schedule the raw ``sigma^2`` is not that weight (EDM's
reaches 6400, putting ~95 % of the update where every denoiser returns the mean); the weight is
the VP ``1 - alpha_bar`` of the same log-SNR ``lambda = log(alpha^2 / sigma^2)``, i.e.
``sigma^2 / (alpha^2 + sigma^2)`` (``_steps.weight``, field ``weighting``). Times are SwiftBrush's
steps on SD's table, mapped to the schedule in use by log-SNR (``t_reference``, ``_ingredients``).
``eps = (x_t - alpha D)/sigma`` (``parametrization.from_denoiser``), so the push is toward
``D_real`` as in DMD and ``E[(dx/dθ)^T g] = w (sigma/alpha) ∇_θ KL(q_t || p_t)`` (``sigma^3/alpha``
on VP). CFG of the same scale goes on the teacher *and* the fake (SwiftBrush); PG-SB (SNOOPI,
Nguyen et al. 2024) draws that scale from ``U(guidance_range)`` once per call. Neither denoiser
gets gradients. The critic (SwiftBrush's LoRA) learns by DSM on ``sg(x)`` with the label dropped
with probability ``cond_drop`` so it can be guided. Departure: its DSM uses the shared EDM
weighting, not SwiftBrush's ``alpha_bar``-weighted eps-MSE.
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
    check_reference,
    denoising_loss,
    drop_labels,
    guided_denoise,
    matching_logs,
    sample_t,
    surrogate_loss,
)
from ._steps import WEIGHTINGS, weight

__all__ = ["VSD"]


@dataclass(frozen=True)
class VSD:
    """Variational score distillation for a generator (SwiftBrush; PG-SB with ``guidance_range``)."""

    t_range: tuple[float, float] = (0.02, 0.98)  # SwiftBrush: t ~ U{20, ..., 980} of 1000
    # SwiftBrush's steps index SD 2.1's DDPMScheduler (scaled_linear, beta 0.00085..0.012):
    # train_swiftbrush.py, DDPMScheduler.from_pretrained(..., subfolder="scheduler")
    t_reference: str = "vp-scaled-linear"
    weighting: str = "sds"  # w = 1 - alpha_bar: train_swiftbrush.py sigma_t**2 = 1 - alphas_cumprod
    guidance: float = 4.5  # SwiftBrush README command (argparse default 7.5)
    guidance_range: tuple[float, float] | None = None  # PG-SB: scale ~ U(min, max) per step
    critic_t_range: tuple[float, float] = (0.0, 1.0)  # SwiftBrush LoRA step: t ~ U{0, ..., 999}
    cond_drop: float = 0.1  # SwiftBrush LoRA step: empty prompt with p = 0.1
    sigma_data: float | None = None  # EDM's sigma_d in the critic's weighting; None: the critic's

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"{name}.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}"
            )
        check_reference(name, self.t_reference)

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
        t = self.times(x, teacher.schedule, rng)
        with torch.no_grad():
            x_t, _, alpha, sigma = add_noise(x.detach(), t, teacher.schedule, rng)
            d_real = guided_denoise(teacher, kappa, cond)(x_t, t, cond)
            d_fake = guided_denoise(critic, kappa, cond)(x_t, t, cond)
            g = self.update(d_real, d_fake, x_t, alpha, sigma)
        return {"g": g, "t": t, "d_real": d_real, "d_fake": d_fake, "guidance": kappa}

    def times(self, x: Tensor, schedule, rng: torch.Generator | None) -> Tensor:
        """``(B,)`` times on ``schedule``: ``U(t_range)`` of ``t_reference``, matched in log-SNR."""
        n, dt, dev = x.shape[0], x.dtype, x.device
        return sample_t(
            n, schedule, self.t_range, rng, dtype=dt, device=dev, reference=self.t_reference
        )

    def update(
        self, d_real: Tensor, d_fake: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor
    ) -> Tensor:
        """``g = w(lambda) (eps_real - eps_fake)`` for denoisers ``(B, *D)`` at ``x_t``."""
        eps_real = from_denoiser(d_real, x_t, alpha, sigma, "eps")
        eps_fake = from_denoiser(d_fake, x_t, alpha, sigma, "eps")
        w = weight(self.weighting, alpha, sigma)
        return torch.nan_to_num(bcast(w, x_t) * (eps_real - eps_fake))

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
            critic,
            x,
            cond,
            rng,
            t_range=self.critic_t_range,
            t_reference=self.t_reference,
            sigma_data=self.sigma_data,
        )
