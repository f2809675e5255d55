"""ISM — Liang et al., "LucidDreamer: Towards High-Fidelity Text-to-3D Generation via Interval
Score Matching", CVPR 2024 (official ``EnVision-Research/LucidDreamer:guidance/sd_utils.py::
train_step``, reference note b10; paper equation number unchecked, the note records none).

Deterministic DDIM inversion replaces SDS's random ``x_t``; the target is the teacher's own
prediction one interval lower on the same (inverted) trajectory:

    t ~ U{20..500} of SD's 1000 steps,  s = t - δ                       (δ = 80 / 1000)
    x_0' = alpha_0 x + sigma_0 eps at the range start, DDIM-inverted to x_s in steps of
      ``xs_delta_t`` (at most ``xs_inv_steps``) with the inversion denoiser D_inv
    eps_s = eps_inv(x_s, s),  x_t = alpha_t D_inv(x_s, s) + sigma_t eps_s    (one more step)
    g = w(t) (eps_w(x_t, t) - eps_s),   w = sigma_t / alpha_t
    L = 0.5 ||x - sg(x - g)||^2

``D_inv`` is the unconditional teacher (``inverse_text = ''``, ``denoise_guidance_scale = 1``);
``inversion_guidance`` is its scale in our convention: LucidDreamer's "reverse CFG"
``cond + k (uncond - cond)`` is ``1 - k`` here, so its default ``k = 1`` is ``0``. The start is
LucidDreamer's first inversion point, the schedule's least noisy time (DDPM step 0), noised with
``eps`` (fresh, or ``noise=`` for ``fix_noise``). For a Gaussian teacher ``N(mu, s^2 I)`` every
step is linear in ``y = x - alpha mu``, so ``g = w k_ts P (alpha_0 (x - mu) + sigma_0 eps)`` in
closed form (``tests/test_score_objectives.py``); ``E g = 0`` exactly at ``x = mu``; for a point
mass the inversion is the exact flow and ``g ≡ 0``. ``δ`` anneals from 0.1 in the official configs
(the caller's schedule). Every time (``t``, ``s``, the inversion grid) is a fraction of SD's steps
mapped to the schedule in use by log-SNR (``t_reference``); ``w`` is ``exp(-lambda/2)``. Cost: up
to ``xs_inv_steps + 1`` inversion NFE plus one guided call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..parametrization import guided, null_condition
from ._ingredients import (
    Loss,
    bcast,
    check_reference,
    guided_denoise,
    ref_to_t,
    sample_u,
    surrogate_loss,
)
from ._steps import WEIGHTINGS, ddim_step, eps_hat, score_logs, weight

__all__ = ["ISM"]


@dataclass(frozen=True)
class ISM:
    """Interval score matching: DDIM-inverted ``x_s -> x_t`` and the teacher's ``eps`` at ``s``."""

    t_range: tuple[float, float] = (0.02, 0.5)  # after warm-up (upper bound 0.98 -> 0.5, 1.5k it)
    # LucidDreamer's steps index Stable Diffusion's DDIMScheduler (scaled_linear):
    # EnVision-Research/LucidDreamer guidance/sd_utils.py
    t_reference: str = "vp-scaled-linear"
    delta_t: float = 0.08  # t - s = 80 of 1000 steps (annealed from 100)
    xs_delta_t: float = 0.2  # inversion step to x_s: 200 of 1000
    xs_inv_steps: int = 5  # at most 5 inversion steps to x_s
    guidance: float = 7.5  # CFG on eps(x_t, t) (diffusers convention)
    inversion_guidance: float = 0.0  # D_inv scale: 0 = unconditional (LucidDreamer default)
    weighting: str = "sigma_over_alpha"  # w = sqrt((1 - alpha_bar) / alpha_bar)

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"ISM.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check_reference("ISM", self.t_reference)

    def _t(self, schedule, u: Tensor, dtype: torch.dtype) -> Tensor:
        """Times on ``schedule`` for fractions ``u`` of the reference's steps."""
        return ref_to_t(schedule, u, self.t_reference).to(dtype)

    def _inversion_denoiser(self, teacher, cond: Tensor | None):
        if cond is None:
            return teacher.denoise
        if self.inversion_guidance == 0.0:
            null = null_condition(cond)
            return lambda x_t, t, _c: teacher.denoise(x_t, t, null)
        return guided(teacher.denoise, self.inversion_guidance)

    def invert(self, x: Tensor, eps: Tensor, u_s: Tensor, d_inv, cond, schedule) -> Tensor:
        """DDIM inversion of ``x`` (noised with ``eps`` at the start) to ``x_s`` at the fractions
        ``u_s: (B,)``, per sample."""
        u = (u_s - self.xs_delta_t * self.xs_inv_steps).clamp(min=0.0)
        t_cur = self._t(schedule, u, x.dtype)
        a, sg = schedule.alpha_sigma(t_cur)
        x_cur = bcast(a, x) * x + bcast(sg, x) * eps
        for _ in range(self.xs_inv_steps):
            if bool((u >= u_s).all()):
                break
            u = torch.minimum(u + self.xs_delta_t, u_s)
            t_next = self._t(schedule, u, x.dtype)
            a2, s2 = schedule.alpha_sigma(t_next)
            x_cur = ddim_step(d_inv(x_cur, t_cur, cond), x_cur, a, sg, a2, s2)
            t_cur, a, sg = t_next, a2, s2
        return x_cur

    def gradient(
        self, x: Tensor, cond: Tensor | None, *, teacher, rng, noise: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        sched = teacher.schedule
        u_t = sample_u(x.shape[0], self.t_range, rng, x.device)
        u_s = (u_t - self.delta_t).clamp(min=0.0)
        t, s = self._t(sched, u_t, x.dtype), self._t(sched, u_s, x.dtype)
        d_inv = self._inversion_denoiser(teacher, cond)
        with torch.no_grad():
            if noise is None:
                noise = torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)
            x_s = self.invert(x.detach(), noise, u_s, d_inv, cond, sched)
            (a_s, s_s), (a_t, s_t) = sched.alpha_sigma(s), sched.alpha_sigma(t)
            d_s = d_inv(x_s, s, cond)
            eps_s = (x_s - bcast(a_s, x) * d_s) / bcast(s_s, x)
            x_t = ddim_step(d_s, x_s, a_s, s_s, a_t, s_t)
            eps_w = eps_hat(guided_denoise(teacher, self.guidance, cond), x_t, t, cond, a_t, s_t)
            g = torch.nan_to_num(bcast(weight(self.weighting, a_t, s_t), x) * (eps_w - eps_s))
        return {"g": g, "t": t, "s": s, "x_s": x_s, "x_t": x_t, "eps_s": eps_s, "eps": noise}

    def generator_loss(
        self,
        x: Tensor,
        cond: Tensor | None,
        *,
        teacher,
        critic=None,
        rng: torch.Generator | None,
        noise: Tensor | None = None,
    ) -> Loss:
        """Surrogate whose gradient w.r.t. ``x: (B, *D)`` is ``g / B``; ``critic`` is unused."""
        parts = self.gradient(x, cond, teacher=teacher, rng=rng, noise=noise)
        return Loss(surrogate_loss(x, parts["g"]), score_logs(parts["g"], parts["t"]))
