"""CDS — Wu et al., "Consistent3D: Towards Consistent High-Fidelity Text-to-3D Generation with
Deterministic Sampling Prior", CVPR 2024 (consistency distillation sampling; official
``sail-sg/Consistent3D:stable_diffusion_guidance.py::compute_grad_consistency``, note b5; paper
equation number unchecked, the note records none).

One noise ``eps*`` fixed for the whole run (``share_noise``), a pair of times ``t' < t`` and one
probability-flow ODE step between them (Euler in ``sigma/alpha``, which is the DDIM step):

    t' ~ t'_range,  t = t' + U[gap],  x_t = alpha_t x + sigma_t eps*
    x_t' = alpha_t' D_w(x_t, t) + sigma_t' eps_w(x_t, t)               (ddim_step)
    g = w (eps_w(x_t, t) - eps_w(x_t', t')),   w = 1 ("uniform")
    L = 0.5 ||x - sg(x - g)||^2

The noise predicted at the less noisy point of the same ODE trajectory stands in for SDS's
sampled ``eps``. The official code builds ``target = latents + grad`` with
``grad = eps(t') - eps(t)``; ``g`` here is its negative, a descent direction (note b0).
For a Gaussian teacher ``N(mu, s^2 I)``, ``g = k (x_t - alpha_t mu)`` with
``k = alpha_t' s^2 (sigma_t alpha_t' - sigma_t' alpha_t) / (v_t v_t') > 0``, ``v = alpha^2 s^2 +
sigma^2``: zero exactly where ``x_t = alpha_t mu``, so with one ``eps*`` a particle settles near
``x = mu - (sigma_t / alpha_t) eps*`` (averaged over t), far from ``mu`` at the default (early)
times; for a point mass (``s -> 0``) the DDIM step is the exact flow and ``g ≡ 0``.
Times are fractions of SD's 1000 steps (the gap too) mapped to the schedule in use by log-SNR
(``t_reference``). Departures: the official anneals ``t'`` deterministically (sqrt, 700 -> 100 over 3k steps) and
the CFG (100 -> 50); here ``t'`` is uniform over that span unless the caller sets
``t_prime_range=(u, u)`` per step. ``eps*`` is ``noise=`` (e.g.
``Particles.noise``, saved with the particles) or drawn from ``noise_seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._ingredients import (
    Loss,
    bcast,
    check_reference,
    guided_denoise,
    ref_to_t,
    sample_u,
    surrogate_loss,
)
from ._steps import WEIGHTINGS, ddim_step, fixed_noise, score_logs, weight

__all__ = ["CDS"]


@dataclass(frozen=True)
class CDS:
    """Consistency distillation sampling: fixed noise, one ODE step from ``t`` to ``t'``."""

    t_prime_range: tuple[float, float] = (0.1, 0.7)  # official t' anneals 700 -> 100 of 1000
    gap_range: tuple[float, float] = (0.1, 0.3)  # t = t' + U[100, 300) / 1000 (end_gap, perturb)
    # the steps index Stable Diffusion's scheduler (Consistent3D's stable_diffusion_guidance.py)
    t_reference: str = "vp-scaled-linear"
    guidance: float = 101.0  # official 100 (threestudio eps_c + w'(..)), i.e. w' + 1; -> 51
    weighting: str = "uniform"  # consistency-coarse.yaml
    noise_seed: int = 0  # eps* when no ``noise=`` is given (share_noise: one tensor per run)

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"CDS.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check_reference("CDS", self.t_reference)

    def times(self, n: int, schedule, rng, *, dtype, device) -> tuple[Tensor, Tensor]:
        """``(t, t')``, each ``(n,)``, with ``t - t'`` drawn from ``gap_range`` (fractions)."""
        u_p = sample_u(n, self.t_prime_range, rng, device)
        u = (u_p + sample_u(n, self.gap_range, rng, device)).clamp(max=1.0)
        t, t_p = (ref_to_t(schedule, v, self.t_reference).to(dtype) for v in (u, u_p))
        return t, t_p

    def gradient(
        self, x: Tensor, cond: Tensor | None, *, teacher, rng, noise: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        sched = teacher.schedule
        t, t_p = self.times(x.shape[0], sched, rng, dtype=x.dtype, device=x.device)
        denoise = guided_denoise(teacher, self.guidance, cond)
        with torch.no_grad():
            eps = fixed_noise(x, noise, self.noise_seed)
            (a, s), (a_p, s_p) = sched.alpha_sigma(t), sched.alpha_sigma(t_p)
            x_t = bcast(a, x) * x.detach() + bcast(s, x) * eps
            d_t = denoise(x_t, t, cond)
            x_tp = ddim_step(d_t, x_t, a, s, a_p, s_p)
            eps_t = (x_t - bcast(a, x) * d_t) / bcast(s, x)
            eps_tp = (x_tp - bcast(a_p, x) * denoise(x_tp, t_p, cond)) / bcast(s_p, x)
            g = torch.nan_to_num(bcast(weight(self.weighting, a, s), x) * (eps_t - eps_tp))
        return {"g": g, "t": t, "t_prime": t_p, "x_t": x_t, "x_t_prime": x_tp, "eps": eps}

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
