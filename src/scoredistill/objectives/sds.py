"""SDS — Poole et al., "DreamFusion: Text-to-3D using 2D Diffusion", ICLR 2023 (eq. 3; reference
note a, b1).

    t ~ U{20..980} of SD's 1000 steps,  x_t = alpha x + sigma eps      (fresh eps each call)
    g = w(t) (eps_w(x_t) - eps),   w(t) = 1 - alpha_bar_t = sigmoid(-lambda)  (sigma^2 on VP)
    L = 0.5 ||x - sg(x - g)||^2                               (so dL/dx = g / B)

``eps_w`` is the guided teacher ``D_w = D_∅ + w (D_c - D_∅)`` written as noise; ``w = 1`` is no
guidance. DreamFusion (and threestudio's SDS) write ``eps_c + w' (eps_c - eps_∅)``, which is
``w = w' + 1`` here (``parametrization.dreamfusion_to_cfg_scale``): the paper's 100 is 101.
``w(t)`` is a function of the log-SNR ``lambda`` (``_steps.weight``) and the steps are threestudio's
on SD's table mapped by log-SNR (``t_reference``), so the update is the same on every schedule. The
teacher's Jacobian is dropped (no gradient through it). ``E_eps[g] = -w(t) sigma ∇log p_t(alpha
x)`` for a Gaussian teacher (``tests/test_score_objectives.py``). Sources: particles (x = θ; one
particle), a renderer, an encoder (Diff-Protect, with ``weighting="uniform"`` and ``guidance=1``)
or a generator. ``t`` is drawn per sample (threestudio); the official ProlificDreamer and
LucidDreamer draw one per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._ingredients import (
    Loss,
    add_noise,
    bcast,
    check_reference,
    guided_denoise,
    sample_t,
    surrogate_loss,
)
from ._steps import WEIGHTINGS, eps_hat, score_logs, weight

__all__ = ["SDS"]


@dataclass(frozen=True)
class SDS:
    """Score distillation sampling: the teacher's guided noise residual on fresh noise."""

    t_range: tuple[float, float] = (0.02, 0.98)  # DreamFusion / threestudio t ~ U{20..980}
    # threestudio's steps index Stable Diffusion's scheduler (scaled_linear 0.00085..0.012):
    # models/guidance/stable_diffusion_guidance.py, min/max_step_percent over alphas_cumprod
    t_reference: str = "vp-scaled-linear"
    guidance: float = 101.0  # DreamFusion w' = 100 in eps_c + w'(eps_c - eps_∅), i.e. w' + 1
    weighting: str = "sds"  # w(t) = 1 - alpha_bar (threestudio "sds"); see _steps.WEIGHTINGS

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"SDS.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check_reference("SDS", self.t_reference)

    def gradient(self, x: Tensor, cond: Tensor | None, *, teacher, rng) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        sched = teacher.schedule
        n, ref = x.shape[0], self.t_reference
        t = sample_t(n, sched, self.t_range, rng, dtype=x.dtype, device=x.device, reference=ref)
        with torch.no_grad():
            x_t, eps, alpha, sigma = add_noise(x.detach(), t, sched, rng)
            denoise = guided_denoise(teacher, self.guidance, cond)
            eps_w = eps_hat(denoise, x_t, t, cond, alpha, sigma)
            w = weight(self.weighting, alpha, sigma)
            g = torch.nan_to_num(bcast(w, x) * (eps_w - eps))
        return {"g": g, "t": t, "x_t": x_t, "eps": eps, "eps_pred": eps_w, "w": w}

    def generator_loss(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic=None, rng: torch.Generator | None
    ) -> Loss:
        """Surrogate whose gradient w.r.t. ``x: (B, *D)`` is ``g / B``; ``critic`` is unused."""
        parts = self.gradient(x, cond, teacher=teacher, rng=rng)
        return Loss(surrogate_loss(x, parts["g"]), score_logs(parts["g"], parts["t"]))
