"""DMD2 — Yin et al., "Improved Distribution Matching Distillation for Fast Image Synthesis", 2024.

Distribution matching (DMD, Yin et al. 2023, eq. 7; DMD2 ``compute_distribution_matching_loss``,
reference note b2). With ``x_t = alpha x + sigma eps`` and ``t`` uniform in DMD2's steps 20..980 of
its 1000-step grid (``t_reference``, mapped to the schedule in use by log-SNR):

    g = (D_fake(x_t) - D_real(x_t)) / w,        w = mean_pix |x - D_real(x_t)|   (per sample)
    L = 0.5 ||x - sg(x - g)||^2                 (so dL/dx = g / B)

``D_fake - D_real = (sigma^2/alpha) (s_fake - s_real)``, so ``E[(dx/dθ)^T g] (w = 1)`` is
``(sigma^2/alpha^2) ∇_θ KL(q_t || p_t)``; descent moves ``x`` along ``D_real - D_fake``, toward the
teacher. There is no time weight: a denoiser is a function of ``x_t / alpha`` and the log-SNR, so
``g`` is the same on every schedule at equal log-SNR. ``D_real`` may use classifier-free guidance
(teacher only; the fake is never guided). Neither denoiser gets gradients (``no_grad``). The
critic learns ``D_fake`` by EDM-weighted DSM on ``sg(x)`` over all times. DMD v1's regression
term ``lambda_reg ||G(z) - y||^2`` on (noise, teacher-ODE output) pairs is ``regression_loss``
(a squared distance as in revsic/flowmodels; the paper uses LPIPS). It is reduced like ``L``
(summed over the non-batch dims, mean over the batch), so its gradient ``2 lambda_reg (x - y) / B``
stands to ``g / B`` in the same ratio at every data dimension, as where both are means over
dims (DMD2's ``0.5 MSE_mean(x, sg(x - g))``, revsic/flowmodels' MSE regression with 0.25; LPIPS
is a spatial mean too). (Until stop 36 it was a mean over dims against this sum, which weakened
it by the data dimension: half on the 2-D testbeds, 1/64 on digits.)
"DMD2 + GAN" (``gan_generator_weight > 0``) adds the diffusion-GAN term of ``_gan.py`` with the
classifier head on the critic: ``+ gan_generator_weight L_G`` in the generator step and
``+ gan_critic_weight L_D`` (on teacher samples ``real``) in the critic step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._gan import gan_critic_loss, gan_generator_loss
from ._ingredients import (
    NORMALIZATIONS,
    Loss,
    add_noise,
    bcast,
    check_reference,
    denoising_loss,
    guided_denoise,
    matching_logs,
    normalizer,
    sample_t,
    surrogate_loss,
)

__all__ = ["DMD", "critic_with_gan", "dmd_update"]


@dataclass(frozen=True)
class DMD:
    """Distribution matching distillation (DMD2 semantics by default)."""

    t_range: tuple[float, float] = (0.02, 0.98)  # DMD2 min/max_step_percent (b2)
    # DMD2's EDM runs (ImageNet-64, whose defaults these are) index 1000 Karras sigmas 0.002..80,
    # small sigma first (tianweiy/DMD2 main/edm/edm_guidance.py, karras_sigmas); its SD runs
    # index SD's DDIMScheduler table (main/sd_guidance.py): "vp-scaled-linear"
    t_reference: str = "edm"
    normalization: str = "per_sample"  # DMD2: w per sample; "batch" = FastVideo, "none" = w = 1
    eps: float = 0.0  # DMD2 adds none (nan_to_num instead); FastGen 1e-6, Flash 1e-5
    guidance: float = 1.0  # teacher CFG scale, 1 = none (DMD2 EDM); SD runs use e.g. 1.75–8
    regression_weight: float = 0.0  # DMD2 drops it; DMD v1 uses lambda_reg = 0.25 (paper)
    critic_t_range: tuple[float, float] = (0.0, 1.0)  # DMD2 fake step: all sigmas (b2)
    sigma_data: float | None = None  # EDM's sigma_d in the critic's weighting; None: the critic's
    gan_generator_weight: float = 0.0  # DMD2 + GAN: 3e-3 (ImageNet-64), 5e-3 (SDXL); 0 = no GAN
    gan_critic_weight: float = 1e-2  # DMD2's D loss weight (ImageNet-64, SDXL)
    gan_t_range: tuple[float, float] = (0.0, 1.0)  # diffusion_gan_max_timestep = 1000 of 1000

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"DMD.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        check_reference("DMD", self.t_reference)

    @property
    def needs_real(self) -> bool:
        """Whether ``critic_loss`` needs teacher samples (the GAN's real class)."""
        return self.gan_generator_weight > 0

    def gradient(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic, rng
    ) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        n, ref = x.shape[0], self.t_reference
        sched = teacher.schedule
        t = sample_t(n, sched, self.t_range, rng, dtype=x.dtype, device=x.device, reference=ref)
        with torch.no_grad():
            x_t, _, _, _ = add_noise(x.detach(), t, teacher.schedule, rng)
        parts = dmd_update(x, x_t, t, cond, teacher=teacher, critic=critic, objective=self)
        return {**parts, "t": t, "x_t": x_t}

    def generator_loss(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic, rng: torch.Generator | None
    ) -> Loss:
        """Surrogate whose gradient w.r.t. ``x: (B, *D)`` is ``g / B``."""
        parts = self.gradient(x, cond, teacher=teacher, critic=critic, rng=rng)
        logs = {
            **matching_logs(parts),
            "w": parts["w"].mean().item(),
        }
        value = surrogate_loss(x, parts["g"])
        if self.gan_generator_weight > 0:
            gan, gan_logs = gan_generator_loss(
                x, cond, critic, t_range=self.gan_t_range, rng=rng, t_reference=self.t_reference
            )
            value, logs = value + self.gan_generator_weight * gan, logs | gan_logs
        return Loss(value, logs)

    def critic_loss(self, x: Tensor, cond: Tensor | None, *, critic, rng, real=None) -> Loss:
        """EDM-weighted DSM of the critic on ``sg(x)``, times from ``critic_t_range``; with the
        GAN on, ``+ gan_critic_weight L_D`` on ``x`` vs ``real = (x_real, labels | None)``."""
        return critic_with_gan(self, x, cond, critic=critic, rng=rng, real=real)

    def regression_loss(self, x: Tensor, x_ode_target: Tensor) -> Loss:
        """DMD v1: ``regression_weight * mean_b ||x_b - y_b||^2`` against teacher-ODE outputs
        ``y: (B, *D)``, summed over ``D`` like the surrogate (module docstring); logs the
        per-element MSE."""
        dist = (x - x_ode_target.detach()).pow(2).flatten(1).sum(1).mean()
        mse = dist.item() / x[0].numel()
        return Loss(self.regression_weight * dist, {"regression_mse": mse})


def dmd_update(
    x: Tensor, x_t: Tensor, t: Tensor, cond: Tensor | None, *, teacher, critic, objective
) -> dict[str, Tensor]:
    """DMD's normalised update at given ``(x_t, t)`` (module docstring), without gradients:
    ``g = (D_fake - D_real^κ) / w`` with ``w`` from ``objective``'s ``normalization`` and ``eps``
    and κ its ``guidance``. Shared by DMD, TDM and Phased DMD, which differ in where ``x_t``
    and ``t`` come from."""
    with torch.no_grad():
        d_real = guided_denoise(teacher, objective.guidance, cond)(x_t, t, cond)
        d_fake = critic.denoise(x_t, t, cond)
        w = normalizer(x, d_real, objective.normalization, objective.eps)
        g = torch.nan_to_num((d_fake - d_real) / bcast(w, x))
    return {"g": g, "w": w, "d_real": d_real, "d_fake": d_fake}


def critic_with_gan(obj, x: Tensor, cond: Tensor | None, *, critic, rng, real) -> Loss:
    """``obj``'s DSM critic loss, plus its weighted discriminator loss when the GAN is on
    (shared by DMD and f-distill, whose fields carry the same names)."""
    ref = obj.t_reference
    loss = denoising_loss(
        critic, x, cond, rng, t_range=obj.critic_t_range, t_reference=ref, sigma_data=obj.sigma_data
    )
    if obj.gan_generator_weight <= 0:
        return loss
    if real is None:
        raise ValueError(f"{type(obj).__name__} with a GAN needs real=(x_real, labels) samples")
    gan, logs = gan_critic_loss(
        x, cond, real, critic, t_range=obj.gan_t_range, rng=rng, t_reference=ref
    )
    return Loss(loss.value + obj.gan_critic_weight * gan, loss.logs | logs)
