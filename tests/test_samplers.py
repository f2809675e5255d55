"""Samplers: convergence order against the exact probability-flow map of a Gaussian."""

from __future__ import annotations

import math

import pytest
import torch

from scoredistill.samplers import SAMPLERS, SPACINGS, nfe_to_steps, sample, time_grid
from scoredistill.schedules import SCHEDULES, get_schedule
from scoredistill.teachers.analytic import GaussianMixtureTeacher

F64 = torch.float64
MU, SD = 0.7, 0.5  # data N(MU, SD^2) in 1-D


def _gaussian(schedule: str) -> GaussianMixtureTeacher:
    return GaussianMixtureTeacher([[MU]], [1.0], stds=[SD], schedule=schedule)


def _exact_flow(sch, x, t0: float, t1: float):
    """Probability-flow map of N(MU, SD^2), by hand on the VE view: the deviation from the
    mean scales with the marginal std, x~(s) - MU = sqrt(SD^2 + s^2)/sqrt(SD^2 + s0^2) (x~0 - MU)."""
    a0, s0 = sch.alpha_sigma(torch.tensor([t0], dtype=F64))
    a1, s1 = sch.alpha_sigma(torch.tensor([t1], dtype=F64))
    ratio = torch.sqrt(SD**2 + (s1 / a1) ** 2) / torch.sqrt(SD**2 + (s0 / a0) ** 2)
    return a1 * (MU + ratio * (x / a0 - MU))


def _errors(name: str, sampler: str, steps: list[int]) -> list[float]:
    sch = get_schedule(name)
    teacher = _gaussian(name)
    x = torch.linspace(-3, 3, 13, dtype=F64)[:, None]
    t0, t1 = 0.9, 0.1
    exact = _exact_flow(sch, x, t0, t1)
    errs = []
    for n in steps:
        ts = torch.linspace(t0, t1, n + 1, dtype=F64)
        out = SAMPLERS[sampler](teacher.denoise, sch, x.clone(), ts, final_denoise=False)
        errs.append((out - exact).abs().max().item())
    return errs


# Schedules with a smooth t -> (alpha, sigma): the VP tables interpolate log-SNR piecewise
# linearly, whose kinks would spoil the observed order of the higher-order solvers.
SMOOTH = ["edm", "rf", "trigflow"]
ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp-2m": 2}


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("sampler", list(ORDERS))
def test_convergence_order(name, sampler):
    """Slope of log error vs log steps between 32 and 64 steps (asymptotic regime)."""
    errs = _errors(name, sampler, [16, 32, 64])
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    # an order-p method halves its error 2^p times per doubling; +-0.25 allows the
    # pre-asymptotic term still visible at 32 steps (Euler on EDM: 0.78 -> 0.90 -> 1)
    assert abs(slopes[-1] - ORDERS[sampler]) < 0.25, (errs, slopes)


@pytest.mark.parametrize("sampler", list(ORDERS))
def test_converges_on_vp_tables(sampler):
    """On the VP tables every solver still converges (error falls 8x over 16x more steps)."""
    for name in ("vp-linear", "vp-cosine"):
        errs = _errors(name, sampler, [16, 256])
        assert errs[1] < errs[0] / 8, (name, errs)


def test_euler_equals_ddim_on_rectified_flow():
    """The rf path is straight in t, so Euler in t is DDIM exactly (not on other schedules)."""
    assert _errors("rf", "euler", [7]) == pytest.approx(_errors("rf", "ddim", [7]), rel=1e-10)
    assert _errors("vp-linear", "euler", [7]) != pytest.approx(_errors("vp-linear", "ddim", [7]))


def test_one_step_ddim_returns_the_teacher_mean_denoise():
    """NFE = 1: one evaluation at t_max; with sigma_max = 80 it is ~ the data mean."""
    teacher = _gaussian("edm")
    x, used = sample(teacher, "ddim", 1, 1000, rng=torch.Generator().manual_seed(0), dtype=F64)
    assert used == 1
    # D(x_T) = MU + SD^2/(SD^2 + 80^2) (x_T - MU); x_T ~ N(0, 80^2): spread 80 SD^2/(SD^2+80^2)
    spread = 80 * SD**2 / (SD**2 + 80**2)
    assert abs(x.mean().item() - MU) < 5 * spread / math.sqrt(1000) + 1e-3
    assert x.std().item() == pytest.approx(spread, rel=0.1)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize(("sampler", "nfe"), [("heun", 64), ("dpmpp-2m", 64), ("ddim", 256)])
def test_many_steps_recover_the_gaussian(name, sampler, nfe):
    """From the prior with the default grid, samples reproduce N(MU, SD^2)."""
    teacher = _gaussian(name)
    n = 2000
    x, _ = sample(teacher, sampler, nfe, n, rng=torch.Generator().manual_seed(1), dtype=F64)
    # standard errors: mean SD/sqrt(n) = 0.011, std SD/sqrt(2n) = 0.008; 5 of them, plus a
    # solver bias of 0.02 (4% of SD; the first-order DDIM needs 256 NFE to get there)
    assert abs(x.mean().item() - MU) < 5 * SD / math.sqrt(n) + 0.02
    assert abs(x.std().item() - SD) < 5 * SD / math.sqrt(2 * n) + 0.02


def test_ancestral_sampler_is_unbiased_at_many_steps():
    """DDPM ancestral sampling: the exact reverse kernel for a Gaussian only at fine grids."""
    x, _ = sample(_gaussian("edm"), "ancestral", 256, 2000, rng=torch.Generator().manual_seed(2))
    assert abs(x.mean().item() - MU) < 5 * SD / math.sqrt(2000) + 0.02
    assert abs(x.std().item() - SD) < 5 * SD / math.sqrt(2 * 2000) + 0.02


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_deterministic_under_rng(sampler):
    teacher = _gaussian("edm")
    a, _ = sample(teacher, sampler, 4, 8, rng=torch.Generator().manual_seed(3))
    b, _ = sample(teacher, sampler, 4, 8, rng=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_nfe_accounting():
    assert nfe_to_steps("heun", 64) == (32, 63)
    assert nfe_to_steps("heun", 1) == (1, 1)
    assert nfe_to_steps("dpmpp-2m", 8) == (8, 8)
    calls = []

    def counting(x, t, cond=None):
        calls.append(1)
        return _gaussian("edm").denoise(x, t, cond)

    for name in SAMPLERS:
        calls.clear()
        _, used = sample(
            _gaussian("edm"), name, 8, 4, rng=torch.Generator().manual_seed(0), denoise=counting
        )
        assert len(calls) == used, name


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_nfe_is_rejected(bad):
    with pytest.raises(ValueError, match="NFE"):
        nfe_to_steps("ddim", bad)


def test_unknown_sampler_and_spacing():
    with pytest.raises(ValueError, match="dpmpp-2m"):
        nfe_to_steps("plms", 4)
    with pytest.raises(ValueError, match="karras"):
        time_grid(get_schedule("edm"), 4, "quadratic")


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("spacing", SPACINGS)
def test_time_grid_runs_from_t_max_to_t_min(name, spacing):
    sch = get_schedule(name)
    ts = time_grid(sch, 10, spacing)
    assert ts[0].item() == sch.t_max and ts[-1].item() == pytest.approx(sch.t_min)
    assert bool((ts[1:] < ts[:-1]).all())
    assert time_grid(sch, 1, spacing).tolist() == [sch.t_max]


def test_edm_uniform_grid_is_karras():
    """EDM's uniform t is Karras' rho = 7 grid: equal steps in sigma^(1/7)."""
    sch = get_schedule("edm")
    _, s = sch.alpha_sigma(time_grid(sch, 6))
    root = s ** (1 / 7)
    torch.testing.assert_close(
        root[1:] - root[:-1], (root[1] - root[0]).expand(5), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(time_grid(sch, 6, "karras"), time_grid(sch, 6), rtol=0, atol=1e-7)
