"""ESD — Wang et al., "Taming Mode Collapse in Score Distillation for Text-to-3D Generation"
(entropic score distillation), CVPR 2024 (reference note b3; official toy
``VITA-Group/3D-Mode-Collapse:gaussian_example.py``, threestudio ``guidance_scale_lora``).

VSD (``vsd.py``, ProlificDreamer eq. 9) whose fake score mixes the camera-conditional and the
camera-free critic, which adds back the entropy of the rendered-view distribution:

    eps_fake = lam eps_psi(x_t; ∅cam) + (1 - lam) eps_psi(x_t; cam)
             = eps_∅cam + (1 - lam)(eps_cam - eps_∅cam)      (threestudio s_lora = 1 - lam)
    g = w(lambda) (eps_real,w(x_t) - eps_fake(x_t)),   L = 0.5 ||x - sg(x - g)||^2

with ProlificDreamer's ``w = 1 - alpha_bar`` (threestudio ``compute_grad_vsd``: ``w = 1 -
alphas[t]``), i.e. ``sigmoid(-lambda)`` on every schedule (VSD's ``weighting``; the raw ``sigma^2``
of a non-VP schedule is not it), at threestudio's SD steps mapped by log-SNR (``t_reference``).

``lam = 0`` is VSD with a camera-conditional critic, ``lam = 1`` pure entropy matching (the VSD
critic without camera). **Camera convention**: the critic is text-agnostic (one critic per
prompt, as ProlificDreamer's LoRA) and its label slot carries the camera: pass integer camera bins
(or particle indices), or continuous azimuths for a critic built with ``azimuth_cond`` (issue 15),
as ``camera: (B,)``; ``NULL_LABEL`` is "no camera". The critic must learn
with camera dropout, ``critic_loss(x, camera, ...)`` inherited from ``VSD`` (``cond_drop = 0.1``,
threestudio ``lora_cfg_training``), or ``eps_psi(·, ∅cam)`` is untrained. ``camera=None`` uses
the camera-free critic only (then ``lam`` has no effect). The teacher is guided by ``cond``; the
critic never is (ProlificDreamer: no CFG on the LoRA branch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..parametrization import guided
from ._ingredients import Loss, add_noise, guided_denoise, matching_logs, surrogate_loss
from .vsd import VSD

__all__ = ["ESD"]


@dataclass(frozen=True)
class ESD(VSD):
    """Entropic score distillation: VSD with a camera-CFG mix of the critic (``lam``)."""

    t_range: tuple[float, float] = (0.02, 0.98)  # threestudio prolificdreamer (then t_max 0.5)
    # threestudio's steps index SD 2.1-base's scheduler (scaled_linear): models/guidance/
    # stable_diffusion_vsd_guidance.py, min/max_step_percent over scheduler.alphas_cumprod
    t_reference: str = "vp-scaled-linear"
    guidance: float = 7.5  # ProlificDreamer / threestudio VSD scale (diffusers convention)
    lam: float = 0.5  # ESD README: guidance_scale_lora = 0.5, i.e. lam = 1 - 0.5
    cond_drop: float = 0.1  # camera dropout in the critic step (lora_cfg_training, 10 %)

    def gradient(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic, rng, camera: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        kappa = self.scale(rng)
        sched = teacher.schedule
        t = self.times(x, sched, rng)
        with torch.no_grad():
            x_t, _, alpha, sigma = add_noise(x.detach(), t, sched, rng)
            d_real = guided_denoise(teacher, kappa, cond)(x_t, t, cond)
            if camera is None:
                d_fake = critic.denoise(x_t, t, None)
            else:  # lam D_∅cam + (1 - lam) D_cam; affine, so the same mix in eps
                d_fake = guided(critic.denoise, 1.0 - self.lam)(x_t, t, camera)
            g = self.update(d_real, d_fake, x_t, alpha, sigma)
        return {"g": g, "t": t, "d_real": d_real, "d_fake": d_fake, "guidance": kappa}

    def generator_loss(
        self,
        x: Tensor,
        cond: Tensor | None,
        *,
        teacher,
        critic,
        rng: torch.Generator | None,
        camera: Tensor | None = None,
    ) -> Loss:
        """Surrogate whose gradient w.r.t. ``x: (B, *D)`` is ``g / B``; ``camera: (B,)`` labels."""
        parts = self.gradient(x, cond, teacher=teacher, critic=critic, rng=rng, camera=camera)
        logs = {**matching_logs(parts), "guidance": float(parts["guidance"]), "lam": self.lam}
        return Loss(surrogate_loss(x, parts["g"]), logs)
