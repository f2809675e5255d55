"""The diffusion-GAN term (DMD2 + GAN) and f-distill's discriminator-estimated density ratio."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scoredistill.objectives import DMD, FDistill
from scoredistill.objectives._gan import gan_critic_loss, gan_generator_loss
from scoredistill.schedules import get_schedule
from scoredistill.sources.critic import make_critic


def _log_normal(x: torch.Tensor, mean: float, var: float) -> torch.Tensor:
    return -0.5 * (x - mean) ** 2 / var - 0.5 * math.log(2 * math.pi * var)


def test_head_learns_the_log_density_ratio():
    """A Bayes-optimal discriminator's logit is log p_t - log q_t; the head on the critic's
    features gets close to it where f-distill uses it (ratios clamped to [0.1, 20])."""
    torch.manual_seed(0)
    critic = make_critic(1, schedule="edm", hidden=64, depth=2).attach_logit_head(64)
    opt = torch.optim.Adam(critic.parameters(), 3e-3)
    rng = torch.Generator().manual_seed(1)
    u = 0.3  # one fixed time; sigma(0.3) = 0.318 on EDM
    for _ in range(400):
        real = 1.0 + 0.3 * torch.randn(256, 1, generator=rng)
        fake = -0.5 + 0.6 * torch.randn(256, 1, generator=rng)
        value, _ = gan_critic_loss(fake, None, (real, None), critic, t_range=(u, u), rng=rng)
        opt.zero_grad()
        value.backward()
        opt.step()
    _, sigma = critic.schedule.alpha_sigma(torch.tensor([u]))
    var_p, var_q = 0.09 + sigma.item() ** 2, 0.36 + sigma.item() ** 2
    g = torch.Generator().manual_seed(5)
    x = torch.cat(
        [
            1.0 + var_p**0.5 * torch.randn(1000, 1, generator=g),
            -0.5 + var_q**0.5 * torch.randn(1000, 1, generator=g),
        ]
    )
    exact = (_log_normal(x, 1.0, var_p) - _log_normal(x, -0.5, var_q)).reshape(-1)
    with torch.no_grad():
        logit = critic.logit(x, torch.full((2000,), u), None)
    in_range = exact.abs() <= 3.0  # log 0.1 = -2.3, log 20 = 3.0: the ratios f-distill uses
    mae = (logit - exact)[in_range].abs().mean().item()
    r2 = 1 - (logit - exact).pow(2).mean().item() / exact.var().item()
    # an untrained (constant) head has R^2 <= 0 and in-range error ~ mean |log r| = 1.5
    assert mae < 0.5 and r2 > 0.8, f"in-range MAE {mae:.3f}, R^2 {r2:.3f}"


class _LinearLogitCritic(nn.Module):
    """Logit ``a . x_t`` (a fixed direction ``a``) and a zero denoiser: closed-form gradients."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a, self.schedule = nn.Parameter(a.clone()), get_schedule("edm")

    def logit(self, x_t, t, cond=None):
        return x_t @ self.a

    def denoise(self, x_t, t, cond=None):
        return torch.zeros_like(x_t) + 0 * self.a.sum()


def test_generator_term_gradient_is_the_non_saturating_closed_form():
    a = torch.tensor([0.5, -1.0], dtype=torch.float64)
    critic = _LinearLogitCritic(a)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x.requires_grad_(True)
    u = 0.5
    value, _ = gan_generator_loss(
        x, None, critic, t_range=(u, u), rng=torch.Generator().manual_seed(1)
    )
    value.backward()
    # replay the same noise: x_t = x + sigma eps, d/dx softplus(-a.x_t) = -sigmoid(-a.x_t) a
    _, sigma = critic.schedule.alpha_sigma(torch.tensor([u], dtype=torch.float64))
    eps = torch.randn(64, 2, generator=_after_t(64), dtype=torch.float64)
    x_t = x.detach() + sigma * eps
    expected = -torch.sigmoid(-(x_t @ a))[:, None] * a / 64 * 2  # mean over B, times numel = 2
    torch.testing.assert_close(x.grad, expected)
    assert critic.a.grad is None  # the discriminator is frozen in the generator step


def _after_t(n: int) -> torch.Generator:
    """The rng state after ``sample_t`` drew ``n`` uniforms (float64) from seed 1."""
    g = torch.Generator().manual_seed(1)
    torch.rand(n, generator=g, dtype=torch.float64)
    return g


def test_fdistill_reads_its_ratio_from_the_critic_head():
    """With the head's logit equal to a given function, f-distill's weights h(r) are those of an
    explicit ``log_ratio`` (same rng), and the GAN term only adds to the loss."""
    a = torch.tensor([0.3, -0.2])
    critic = _LinearLogitCritic(a)
    teacher = _LinearLogitCritic(torch.zeros(2))
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    via_head = FDistill("kl").generator_loss(
        x, None, teacher=teacher, critic=critic, rng=torch.Generator().manual_seed(3)
    )
    explicit = FDistill("kl", gan_generator_weight=0.0).generator_loss(
        x,
        None,
        teacher=teacher,
        critic=critic,
        rng=torch.Generator().manual_seed(3),
        log_ratio=lambda x_t, t, c: x_t @ a,
    )
    assert via_head.logs["h_max"] == pytest.approx(explicit.logs["h_max"], rel=1e-6)
    assert "gan_g" in via_head.logs and "gan_g" not in explicit.logs


def test_gan_critic_step_needs_real_samples_and_is_off_by_default():
    critic = make_critic(2, schedule="edm", hidden=16, depth=2).attach_logit_head(16)
    x = torch.randn(8, 2)
    assert not DMD().needs_real and DMD(gan_generator_weight=3e-3).needs_real
    with pytest.raises(ValueError, match="real"):
        DMD(gan_generator_weight=3e-3).critic_loss(x, None, critic=critic, rng=None)
    plain = DMD().critic_loss(x, None, critic=critic, rng=torch.Generator().manual_seed(0))
    gan = DMD(gan_generator_weight=3e-3).critic_loss(
        x, None, critic=critic, rng=torch.Generator().manual_seed(0), real=(x + 1, None)
    )
    # the DSM part draws first from the same rng, so the GAN run adds gan_critic_weight * L_D
    assert gan.value.item() == pytest.approx(plain.value.item() + 1e-2 * gan.logs["gan_d"])


def test_head_is_not_part_of_a_plain_denoiser():
    critic = make_critic(2, schedule="edm", hidden=16, depth=2)
    assert critic.head is None and not any("head" in k for k in critic.state_dict())
    with pytest.raises(RuntimeError, match="attach_logit_head"):
        critic.logit(torch.zeros(1, 2), torch.tensor([0.5]))
