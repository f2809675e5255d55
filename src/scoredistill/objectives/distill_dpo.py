"""Distillation-DPO — Zhao et al., "Diffusion Distillation With Direct Preference Optimization
For Efficient 3D LiDAR Scene Completion", 2025 (arXiv 2504.11447; official code
happyw1nd/DistillationDPO, ``trains/DistillationDPO.py`` at commit 3552ad7).

Per condition ``c`` the one-step student draws two completions ``x1 = G(z1, c)``,
``x2 = G(z2, c)``; a non-differentiable error to the true completion ``y`` (the paper: Chamfer
distance; here the squared error) names the winner ``x^w`` and the loser ``x^l``. Two fake
critics learn the laws of winners (``D_w``) and of losers (``D_l``) by denoising score matching;
the generator step is the official one (``optimizer_idx == 1``): one ``t`` and one ``eps`` shared
by the pair, ``x^w_t = alpha x^w + sigma eps``, ``x^l_t = alpha x^l + sigma eps``, and

    L_official = < eps_T(x^w_t) - eps_w(x^w_t), x^w_t - x^w > - < eps_T(x^l_t) - eps_l(x^l_t), x^l_t - x^l >

with no preference temperature beta and no sigmoid: a winner term minus a loser term, each
DMD's score difference (Yin et al. 2024, eq. 7) on its own sample with its own fake score.

Departure (recorded in ``tests/test_distill_dpo.py``): as written, ``x_t - x`` is ``sigma eps``
(the official ``q_sample(0, t, eps)``), which does not depend on the generator, and both eps
predictions run under ``no_grad``, so ``L_official`` carries exactly zero gradient to the generator
(``official_surrogate`` reproduces it). We implement the stated intent, "optimize the student by the
difference in score functions between the teacher and the student on the paired completions": the
same two DMD terms as a gradient, in the library's denoiser form (DMD2's normalisation, as the
no-preference baseline ``DMD`` uses):

    g_w = (D_w(x^w_t) - D_T(x^w_t)) / w_w,    g_l = (D_l(x^l_t) - D_T(x^l_t)) / w_l
    L = 0.5 ||x^w - sg(x^w - g_w)||^2 - loser_weight * 0.5 ||x^l - sg(x^l - g_l)||^2

so ``dL/dx^w = g_w / B`` (KL descent for winners) and ``dL/dx^l = -loser_weight g_l / B`` (KL
ascent for losers). ``eps_T - eps_fake = (alpha / sigma)(D_fake - D_T)``: the official per-t weight
``alpha / sigma`` is replaced by DMD2's ``1 / w``, so that DPO and its baseline differ only in
the preference split. Where ``x^w_t = x^l_t`` the teacher cancels and ``g_w - g_l ∝ D_w - D_l ∝
grad log(q_w / q_l)``, the gradient of the pair's Bradley-Terry log-odds of winning: descent moves
samples along ``-grad`` of that log-odds (see the report of ``runs/systems/dpo.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._ingredients import Loss, add_noise, bcast, denoising_loss, sample_t, surrogate_loss
from .dmd import DMD, dmd_update

__all__ = ["DistillDPO", "completion_error", "official_surrogate", "preference_pair"]


def completion_error(x: Tensor, y: Tensor) -> Tensor:
    """Per-row mean squared error ``(B,)`` of completions ``x: (B, D)`` to the truth ``y``."""
    return (x.detach() - y.detach()).pow(2).flatten(1).mean(1)


def preference_pair(x1: Tensor, x2: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x^w, x^l, first_wins)``: per row, the sample with the lower ``completion_error`` to
    ``y`` wins (ties go to ``x1``, as the official ``cd1 < cd2`` sends them to ``x2``: a
    measure-zero difference). The selection is non-differentiable; the rows keep their graph."""
    first = completion_error(x1, y) <= completion_error(x2, y)
    m = bcast(first, x1)
    return torch.where(m, x1, x2), torch.where(m, x2, x1), first


def official_surrogate(
    x_w: Tensor,
    x_l: Tensor,
    cond: Tensor | None,
    t: Tensor,
    eps: Tensor,
    *,
    teacher,
    critic_w,
    critic_l,
) -> Tensor:
    """The official generator loss, transcribed (eps predictions from denoisers, no_grad as there).

    The official noising is LiDiff's ``x_t = x + q_sample(0, t, eps)``, so its ``x_t - x`` is
    the noise term alone; under ``x_t = alpha x + sigma eps`` that term is ``x_t - alpha x =
    sigma eps``, whatever ``x`` is, so the gradient to ``x_w, x_l`` is exactly zero.
    ``t: (B,)``, ``eps: (B, *D)``.
    """
    alpha, sigma = teacher.schedule.alpha_sigma(t.to(x_w.dtype))
    a, s = bcast(alpha, x_w), bcast(sigma, x_w)

    def term(x: Tensor, critic) -> Tensor:
        x_t = a * x + s * eps
        with torch.no_grad():
            e_t = (x_t - a * teacher.denoise(x_t, t, cond)) / s
            e_f = (x_t - a * critic.denoise(x_t, t, cond)) / s
        return ((e_t - e_f) * (x_t - a * x)).mean()

    return term(x_w, critic_w) - term(x_l, critic_l)


@dataclass(frozen=True)
class DistillDPO:
    """Distillation-DPO's generator and critic losses (module docstring)."""

    dmd: DMD = field(
        default_factory=DMD
    )  # t range, reference grid and normalisation of each DMD term (DMD2's)
    loser_weight: float = 1.0  # official: winner term minus loser term, no beta, no sigmoid

    def __post_init__(self) -> None:
        if not self.loser_weight >= 0:
            raise ValueError(f"DistillDPO.loser_weight must be >= 0, got {self.loser_weight}")

    def generator_loss(
        self, x_w: Tensor, x_l: Tensor, cond: Tensor | None, *, teacher, critic_w, critic_l, rng
    ) -> Loss:
        """Surrogate with ``dL/dx^w = g_w / B`` and ``dL/dx^l = -loser_weight g_l / B``.

        ``x_w, x_l: (B, *D)``; one ``t`` and one ``eps`` per row serve both (official)."""
        d = self.dmd
        t = sample_t(
            x_w.shape[0],
            teacher.schedule,
            d.t_range,
            rng,
            dtype=x_w.dtype,
            device=x_w.device,
            reference=d.t_reference,
        )
        with torch.no_grad():
            x_wt, eps, alpha, sigma = add_noise(x_w.detach(), t, teacher.schedule, rng)
            x_lt = bcast(alpha, x_l) * x_l.detach() + bcast(sigma, x_l) * eps
        win = dmd_update(x_w, x_wt, t, cond, teacher=teacher, critic=critic_w, objective=d)
        lose = dmd_update(x_l, x_lt, t, cond, teacher=teacher, critic=critic_l, objective=d)
        value = surrogate_loss(x_w, win["g"]) - self.loser_weight * surrogate_loss(x_l, lose["g"])
        logs = {
            "g_winner": win["g"].pow(2).flatten(1).sum(1).sqrt().mean().item(),
            "g_loser": lose["g"].pow(2).flatten(1).sum(1).sqrt().mean().item(),
        }
        return Loss(value, logs)

    def critic_loss(
        self, x_w: Tensor, x_l: Tensor, cond: Tensor | None, *, critic_w, critic_l, rng
    ) -> Loss:
        """DSM of the winner critic on ``sg(x^w)`` plus the loser critic on ``sg(x^l)``
        (official: two auxiliary diffusion models, independent ``t`` each, summed losses)."""
        d = self.dmd
        kw = {"t_range": d.critic_t_range, "t_reference": d.t_reference, "sigma_data": d.sigma_data}
        lw = denoising_loss(critic_w, x_w, cond, rng, **kw)
        ll = denoising_loss(critic_l, x_l, cond, rng, **kw)
        return Loss(lw.value + ll.value, {"critic_w": lw.value.item(), "critic_l": ll.value.item()})
