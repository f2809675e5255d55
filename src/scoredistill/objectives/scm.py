"""sCM: continuous-time consistency distillation in TrigFlow (Lu & Song 2024, "Simplifying,
Stabilizing and Scaling Continuous-Time Consistency Models", arXiv 2410.11081).

Student ``f(x_hat, theta) = cos(theta) x_hat - sin(theta) sigma_d F_theta(x_hat / sigma_d, theta)``
(``sources.consistency.TrigFlowStudent``). With ``x_hat = cos(theta) x_0 + sin(theta) z``,
``z ~ N(0, sigma_d^2 I)``, ``log sigma ~ N(p_mean, p_std^2)``, ``theta = atan(sigma / sigma_d)``, the
teacher's PF-ODE velocity ``dx_hat/dtheta = sigma_d F_teacher`` (sCD, eq. 4) and ``F^- = sg(F_theta)``:

    g   = -cos^2(theta) (sigma_d F^- - dx_hat/dtheta)
          - r cos(theta) sin(theta) (x_hat + sigma_d dF^-/dtheta)                      (eq. 8)
    g  <- g / (||g|| / sqrt(D) + c)                                   (tangent normalisation)
    L   = E[ w(theta) / (e^{u(theta)} D) mean_d (F_theta - F^- - g)^2 + u(theta) ]      (eq. 12)

``cos sin dF^-/dtheta`` is one forward-mode JVP of ``F`` along ``(cos sin dx_hat/dtheta, cos sin)``
(``torch.func.jvp``), the whole derivative along the teacher's trajectory. ``g`` is
``cos(theta) df^-/dtheta``: it vanishes for the exact consistency function, so the loss does
(``tests/test_consistency.py``). ``r`` rises linearly from 0 to 1 over ``tangent_warmup_steps``
(tangent warm-up), ``w = 1 / sigma`` (prior weighting), ``u`` is the student's learned
log-variance (adaptive weighting). The tangent and the loss are computed in float64. A student
with a ``theta_range`` (a diffusers table network, ``sources.diffusers_consistency.
TrigFlowLCM``) gets its angles clamped to that range: the network knows no other level.

Defaults and their source (FastGen, ``NVlabs/FastGen`` ``fastgen/methods/consistency_model/
sCM.py`` and ``fastgen/configs/methods/config_scm.py``, read for this file): ``p_mean = -1.0``,
``p_std = 1.4``, ``c = 0.1`` (``tangent_warmup_const``), warm-up 10 000 steps, prior weighting
``1/sigma`` on, ``||g||`` made size-invariant by ``sqrt(D)`` (``g_norm_spatial_invariance``), the
weighted loss divided by ``D`` once more (``divide_x_0_spatial_dim``; the adaptive ``u`` absorbs the
constant), the JVP tangent scaled by ``cos sin`` (``_compute_vt``), finite differences as the
fallback (``use_jvp_finite_diff``, ``eps = 1e-3 |theta|``). Departure: FastGen's finite difference
moves along the forward process ``cos x_0 + sin z``; here it moves along the teacher's velocity,
the direction the JVP takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..config import ConfigError, NonNegativeInt, PositiveFloat
from ..teachers.trigflow import trigflow_velocity
from ._ingredients import Loss

__all__ = ["SCM", "scm_tangent", "student_jvp"]


@dataclass(frozen=True)
class SCM:
    p_mean: float = -1.0  # log sigma ~ N(p_mean, p_std^2), FastGen SampleTConfig.train_p_mean
    p_std: PositiveFloat = 1.4  # FastGen SampleTConfig.train_p_std
    tangent_warmup_steps: NonNegativeInt = 10_000  # r = min(1, step / this); 0: r = 1
    tangent_norm_c: PositiveFloat = 0.1  # FastGen LossConfig.tangent_warmup_const
    prior_weighting: bool = True  # w = 1 / sigma (FastGen LossConfig.prior_weighting_enabled)
    jvp: Literal["forward", "finite-diff"] = "forward"  # how dF^-/dtheta is computed
    jvp_fd_eps: PositiveFloat = 1e-3  # finite difference step, relative to theta (FastGen)

    def warmup(self, step: int) -> float:
        """The tangent warm-up factor ``r`` at ``step`` completed updates."""
        if self.tangent_warmup_steps == 0:
            return 1.0
        return min(1.0, step / self.tangent_warmup_steps)

    def draw_angles(self, n: int, sigma_d: float, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(sigma, theta)``, float64 ``(n,)``: ``log sigma ~ N(p_mean, p_std^2)``,
        ``theta = atan(sigma / sigma_d)`` (sCM's training-time law)."""
        noise = torch.randn(n, generator=rng, dtype=torch.float64)
        sigma = torch.exp(self.p_mean + self.p_std * noise)
        return sigma, torch.atan(sigma / sigma_d)

    def loss(
        self,
        x0: Tensor,
        cond: Tensor | None,
        *,
        student,
        teacher,
        rng: torch.Generator,
        step: int,
        target=None,
    ) -> Loss:
        """``x0: (B, D)`` data, ``student`` a ``TrigFlowStudent``-like module (``F``, ``logvar``,
        ``sigma_data``); ``target`` is unused (``F^-`` is the online network, stop-grad)."""
        sd, n = student.sigma_data, x0.shape[0]
        sigma, theta = self.draw_angles(n, sd, rng)
        if hasattr(student, "theta_range"):  # a table teacher's network: its trained levels
            theta = theta.clamp(*student.theta_range)
            sigma = sd * torch.tan(theta)
        z = sd * torch.randn(x0.shape, generator=rng, dtype=torch.float64)
        x_hat = torch.cos(theta)[:, None] * x0.double() + torch.sin(theta)[:, None] * z
        with torch.no_grad():
            dxdt = trigflow_velocity(teacher, x_hat, theta, sd, cond)
        dt = x0.dtype
        F = student.F(x_hat.to(dt), theta.to(dt), cond)
        u = student.logvar(theta.to(dt)).double()
        v_t = torch.cos(theta) * torch.sin(theta)
        F_jvp = student_jvp(
            student, x_hat.to(dt), theta.to(dt), (v_t[:, None] * dxdt).to(dt), v_t.to(dt), cond,
            mode=self.jvp, eps=self.jvp_fd_eps,
        )  # fmt: skip
        r = self.warmup(step)
        g = scm_tangent(F.detach().double(), F_jvp.double(), x_hat, dxdt, theta, sd, r)
        g_norm = g.norm(dim=1, keepdim=True) / x0.shape[1] ** 0.5
        g = g / (g_norm + self.tangent_norm_c)
        w = 1 / sigma if self.prior_weighting else torch.ones_like(sigma)
        mse = ((F.double() - F.detach().double() - g) ** 2).mean(1)
        per = w / (torch.exp(u) * x0.shape[1]) * mse + u
        logs = {"mse": mse.mean().item(), "logvar": u.mean().item(), "r": r}
        logs["g_norm"] = g_norm.mean().item()
        return Loss(per.mean(), logs)


def scm_tangent(
    F_minus: Tensor,
    F_jvp: Tensor,
    x_hat: Tensor,
    dxdt: Tensor,
    theta: Tensor,
    sigma_d: float,
    r: float = 1.0,
) -> Tensor:
    """sCM's tangent ``g`` (eq. 8, before normalisation); ``F_jvp`` is ``cos sin dF^-/dtheta``."""
    cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    return -(cos**2) * (sigma_d * F_minus - dxdt) - r * (cos * sin * x_hat + sigma_d * F_jvp)


def student_jvp(
    student,
    x_hat: Tensor,
    theta: Tensor,
    v_x: Tensor,
    v_t: Tensor,
    cond: Tensor | None = None,
    *,
    mode: str = "forward",
    eps: float = 1e-3,
) -> Tensor:
    """``dF(x_hat, theta)`` along the tangent ``(v_x, v_t)``, without a graph (stop-grad).

    ``forward``: ``torch.func.jvp`` (forward mode); ``finite-diff``: a central difference in
    float64 with step ``h = eps |theta|`` (at least 1e-6) along the same tangent."""
    F = student.F
    with torch.no_grad():
        if mode == "forward":
            try:
                return torch.func.jvp(lambda x, t: F(x, t, cond), (x_hat, theta), (v_x, v_t))[1]
            except (RuntimeError, NotImplementedError) as err:
                raise ConfigError(
                    f"forward-mode JVP failed in {type(student).__name__} ({err}); set "
                    "objective.jvp=finite-diff (a central difference along the same tangent)"
                ) from None
        h = (eps * theta.abs()).clamp(min=1e-6).double()
        hx = h[:, None].to(x_hat.dtype)
        up = F(x_hat + hx * v_x, theta + (h * v_t.double()).to(theta.dtype), cond).double()
        down = F(x_hat - hx * v_x, theta - (h * v_t.double()).to(theta.dtype), cond).double()
        return ((up - down) / (2 * h[:, None])).to(x_hat.dtype)
