"""SiD — Zhou et al., "Score identity Distillation", ICML 2024 (eq. 23, the generator loss;
``training/sid_loss.py:SID_EDMLoss.generator_loss``, reference note b4).

    t ~ U[0, 0.8] (tmax = 800 of Karras' 1000 steps; t_reference),  x_t = alpha x + sigma eps
    f_r = D_real(x_t),  f_f = D_fake(x_t)         (parameters frozen, x_t differentiable)
    w   = sg(mean_pix |x - f_r|).clip(1e-5)
    L_G = 100 · mean_b  sum_pix (f_r - f_f) ⊙ ((f_r - x) - sid_alpha (f_r - f_f)) / w

Unlike DMD, the gradient flows through both denoisers' *inputs* (three networks in the graph).
With the exact fake denoiser and ``w = 1`` the expected gradient of ``L_G / 100`` at
``sid_alpha = 0.5`` is half the gradient of the Fisher divergence
``F(θ) = E_{q_t} ||D_real - D_fake||^2`` (score identity ``E[h(x_t)^T D_fake] = E[h(x_t)^T x]``;
derived in ``tests/test_objectives.py``); other ``sid_alpha`` descend but are biased. The loss can
be negative and oscillate around 0 (SiD issue #6): it is not a progress metric. Samples with a
non-finite ``x``, ``f_r`` or ``f_f`` are dropped. Generator-side choices (input ``sigma_init z`` with
``sigma_init = 2.5``, Adam ``beta1 = 0``, EMA) belong to the source and the trainer.

Guidance (CFG ``D_w = D_∅ + w (D_c - D_∅)``, note b5/b6), four scales in SiD-LSG's terms:
``guidance`` = κ4 on the teacher; ``guidance_fake`` = κ2 = κ3 on the fake inside ``L_G``;
``guidance_critic`` = κ1, the fake's own DSM is taken on its guided output ``CFG_κ1(D_fake)``.
LSG sets all to κ ("long" guidance: only κ4 > 1). Few-step SiD's Zero-CFG is ``guidance = 1,
guidance_fake = 0`` (the fake runs unconditionally); Anti-CFG is ``guidance_fake < 0``. When the
fake is guided (κ1 or κ2 ≠ 1) its DSM drops labels with probability ``cond_drop`` (SiD-LSG's
``use_context_dropout_train_fake``), so ``D_∅`` is learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._ingredients import (
    GuidedView,
    Loss,
    bcast,
    check_reference,
    denoise_pair_through_input,
    denoising_loss,
    drop_labels,
    mean_abs,
    sample_t_lognormal,
)

__all__ = ["SiD"]


@dataclass(frozen=True)
class SiD:
    """Score identity distillation (the fake denoiser is ``critic``)."""

    sid_alpha: float = 1.2  # SiD paper and run_sid.sh (1.0 for AFHQ; 0.5 or 1 unbiased, b4)
    t_range: tuple[float, float] = (0.0, 0.8)  # tmax = 800: sigma in [0.002, ~24.4] on EDM
    # SiD's t is the Karras ramp sigma_min = 0.002 .. sigma_max = 80, rho = 7 (mingyuanzhou/SiD
    # training/sid_loss.py, SID_EDMLoss.generator_loss): our "edm" with uniform t
    t_reference: str = "edm"
    normalization: str = "per_sample"  # SiD: w = mean_pix |x - f_r|; "none": w = 1
    w_min: float = 1e-5  # sid_loss.py: w.clip(min=1e-5)
    loss_scale: float = 100.0  # sid_loss.py loss_scaling_G
    guidance: float = 1.0  # teacher CFG scale κ4 (SiD-LSG guides; SiD does not)
    guidance_fake: float = 1.0  # κ2 = κ3: fake's CFG in L_G; 0 = Zero-CFG, < 0 = Anti-CFG
    guidance_critic: float = 1.0  # κ1: the fake's DSM is on CFG_κ1(D_fake) (SiD-LSG)
    cond_drop: float = 0.1  # label dropout of the fake's DSM when κ1 or κ2 ≠ 1 (SiD-LSG: 10 %)
    critic_p_mean: float = -1.2  # SiD fake step: ln sigma ~ N(-1.2, 1.2^2) (EDM's P_mean)
    critic_p_std: float = 1.2  # EDM's P_std
    sigma_data: float | None = None  # EDM's sigma_d in the critic's weighting; None: the critic's

    def __post_init__(self) -> None:
        if self.normalization not in ("per_sample", "none"):
            raise ValueError(
                f"SiD.normalization must be 'per_sample' or 'none', got {self.normalization!r}"
            )
        check_reference("SiD", self.t_reference)

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
            guidance_fake=self.guidance_fake,
            t_reference=self.t_reference,
        )
        if self.normalization == "none":
            w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        else:
            w = mean_abs(x - f_r).detach().clamp_min(self.w_min)
        diff = f_r - f_f
        per_pix = diff * ((f_r - x) - self.sid_alpha * diff) / bcast(w, x)
        finite = torch.stack([v.flatten(1).isfinite().all(1) for v in (x, f_r, f_f)]).all(0)
        value = self.loss_scale * per_pix.flatten(1)[finite].sum() / x.shape[0]
        logs = {
            "sid_loss": value.item(),
            "d_diff_abs": mean_abs(diff.detach()).mean().item(),
            "w": w.mean().item(),
            "dropped": float((~finite).sum().item()),
        }
        return Loss(value, logs)

    def critic_loss(self, x: Tensor, cond: Tensor | None, *, critic, rng) -> Loss:
        """``mean_b sum_pix lambda(sigma) ||D_fake(sg(x) + sigma n) - sg(x)||^2``, lognormal sigma."""
        t = sample_t_lognormal(
            x.shape[0],
            critic.schedule,
            self.critic_p_mean,
            self.critic_p_std,
            rng,
            dtype=x.dtype,
            device=x.device,
        )
        guided = cond is not None and self.guidance_critic != 1.0
        if cond is not None and (guided or self.guidance_fake != 1.0):
            cond = drop_labels(cond, self.cond_drop, rng)
        if guided:
            critic = GuidedView(critic, self.guidance_critic, cond)
        return denoising_loss(
            critic, x, cond, rng, t=t, sigma_data=self.sigma_data, reduction="sum"
        )
