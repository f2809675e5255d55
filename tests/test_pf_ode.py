"""The exact PF-ODE map of a testbed teacher against closed forms and its own invariants.

Single Gaussian ``N(mu, c^2 I)`` on any path ``x_t = alpha x + sigma eps``: the flow is affine,
written by hand here (it is the map of each component's mean and std, since the marginal stays
``N(alpha mu, (alpha^2 c^2 + sigma^2) I)`` and the flow is linear for a Gaussian):

    x_s = alpha_s mu + (x_t - alpha_t mu) sqrt((alpha_s^2 c^2 + sigma_s^2) / (alpha_t^2 c^2 + sigma_t^2))
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scoredistill.teachers.analytic import GaussianMixtureTeacher
from scoredistill.teachers.pf_ode import (
    consistency_function,
    consistency_function_ve,
    pf_ode_map,
    pf_ode_map_ve,
)
from scoredistill.teachers.testbeds import get_testbed
from scoredistill.teachers.trigflow import mixture_sigma_data, trigflow_velocity

# the solver's local tolerance is 1e-9; its global error stays below 1e-7 on these flows, so
# 1e-6 is the contract the issue asks for with a 10x margin
TOL = 1e-6


def _gaussian(schedule: str, mu=(0.7, -1.2), c=0.3) -> GaussianMixtureTeacher:
    return GaussianMixtureTeacher(np.array([mu]), np.ones(1), stds=np.array([c]), schedule=schedule)


def _closed_form(teacher, x_t, t, s, mu, c):
    a_t, s_t = teacher.schedule.alpha_sigma(t)
    a_s, s_s = teacher.schedule.alpha_sigma(s)
    mu = torch.tensor(mu, dtype=torch.float64)
    ratio = torch.sqrt((a_s**2 * c**2 + s_s**2) / (a_t**2 * c**2 + s_t**2))
    return a_s[:, None] * mu + (x_t - a_t[:, None] * mu) * ratio[:, None]


@pytest.mark.parametrize("schedule", ["edm", "vp-linear", "vp-cosine", "rf", "trigflow"])
def test_gaussian_flow_matches_its_closed_form(schedule: str) -> None:
    mu, c = (0.7, -1.2), 0.3
    teacher = _gaussian(schedule, mu, c)
    rng = torch.Generator().manual_seed(0)
    n = 64
    hi = 0.95 if schedule in ("rf", "trigflow") else 1.0  # alpha > 0 at both ends
    t = torch.rand(n, generator=rng, dtype=torch.float64) * hi
    s = torch.rand(n, generator=rng, dtype=torch.float64) * hi
    a_t, sg_t = teacher.schedule.alpha_sigma(t)
    x_t = a_t[:, None] * torch.tensor(mu) + torch.sqrt(a_t**2 * c**2 + sg_t**2)[:, None] * (
        torch.randn(n, 2, generator=rng, dtype=torch.float64)
    )
    got = pf_ode_map(teacher, x_t, t, s)
    want = _closed_form(teacher, x_t, t, s, mu, c)
    assert (got - want).abs().max().item() < TOL


def test_gaussian_consistency_function_is_the_map_to_clean_data() -> None:
    mu, c = (0.7, -1.2), 0.3
    teacher = _gaussian("edm", mu, c)
    s = torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    got = consistency_function_ve(teacher, x, s)
    want = torch.tensor(mu) + (x - torch.tensor(mu)) * (c / torch.sqrt(c**2 + s**2))[:, None]
    assert (got - want).abs().max().item() < TOL


def test_mixture_map_is_reversible() -> None:
    tb = get_testbed("ring8")
    teacher = tb.teacher
    rng = torch.Generator().manual_seed(2)
    n = 128
    t = torch.rand(n, generator=rng, dtype=torch.float64) * 0.9 + 0.05
    s = torch.rand(n, generator=rng, dtype=torch.float64) * 0.9 + 0.05
    x0 = tb.truth.sample(n, rng=rng, dtype=torch.float64)
    _, sg = teacher.schedule.alpha_sigma(t)
    x_t = x0 + sg[:, None] * torch.randn(n, 2, generator=rng, dtype=torch.float64)
    back = pf_ode_map(teacher, pf_ode_map(teacher, x_t, t, s), s, t)
    assert (back - x_t).abs().max().item() < 1e-5


def test_exact_consistency_function_is_self_consistent_and_fixes_clean_data() -> None:
    tb = get_testbed("grid25")
    teacher = tb.teacher
    rng = torch.Generator().manual_seed(3)
    n = 96
    t = torch.rand(n, generator=rng, dtype=torch.float64) * 0.8 + 0.2
    s = t * torch.rand(n, generator=rng, dtype=torch.float64)  # any earlier time
    x0 = tb.truth.sample(n, rng=rng, dtype=torch.float64)
    _, sg = teacher.schedule.alpha_sigma(t)
    x_t = x0 + sg[:, None] * torch.randn(n, 2, generator=rng, dtype=torch.float64)
    f_t = consistency_function(teacher, x_t, t)
    f_s = consistency_function(teacher, pf_ode_map(teacher, x_t, t, s), s)
    assert (f_t - f_s).abs().max().item() < TOL
    # boundary condition: at sigma = 0 the consistency function is the identity
    zero = torch.zeros(n, dtype=torch.float64)
    assert (consistency_function_ve(teacher, x0, zero) - x0).abs().max().item() < 1e-12


def test_conditional_map_follows_the_class_flow() -> None:
    """With a class label the flow is that of the class's own mixture (an exact sub-mixture)."""
    tb = get_testbed("cond2d")
    truth = tb.truth
    keep = (truth.labels == 1).numpy()
    sub = GaussianMixtureTeacher(
        truth.means[keep], truth.weights[keep], stds=truth.eigvals[keep].sqrt(), schedule="edm"
    )
    rng = torch.Generator().manual_seed(4)
    x = torch.randn(32, 2, generator=rng, dtype=torch.float64) * 3
    s = torch.full((32,), 3.0, dtype=torch.float64)
    ones = torch.ones(32, dtype=torch.long)
    got = pf_ode_map_ve(tb.teacher, x, s, s * 0, cond=ones, sigma_d=1.0)
    want = pf_ode_map_ve(sub, x, s, s * 0, sigma_d=1.0)
    assert (got - want).abs().max().item() < TOL


def test_velocity_forms_agree_and_sigma_data_is_the_mixture_std() -> None:
    """The D form and the score form of the TrigFlow velocity are one function (Tweedie)."""
    tb = get_testbed("ring8")
    sd = mixture_sigma_data(tb.truth)
    samples = tb.truth.sample(200_000, rng=torch.Generator().manual_seed(5), dtype=torch.float64)
    # sqrt(mean per-dim variance) of 2e5 samples: std error ~ 1/sqrt(2e5) relative, 4 sigma
    assert abs(samples.var(0).mean().sqrt().item() - sd) < 4 * sd / math.sqrt(2e5)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    theta = torch.full((16,), 0.6, dtype=torch.float64)
    v_score = trigflow_velocity(tb.teacher, x, theta, sd)
    alpha, sigma = torch.cos(theta), sd * torch.sin(theta)
    d = tb.teacher.denoise_at(x, alpha, sigma)
    v_d = (torch.cos(theta)[:, None] * x - d) / torch.sin(theta)[:, None]
    assert (v_score - v_d).abs().max().item() < 1e-12
