"""ASD — Ma et al., "ScaleDreamer: Scalable Text-to-3D Synthesis with Asynchronous Score
Distillation", ECCV 2024 (official ``theEricMa/ScaleDreamer:stable_diffusion_asd_guidance.py``,
reference note b6; paper equation number unchecked, the note records none).

The same noise at ``t`` and at a later ``t + Δt``; the frozen teacher's conditional prediction at
the shifted time stands in for VSD's fine-tuned fake score:

    t ~ U[t_range],  Δt = plus_ratio (t - t_lo) u,  u ~ U(0, 1)   (plus_random; else u = 1)
    x_t = alpha_t x + sigma_t eps,  x_t+ = alpha_t+ x + sigma_t+ eps   (same eps)
    g = w(t) (eps_w(x_t, t) - eps_c(x_t+, t + Δt)),   w = 1 - alpha_bar
    L = 0.5 ||x - sg(x - g)||^2

CFG (scale ``guidance``) only on the first term; the second is the plain conditional prediction
(unconditional without labels). ``t + Δt`` is clamped to the end of the range (the second, live
``get_t_plus`` in the official file clamps to ``T - 1``). Times are fractions of SD's 1000 steps
(``t_lo = t_range[0]``; ``Δt`` is computed there) mapped to the schedule in use by log-SNR
(``t_reference``). The official schedule anneals ``t_range`` from (0.5, 0.98) to (0.02, 0.5) over
25k steps; the default is its start, the caller anneals (``dataclasses.replace``).
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
from ._steps import WEIGHTINGS, eps_hat, score_logs, weight

__all__ = ["ASD"]


@dataclass(frozen=True)
class ASD:
    """Asynchronous score distillation: the teacher at ``t + Δt`` as the fake score."""

    t_range: tuple[float, float] = (0.5, 0.98)  # asd_sd_nerf.yaml at step 0 (-> (0.02, 0.5))
    # the steps index Stable Diffusion's scheduler (stable_diffusion_asd_guidance.py, SD's table)
    t_reference: str = "vp-scaled-linear"
    guidance: float = 7.5  # asd_sd_nerf.yaml, on the first term only
    plus_ratio: float = 0.1  # Δt = plus_ratio (t - t_min)
    plus_random: bool = True  # Δt scaled by u ~ U(0, 1)
    weighting: str = "sds"  # w(t) = 1 - alpha_bar_t

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"ASD.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check_reference("ASD", self.t_reference)

    def times(self, n: int, schedule, rng, *, dtype, device) -> tuple[Tensor, Tensor]:
        """``(t, t + Δt)``, each ``(n,)``; ``Δt`` in fractions of the reference's steps."""
        u_t = sample_u(n, self.t_range, rng, device)
        shift = self.plus_ratio * (u_t - self.t_range[0])
        if self.plus_random:
            shift = shift * torch.rand(n, generator=rng, dtype=torch.float64, device=device)
        u_plus = (u_t + shift).clamp(max=1.0)
        t, t_plus = (ref_to_t(schedule, u, self.t_reference).to(dtype) for u in (u_t, u_plus))
        return t, t_plus

    def gradient(self, x: Tensor, cond: Tensor | None, *, teacher, rng) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        sched = teacher.schedule
        t, t_plus = self.times(x.shape[0], sched, rng, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            eps = torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)
            (a, s), (a2, s2) = sched.alpha_sigma(t), sched.alpha_sigma(t_plus)
            x_t = bcast(a, x) * x.detach() + bcast(s, x) * eps
            x_plus = bcast(a2, x) * x.detach() + bcast(s2, x) * eps
            eps_w = eps_hat(guided_denoise(teacher, self.guidance, cond), x_t, t, cond, a, s)
            eps_plus = eps_hat(teacher.denoise, x_plus, t_plus, cond, a2, s2)
            g = torch.nan_to_num(bcast(weight(self.weighting, a, s), x) * (eps_w - eps_plus))
        return {"g": g, "t": t, "t_plus": t_plus, "x_t": x_t, "eps": eps}

    def generator_loss(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic=None, rng: torch.Generator | None
    ) -> Loss:
        """Surrogate whose gradient w.r.t. ``x: (B, *D)`` is ``g / B``; ``critic`` is unused."""
        parts = self.gradient(x, cond, teacher=teacher, rng=rng)
        return Loss(surrogate_loss(x, parts["g"]), score_logs(parts["g"], parts["t"]))
