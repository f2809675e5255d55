"""rCM: score-regularized continuous-time consistency (Zheng et al. 2025, "Large Scale Diffusion
Distillation via Score-Regularized Continuous-Time Consistency", arXiv 2510.08431; NVlabs/rcm).

sCM (``objectives/scm.py``, forward divergence, mode-covering) plus DMD's reverse-KL gradient
(``objectives/dmd.py``, mode-seeking) on the student's own few-step samples:

    L_student = lambda_sCM L_sCM(x_0) + lambda_DMD ||x - sg(x - g)||^2,                 (rCM)
    g = (D_fake(x_t) - D_real(x_t)) / mean_d |x - D_real(x_t)|,   x_t = alpha x + sigma eps

    L_critic  = E_t lambda(t) ||D_fake(alpha sg(x') + sigma eps, t) - sg(x')||^2    (DSM, DMD2)

with ``lambda_sCM = 100``, ``lambda_DMD = 1`` (rCM ``loss_scale``, ``loss_scale_dmd``). ``x`` is a
**backward simulation** of the student: ``x_hat = sigma_d z`` at ``theta_max = atan(sigma_max /
sigma_d)``, then ``k - 1`` no-grad steps ``x = f(x_hat, theta)``, ``theta <- min(theta', theta)``
with ``theta' ~ p_D``, ``x_hat = cos(theta) x + sin(theta) sigma_d eps``, and the last step
``x = f(x_hat, theta)`` with gradients. ``k = 1..max_student_steps`` cycles with the student
step (rCM: ``effective_iteration % max_simulation_steps_fake`` simulation steps). ``p_D`` is
rCM's shifted time: ``u ~ U(0, 1)``, ``s = shift u / (1 + (shift - 1) u)``,
``theta' = atan(s / (1 - s))``. ``x'`` is a fresh simulation (no gradient) with its own ``k``,
cycling with the critic update. The DMD term and the critic start after ``dmd_start`` student
steps of pure sCM (rCM: ``tangent_warmup``). With ``dmd_weight = 0`` the loss is
``scm_weight L_sCM`` exactly (``tests/test_rcm.py``); without a critic it is rCM's "pure sCM".

``g`` and the critic's loss are ``DMD.generator_loss``/``DMD.critic_loss`` of the library (not
copied): ``||x - sg(x - g)||^2`` is twice its surrogate (rCM sums the squares without DMD2's 1/2,
so ``dL/dx = 2 g / B``). The update ratio (critic steps per student step) is the loop's
``train.critic_updates``.

Defaults and their source (``NVlabs/rcm``, read for this file): ``rcm/models/
t2v_model_distill_rcm.py`` (``T2VDistillConfig``: ``loss_scale = 100``, ``loss_scale_dmd = 1``,
``student_update_freq = 5``, ``max_simulation_steps_fake = 4``, ``timestep_shift = 5``;
``is_student_phase``: every iteration before ``tangent_warmup``, then every 5th, i.e. 4 critic
updates per student update; DMD weight ``w`` clipped at 1e-5 in float64) and ``rcm/configs/
experiments/rcm/wan2pt1_t2v.py`` (the same values for Wan2.1 1.3B, ``sigma_max = 80``; 14B:
``student_update_freq = 10``). Departures, each a choice of this library: the consistency term
is the library's sCM (FastGen's form with the adaptive weighting ``u(theta)`` and ``1/sigma``;
rCM's own sCM drops both and sums over dims); DMD's time law and critic are DMD2's (``t`` uniform
in 2-98 % of EDM's Karras grid, EDM-weighted DSM over all times) where rCM draws both from
``p_D`` and weights the critic by ``1/sin^2 t``; ``w`` gets ``+1e-5`` (``DMD.eps``), not a clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from ._ingredients import Loss
from .dmd import DMD
from .scm import SCM

__all__ = ["RCM", "sample_p_d"]


@dataclass(frozen=True)
class RCM:
    scm: SCM = field(default_factory=SCM)  # the consistency term (FastGen's sCM defaults)
    dmd: DMD = field(default_factory=lambda: DMD(eps=1e-5))  # g and the critic's DSM (DMD2's)
    scm_weight: NonNegativeFloat = 100.0  # rCM loss_scale
    dmd_weight: NonNegativeFloat = 1.0  # rCM loss_scale_dmd
    max_student_steps: PositiveInt = 4  # rCM max_simulation_steps_fake: k = 1..4
    timestep_shift: PositiveFloat = 5.0  # rCM timestep_shift of p_D
    sigma_max: PositiveFloat = 80.0  # the first student step's level (rCM --sigma_max 80)
    # student steps of pure sCM before the critic and the DMD term start; None: the sCM
    # tangent warm-up (rCM: both wait for tangent_warmup)
    dmd_start: NonNegativeInt | None = None

    def uses_critic(self, step: int) -> bool:
        """Whether the DMD term (and the critic's training) is on at student step ``step``."""
        start = self.scm.tangent_warmup_steps if self.dmd_start is None else self.dmd_start
        return step >= start

    def simulate(
        self,
        student,
        n: int,
        cond: Tensor | None,
        steps: int,
        rng: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """A ``steps``-step backward simulation ``(n, D)``; only the last student call may
        record a graph (wrap the call in ``no_grad`` for none)."""
        sd = student.sigma_data
        theta = torch.full((n,), math.atan(self.sigma_max / sd), dtype=torch.float64)
        x_hat = sd * torch.randn(n, student.dim, generator=rng, dtype=dtype)
        for _ in range(steps - 1):
            with torch.no_grad():
                x = student(x_hat, theta.to(dtype), cond)
            theta = torch.minimum(sample_p_d(n, self.timestep_shift, rng), theta)
            eps = torch.randn(x.shape, generator=rng, dtype=dtype)
            cos, sin = (c.to(dtype)[:, None] for c in (torch.cos(theta), torch.sin(theta)))
            x_hat = cos * x + sin * sd * eps
        return student(x_hat, theta.to(dtype), cond)

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
        critic=None,
    ) -> Loss:
        """``x0: (B, D)`` data for the sCM term; ``critic`` a denoiser of the student's samples
        (``.denoise``, ``.schedule``); ``target`` is unused (``F^-`` is the stop-grad student)."""
        scm = self.scm.loss(x0, cond, student=student, teacher=teacher, rng=rng, step=step)
        value = self.scm_weight * scm.value
        logs = {**scm.logs, "scm_loss": scm.value.item()}
        if critic is not None and self.uses_critic(step):
            k = step % self.max_student_steps + 1
            x = self.simulate(student, x0.shape[0], cond, k, rng, x0.dtype)
            dmd = self.dmd.generator_loss(x, cond, teacher=teacher, critic=critic, rng=rng)
            value = value + self.dmd_weight * 2 * dmd.value
            logs |= {**dmd.logs, "dmd_loss": 2 * dmd.value.item(), "sim_steps": k}
        return Loss(value, logs)

    def critic_loss(
        self, x0: Tensor, cond: Tensor | None, *, student, critic, rng: torch.Generator, index: int
    ) -> Loss:
        """DSM of ``critic`` on a fresh no-grad simulation of ``1 + index % max_student_steps``
        student steps; ``x0`` gives the batch size (its labels are ``cond``)."""
        k = index % self.max_student_steps + 1
        with torch.no_grad():
            x = self.simulate(student, x0.shape[0], cond, k, rng, x0.dtype)
        loss = self.dmd.critic_loss(x, cond, critic=critic, rng=rng)
        return Loss(loss.value, {**loss.logs, "sim_steps": k})


def sample_p_d(n: int, shift: float, rng: torch.Generator) -> Tensor:
    """rCM's ``p_D``: ``(n,)`` float64 TrigFlow angles of a rectified-flow time ``u ~ U(0, 1)``
    shifted by ``shift`` (``s = shift u / (1 + (shift - 1) u)``, ``theta = atan(s / (1 - s))``)."""
    u = torch.rand(n, generator=rng, dtype=torch.float64)
    s = shift * u / (1 + (shift - 1) * u)
    return torch.atan2(s, 1 - s)
