"""The diffusion-GAN term shared by DMD2 and f-distill (reference note b2, b8).

DMD2 (``compute_cls_logits``, ``tianweiy/DMD2:main/edm/edm_guidance.py``) puts a classifier head
on the fake denoiser's bottleneck; real (teacher) and generated samples are both noised at
``t ~ U(gan_t_range)`` (fractions of the objective's ``t_reference``, mapped by log-SNR as every
paper range, ``_ingredients.sample_t``) before classification:

    L_D = softplus(Dis(x_t^fake)) + softplus(-Dis(x_t^real))         (critic step, into the trunk)
    L_G = softplus(-Dis(x_t^fake))                                   (generator step, frozen Dis)

A Bayes-optimal ``Dis`` trained this way has logit ``log p_t(x_t) - log q_t(x_t)``: f-distill
reads its density ratio ``r`` from the same head (FastGen reads frozen teacher features instead;
an exact teacher has none). Units: DMD2 averages its distribution-matching loss over pixels,
our surrogate sums over them (DESIGN.md), so ``L_G`` is multiplied by the sample's size
``numel(x[0])`` here; DMD2's weights (3e-3 generator, 1e-2 critic on ImageNet-64) then keep their
ratio to the other terms. The critic's DSM loss averages over pixels like DMD2's, so ``L_D``
is not rescaled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ingredients import add_noise, frozen_params, sample_t

__all__ = ["gan_critic_loss", "gan_generator_loss"]


def _noised(
    x: Tensor, critic, t_range: tuple[float, float], rng, reference: str | None
) -> tuple[Tensor, Tensor]:
    n, sched = x.shape[0], critic.schedule
    t = sample_t(n, sched, t_range, rng, dtype=x.dtype, device=x.device, reference=reference)
    x_t, _, _, _ = add_noise(x, t, critic.schedule, rng)
    return x_t, t


def gan_generator_loss(
    x: Tensor,
    cond: Tensor | None,
    critic,
    *,
    t_range: tuple[float, float],
    rng,
    t_reference: str | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Non-saturating ``mean_b softplus(-Dis(x_t)) * numel(x[0])``; gradients reach ``x``
    through ``x_t``, never the critic's parameters."""
    x_t, t = _noised(x, critic, t_range, rng, t_reference)
    with frozen_params(critic):
        logit = critic.logit(x_t, t, cond)
    value = F.softplus(-logit).mean() * x[0].numel()
    return value, {"gan_g": value.item(), "logit_fake_g": logit.mean().item()}


def gan_critic_loss(
    x: Tensor,
    cond: Tensor | None,
    real: tuple[Tensor, Tensor | None],
    critic,
    *,
    t_range: tuple[float, float],
    rng,
    t_reference: str | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``mean softplus(Dis(x_t^fake)) + mean softplus(-Dis(x_t^real))`` on ``sg(x)`` and teacher
    samples ``real = (x_real, labels | None)``; gradients reach the head and the critic's trunk."""
    x_real, c_real = real
    n = x.shape[0]
    x_f, t_f = _noised(x.detach(), critic, t_range, rng, t_reference)
    x_r, t_r = _noised(x_real.detach(), critic, t_range, rng, t_reference)
    # one call for both halves: a DDP-wrapped critic sees one forward per backward
    c_all = None if cond is None else torch.cat([cond, c_real])
    logits = critic.logit(torch.cat([x_f, x_r]), torch.cat([t_f, t_r]), c_all)
    logit_f, logit_r = logits[:n], logits[n:]
    value = F.softplus(logit_f).mean() + F.softplus(-logit_r).mean()
    acc = 0.5 * ((logit_f < 0).float().mean() + (logit_r > 0).float().mean())
    logs = {
        "gan_d": value.item(),
        "d_accuracy": acc.item(),
        "logit_real": logit_r.mean().item(),
        "logit_fake": logit_f.mean().item(),
    }
    return value, logs
