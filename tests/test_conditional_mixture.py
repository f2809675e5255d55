"""The per-sample conditional mixture teacher against the fixed mixture and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoredistill.schedules import get_schedule
from scoredistill.teachers.analytic import GaussianMixtureTeacher, MixtureFormatError
from scoredistill.teachers.conditional_mixture import (
    PerSampleMixture,
    PerSampleTeacher,
    condition_on_coordinates,
    repeat_mixture,
)


def _full_cov_mixture(k: int = 3, d: int = 4, seed: int = 0) -> GaussianMixtureTeacher:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d, d))
    covs = a @ a.transpose(0, 2, 1) / d + 0.05 * np.eye(d)
    return GaussianMixtureTeacher(
        rng.normal(size=(k, d)) * 2, rng.uniform(0.2, 1.0, size=k), covs=covs, schedule="vp-cosine"
    )


def _noisy(teacher, n: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, teacher.dim, generator=g, dtype=torch.float64) * 2
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x, t, *teacher.schedule.alpha_sigma(t)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_a_fixed_condition_equals_the_mixture_teacher(covariance: str) -> None:
    """The issue's test: one condition repeated on every row is the existing teacher (1e-6)."""
    teacher = _full_cov_mixture()
    if covariance == "diagonal":
        stds = np.random.default_rng(3).uniform(0.3, 1.0, size=(3, 4))
        teacher = GaussianMixtureTeacher(
            teacher.means, teacher.weights, stds=stds, schedule="vp-cosine"
        )
    x, _, alpha, sigma = _noisy(teacher)
    mix = repeat_mixture(teacher, len(x))
    for ours, theirs in (
        (mix.denoise_at(x, alpha, sigma), teacher.denoise_at(x, alpha, sigma)),
        (mix.score_at(x, alpha, sigma), teacher.score_at(x, alpha, sigma)),
        (mix.log_prob_at(x, alpha, sigma), teacher.log_prob_at(x, alpha, sigma)),
        (mix.log_prob(x), teacher.log_prob(x)),
    ):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    x32 = x.float()
    torch.testing.assert_close(
        mix.denoise_at(x32, alpha.float(), sigma.float()),
        teacher.denoise_at(x32, alpha.float(), sigma.float()),
        atol=1e-5,
        rtol=1e-5,
    )


def _per_row_mixture(seed: int = 0) -> PerSampleMixture:
    g = torch.Generator().manual_seed(seed)
    b, k, d = 16, 3, 3
    q, _ = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=torch.float64))
    return PerSampleMixture(
        torch.log_softmax(torch.randn(b, k, generator=g, dtype=torch.float64), 1),
        torch.randn(b, k, d, generator=g, dtype=torch.float64) * 2,
        torch.rand(k, d, generator=g, dtype=torch.float64) + 0.1,
        q,
    )


def test_each_row_is_its_own_mixture() -> None:
    """Row b of a per-sample mixture equals a fixed mixture built from row b's parameters."""
    mix = _per_row_mixture()
    covs = mix.eigvecs @ torch.diag_embed(mix.eigvals) @ mix.eigvecs.transpose(1, 2)
    x, _, alpha, sigma = _noisy(GaussianMixtureTeacher(mix.means[0], mix.log_weights[0].exp(),
                                                       covs=covs, schedule="edm"), n=16)  # fmt: skip
    out = mix.denoise_at(x, alpha, sigma)
    for b in (0, 7, 15):
        row = GaussianMixtureTeacher(mix.means[b], mix.log_weights[b].exp(), covs=covs)
        sl = slice(b, b + 1)
        torch.testing.assert_close(out[sl], row.denoise_at(x[sl], alpha[sl], sigma[sl]))


def test_tweedie_and_autograd_identities() -> None:
    """``D = (x + sigma^2 score) / alpha`` and ``score = grad log p_t`` (separate code paths)."""
    mix = _per_row_mixture(1)
    x, _, alpha, sigma = _noisy(GaussianMixtureTeacher(mix.means[0], mix.log_weights[0].exp(),
                                                       stds=np.ones(3)), n=16)  # fmt: skip
    score = mix.score_at(x, alpha, sigma)
    tweedie = (x + sigma[:, None] ** 2 * score) / alpha[:, None]
    torch.testing.assert_close(mix.denoise_at(x, alpha, sigma), tweedie)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob_at(xg, alpha, sigma).sum(), xg)
    torch.testing.assert_close(score, grad)


def test_conditioning_is_bayes_rule() -> None:
    """``log p(x_u | x_o) = log p(x) - log p(x_o)``, the marginal being the sub-mixture."""
    teacher = _full_cov_mixture(k=3, d=5, seed=2)
    observed = torch.tensor([3, 0])
    x = teacher.sample(40, rng=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = condition_on_coordinates(teacher, observed, x[:, observed])
    unobserved = torch.tensor([1, 2, 4])
    cov = teacher.covariances
    marginal = GaussianMixtureTeacher(
        teacher.means[:, observed], teacher.weights, covs=cov[:, observed][:, :, observed]
    )
    expected = teacher.log_prob(x) - marginal.log_prob(x[:, observed])
    torch.testing.assert_close(cond.log_prob(x[:, unobserved]), expected)


def test_conditional_samples_match_the_exact_moments() -> None:
    """Exact draws of one conditional: sample mean within 5 standard errors of the exact mean."""
    teacher = _full_cov_mixture(k=2, d=3, seed=4)
    mix = condition_on_coordinates(teacher, torch.tensor([2]), torch.full((20000, 1), 0.3))
    x, _ = mix.sample(torch.Generator().manual_seed(0))
    w = mix.log_weights[0].exp()
    mean = (w[:, None] * mix.means[0]).sum(0)
    second = sum(
        w[k] * (mix.eigvecs[k] @ torch.diag(mix.eigvals[k]) @ mix.eigvecs[k].T
                + torch.outer(mix.means[0, k], mix.means[0, k]))
        for k in range(2)
    )  # fmt: skip
    std = (torch.diagonal(second) - mean**2).sqrt()
    assert bool(((x.mean(0) - mean).abs() < 5 * std / len(x) ** 0.5).all())


def test_per_sample_teacher_reads_its_condition() -> None:
    teacher = _full_cov_mixture(k=2, d=3, seed=5)
    obs = torch.tensor([0])
    wrapped = PerSampleTeacher(
        lambda c: condition_on_coordinates(teacher, obs, c), get_schedule("edm"), dim=2
    )
    cond = torch.randn(8, 1, dtype=torch.float64)
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 0.4, dtype=torch.float64)
    mix = condition_on_coordinates(teacher, obs, cond)
    expected = mix.denoise_at(x, *get_schedule("edm").alpha_sigma(t))
    torch.testing.assert_close(wrapped.denoise(x, t, cond), expected)
    with pytest.raises(ValueError, match="condition"):
        wrapped.denoise(x, t, None)


def test_shapes_are_checked() -> None:
    mix = _per_row_mixture()
    with pytest.raises(MixtureFormatError, match="log_weights"):
        PerSampleMixture(mix.log_weights[:, :2], mix.means, mix.eigvals, mix.eigvecs)
    with pytest.raises(MixtureFormatError, match="eigvals"):
        PerSampleMixture(mix.log_weights, mix.means, mix.eigvals[:, :2], mix.eigvecs)
    with pytest.raises(ValueError, match="prod"):
        mix.denoise_at(torch.zeros(16, 4), torch.ones(16), torch.ones(16))
    with pytest.raises(ValueError, match="distinct"):
        condition_on_coordinates(_full_cov_mixture(), torch.tensor([0, 0]), torch.zeros(2, 2))
