"""Phased DMD — Fan et al., "Phased DMD: Few-step Distribution Matching Distillation via Score
Matching within Subintervals", 2025 (arXiv 2510.27684; no official code: the formulas follow the
paper and the third-party ``ModelTC/LightX2V:lightx2v_train/.../phased_dmd``, reference note b12).

The SNR range is split into ``J`` phases. A K-step student's steps fall into J phases of K/J
consecutive steps, one expert network per phase (``sources.PhaseExperts``, ``generator.experts``).
Phase j runs from ``s_{j-1}`` (its first student time; the top of the range for j = 1) down to the
boundary ``s_j`` (the next phase's first student time; ``s_J`` = clean data). Step k of phase j
outputs ``x̂_0``; its state at the boundary is the next phase's input

    x_s = alpha_s x̂_0 + sigma_s eps_1                                   (x_s = x̂_0 at s_J)

and the phase is matched only at score times inside its subinterval, a margin above ``s_j``:

    t ~ U[u(s_j) + margin, u(s_{j-1})],  x_t = a x_s + b eps_2,  a = alpha_t / alpha_s,
                                                                 b^2 = sigma_t^2 - a^2 sigma_s^2
    g = (D_fake(x_t) - D_real(x_t)) / w,   w = mean_pix |x̂_0 - D_real(x_t)|,
    L_G = 0.5 ||x̂_0 - sg(x̂_0 - g)||^2                                   (DMD in x0 space)

The fake learns the score of ``q_t``, the law of ``x_s`` carried forward to ``t``, by *subinterval
score matching*: ``x_t | x_s ~ N(a x_s, b^2 I)`` has the score ``-(x_t - a x_s)/b^2 = -eps_2/b``,
and a denoiser ``D`` has the score ``(alpha_t D - x_t)/sigma_t^2``, so the x0 regression target is

    D* = (x_t - (sigma_t^2 / b) eps_2) / alpha_t = x_s / alpha_s - (alpha_t sigma_s^2 / (alpha_s^2 b)) eps_2
    L_fake = E lambda(t) mean_pix (D_fake(x_t) - D*)^2,    lambda = (1 + alpha_t / sigma_t)^2

and ``E[D* | x_t]`` is the exact denoiser of ``q_t`` whatever the law of ``x_s``. LightX2V writes
this in flow-matching coordinates (``alpha = 1 - sigma``): its velocity target
``-x_s/(1-sigma_s) + [sigma_t + (1-sigma_t) sigma_s^2/(1-sigma_s)^2] eps/b`` is ``D*`` seen as a
velocity, and its velocity MSE is ``lambda`` times the x0 MSE (``lambda = 1/sigma_t^2`` there).
Written on the schedule's ``(alpha_t, sigma_t)``, with ``lambda`` a function of the log-SNR, both
hold on every schedule (tested on rf against LightX2V's formula). With one phase ``s_1`` is clean,
``D* = x̂_0`` and the generator term is DMD's. A one-step student (no ``student_times``) is one phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._ingredients import (
    NORMALIZATIONS,
    Loss,
    bcast,
    check_reference,
    matching_logs,
    sample_t,
    student_fractions,
    surrogate_loss,
)
from .dmd import dmd_update

__all__ = ["PhasedDMD", "subinterval_target"]


def subinterval_target(
    x_s: Tensor, eps: Tensor, alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor
) -> tuple[Tensor, Tensor]:
    """``(x_t, D*)`` for a boundary state ``x_s: (B, *D)`` at ``s`` carried to ``t > s`` with the
    noise ``eps``: ``x_t = a x_s + b eps`` and ``D* = x_s/alpha_s - alpha_t sigma_s^2/(alpha_s^2 b)
    eps`` (module docstring); coefficients ``(B,)``. ``sigma_s = 0`` (clean) is plain DSM."""
    a = alpha_t / alpha_s
    b = torch.where(sigma_s > 0, (sigma_t**2 - (a * sigma_s) ** 2).clamp_min(0).sqrt(), sigma_t)
    x_t = bcast(a, x_s) * x_s + bcast(b, x_s) * eps
    target = x_s / bcast(alpha_s, x_s) - bcast(alpha_t * sigma_s**2 / (alpha_s**2 * b), x_s) * eps
    return x_t, target


@dataclass(frozen=True)
class PhasedDMD:
    """DMD per phase of a few-step student, with subinterval score matching for the fake."""

    phases: int = 2  # LightX2V: two regions, high and low noise (Wan2.2's two experts)
    t_range: tuple[float, float] = (0.02, 0.98)  # outer score-time limits, DMD2's (note b2)
    margin: float = 0.02  # score times start 20 of 1000 steps above a boundary (LightX2V)
    # LightX2V indexes flow-matching timesteps 0..1000 (sigma = t / 1000; its shift is not used)
    t_reference: str = "rf"
    guidance: float = 1.0  # teacher CFG (LightX2V guidance_distill 6 for text; 1 = none)
    normalization: str = "per_sample"  # w = mean_pix |x̂_0 - D_real| per sample, as DMD2
    eps: float = 0.0  # added to w (LightX2V clips w at 1e-4 instead)

    step_aware = True  # the loop passes ``step`` and ``student_times`` (train.two_player)

    def __post_init__(self) -> None:
        if self.phases < 1:
            raise ValueError(f"PhasedDMD.phases must be >= 1, got {self.phases}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"PhasedDMD.normalization must be one of {NORMALIZATIONS}, "
                f"got {self.normalization!r}"
            )
        check_reference("PhasedDMD", self.t_reference)

    def phase(self, schedule, step: int | None, student_times) -> tuple[float, float, float | None]:
        """``(lo, hi, s)``: the score-time fractions of step ``step``'s phase and its boundary time
        ``s`` on ``schedule`` (None: clean data, the last phase)."""
        u = student_fractions(schedule, student_times, self.t_reference)
        steps = len(u) - 1
        phases = self.phases if student_times else 1
        k = 1 if step is None else int(step)
        if steps % phases or not 1 <= k <= steps:
            raise ValueError(
                f"PhasedDMD: phases={phases} must divide the student's {steps} steps and step "
                f"must lie in 1..{steps}; got step={step}"
            )
        m = steps // phases
        j = (k - 1) // m  # 0-based phase
        last = j == phases - 1
        lo = self.t_range[0] if last else max(u[(j + 1) * m] + self.margin, self.t_range[0])
        hi = self.t_range[1] if j == 0 else min(u[j * m], self.t_range[1])
        if lo > hi:
            raise ValueError(
                f"PhasedDMD: phase {j + 1} leaves no score times ({lo:.4g} > {hi:.4g})"
            )
        return lo, hi, None if last else float(student_times[(j + 1) * m])

    def _forward(self, x: Tensor, schedule, step, student_times, rng) -> dict[str, Tensor]:
        """The boundary state of ``x = x̂_0`` and ``(x_t, D*)`` at a score time in its phase."""
        lo, hi, s = self.phase(schedule, step, student_times)
        n, ref = x.shape[0], self.t_reference
        t = sample_t(n, schedule, (lo, hi), rng, dtype=x.dtype, device=x.device, reference=ref)
        if s is None:
            x_s, alpha_s, sigma_s = x, torch.ones_like(t), torch.zeros_like(t)
        else:
            alpha_s, sigma_s = schedule.alpha_sigma(torch.full_like(t, s))
            noise = torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)
            x_s = bcast(alpha_s, x) * x + bcast(sigma_s, x) * noise
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        eps = torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)
        x_t, target = subinterval_target(x_s, eps, alpha_s, sigma_s, alpha_t, sigma_t)
        return {"t": t, "x_t": x_t, "target": target, "alpha_t": alpha_t, "sigma_t": sigma_t}

    def generator_loss(
        self,
        x: Tensor,
        cond: Tensor | None,
        *,
        teacher,
        critic,
        rng: torch.Generator | None,
        step: int | None = None,
        student_times: tuple[float, ...] | None = None,
    ) -> Loss:
        """DMD's surrogate on ``x = x̂_0: (B, *D)`` (gradient ``g / B``), matched in its phase."""
        with torch.no_grad():
            fw = self._forward(x.detach(), teacher.schedule, step, student_times, rng)
            x_t, t = fw["x_t"], fw["t"]
        parts = dmd_update(x, x_t, t, cond, teacher=teacher, critic=critic, objective=self)
        logs = {**matching_logs(parts | {"t": t}), "w": parts["w"].mean().item()}
        return Loss(surrogate_loss(x, parts["g"]), logs)

    def critic_loss(
        self,
        x: Tensor,
        cond: Tensor | None,
        *,
        critic,
        rng,
        step: int | None = None,
        student_times: tuple[float, ...] | None = None,
    ) -> Loss:
        """Subinterval score matching of the critic on ``sg(x)``'s boundary state (docstring)."""
        fw = self._forward(x.detach(), critic.schedule, step, student_times, rng)
        weight = (1 + fw["alpha_t"] / fw["sigma_t"]) ** 2
        err = (critic.denoise(fw["x_t"], fw["t"], cond) - fw["target"]).pow(2).flatten(1).mean(1)
        value = (weight * err).mean()
        return Loss(value, {"critic_loss": value.item(), "critic_mse": err.mean().item()})
