"""Schedules and prediction conversions against formulas written independently here."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scoredistill.parametrization import (
    PREDICTIONS,
    cfg_combine,
    dreamfusion_to_cfg_scale,
    from_denoiser,
    guided,
    to_denoiser,
)
from scoredistill.schedules import SCHEDULES, get_schedule, log_snr, t_from_log_snr, vp_betas

F64 = torch.float64
NAMES = list(SCHEDULES)


def test_vp_linear_matches_ddpm_table_at_integer_steps():
    """alpha^2 = cumprod(1 - beta) at t = k / 999 (diffusers' DDPMScheduler tables)."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    k = torch.tensor([0, 1, 250, 998, 999])
    a, s = get_schedule("vp-linear").alpha_sigma(k.to(F64) / 999)
    torch.testing.assert_close(a**2, abar[k], rtol=1e-10, atol=0)
    torch.testing.assert_close(s**2, 1 - abar[k], rtol=1e-10, atol=0)
    assert abs(s[0].item() - 0.01) < 1e-6  # sigma at k=0 is sqrt(beta_1) = 0.01 (reference note)


def test_vp_scaled_linear_matches_sd_table_at_integer_steps():
    """Stable Diffusion's scaled_linear table: betas = linspace(sqrt(0.00085), sqrt(0.012))^2
    (diffusers ``DDPMScheduler``), log-SNR 7.07 -> -5.36 (reference note diffusers §1.1)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    k = torch.tensor([0, 1, 500, 998, 999])
    sch = get_schedule("vp-scaled-linear")
    a, s = sch.alpha_sigma(k.to(F64) / 999)
    torch.testing.assert_close(a**2, abar[k], rtol=1e-10, atol=0)
    torch.testing.assert_close(s**2, 1 - abar[k], rtol=1e-10, atol=0)
    lam = log_snr(sch, torch.tensor([0.0, 1.0], dtype=F64))
    assert lam[0].item() == pytest.approx(7.07, abs=0.01)
    assert lam[1].item() == pytest.approx(-5.36, abs=0.01)


def test_vp_cosine_table_ends():
    """squaredcos_cap_v2: betas capped at 0.999, log-SNR ends as in the reference table."""
    assert float(vp_betas("squaredcos_cap_v2").max()) <= 0.999
    lam = log_snr(get_schedule("vp-cosine"), torch.tensor([0.0, 1.0], dtype=F64))
    assert lam[0].item() == pytest.approx(10.09, abs=0.01)
    assert lam[1].item() == pytest.approx(-19.84, abs=0.01)


def test_closed_form_schedules():
    t = torch.linspace(0, 1, 11, dtype=F64)
    a, s = get_schedule("rf").alpha_sigma(t)
    torch.testing.assert_close(a, 1 - t)
    torch.testing.assert_close(s, t)
    a, s = get_schedule("trigflow").alpha_sigma(t)
    torch.testing.assert_close(a, torch.cos(t * math.pi / 2), atol=1e-15, rtol=0)
    a, s = get_schedule("edm").alpha_sigma(torch.tensor([0.0, 1.0], dtype=F64))
    torch.testing.assert_close(s, torch.tensor([0.002, 80.0], dtype=F64))
    assert bool((a == 1).all())


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_finite_differences(name):
    sch = get_schedule(name)
    # stay inside one table cell for VP: the interpolated log-SNR is piecewise linear
    t = torch.tensor([0.1001, 0.3003, 0.5005, 0.7007, 0.9009], dtype=F64)
    h = 1e-7
    a_p, s_p = sch.alpha_sigma(t + h)
    a_m, s_m = sch.alpha_sigma(t - h)
    da, ds = sch.alpha_sigma_deriv(t)
    # central differences: error O(h^2 |f'''|) + O(eps/h) ~ 1e-8 relative
    torch.testing.assert_close(da, (a_p - a_m) / (2 * h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ds, (s_p - s_m) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_decreases_and_inverts(name):
    sch = get_schedule(name)
    t = torch.linspace(sch.t_min, 0.999, 50, dtype=F64)
    lam = log_snr(sch, t)
    assert bool((lam[1:] < lam[:-1]).all())
    torch.testing.assert_close(t_from_log_snr(sch, lam), t, atol=1e-9, rtol=0)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_out_of_range_t_is_rejected(bad):
    for sch in SCHEDULES.values():
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            sch.alpha_sigma(torch.tensor([0.5, bad]))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="vp-linear"):
        get_schedule("ddpm")
    with pytest.raises(ValueError, match="eps"):
        to_denoiser(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), torch.ones(1), "noise")


# ----------------------------------------------------------------------------- conversions
@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    t=st.floats(0.01, 0.99),
    prediction=st.sampled_from(PREDICTIONS),
    seed=st.integers(0, 2**16),
)
def test_conversions_round_trip(name, t, prediction, seed):
    """from_denoiser then to_denoiser is the identity for every schedule and prediction."""
    sch = get_schedule(name)
    g = torch.Generator().manual_seed(seed)
    tt = torch.full((4,), t, dtype=F64)
    a, s = sch.alpha_sigma(tt)
    da, ds = sch.alpha_sigma_deriv(tt)
    x0, eps = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    x_t = a[:, None] * x0 + s[:, None] * eps
    kw = {"d_alpha": da, "d_sigma": ds}
    out = from_denoiser(x0, x_t, a, s, prediction, **kw)
    torch.testing.assert_close(
        to_denoiser(out, x_t, a, s, prediction, **kw), x0, rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("name", NAMES)
def test_conversions_equal_their_definitions(name):
    """With the true (x0, eps): eps, v, flow and score predictions equal their textbook targets."""
    sch = get_schedule(name)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=F64)
    a, s = sch.alpha_sigma(t)
    da, ds = sch.alpha_sigma_deriv(t)
    x0, eps = torch.randn(3, 2, generator=g, dtype=F64), torch.randn(3, 2, generator=g, dtype=F64)
    x_t = a[:, None] * x0 + s[:, None] * eps
    kw = {"d_alpha": da, "d_sigma": ds}

    def conv(p):
        return from_denoiser(x0, x_t, a, s, p, **kw)

    torch.testing.assert_close(conv("eps"), eps)
    torch.testing.assert_close(conv("v"), a[:, None] * eps - s[:, None] * x0)
    # flow = d x_t / dt for fixed (x0, eps)
    torch.testing.assert_close(conv("flow"), da[:, None] * x0 + ds[:, None] * eps)
    # score of N(a x0, s^2 I) at x_t, as a Gaussian posterior-free identity: -eps / s
    torch.testing.assert_close(conv("score"), -eps / s[:, None])


def test_rectified_flow_velocity_is_eps_minus_x0():
    """diffusers' FlowMatch convention: v = eps - x0, x0 = x_t - t v."""
    sch = get_schedule("rf")
    t = torch.tensor([0.3], dtype=F64)
    a, s = sch.alpha_sigma(t)
    da, ds = sch.alpha_sigma_deriv(t)
    x0, eps = torch.tensor([[1.0, -2.0]], dtype=F64), torch.tensor([[0.5, 0.25]], dtype=F64)
    x_t = a * x0 + s * eps
    v = from_denoiser(x0, x_t, a, s, "flow", d_alpha=da, d_sigma=ds)
    torch.testing.assert_close(v, eps - x0)
    torch.testing.assert_close(x_t - 0.3 * v, x0)


def test_flow_needs_derivatives():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="d_alpha"):
        to_denoiser(z, z, torch.ones(1), torch.ones(1), "flow")


# ----------------------------------------------------------------------------- CFG
def _toy_conditional_denoiser(x_t, t, cond):
    """A denoiser whose conditional branch differs per label (any function works for CFG)."""
    shift = torch.where(cond[:, None] < 0, 0.0, 1.0 + cond[:, None].to(x_t.dtype))
    return 0.5 * x_t + shift * t[:, None]


@pytest.mark.parametrize("w", [0.0, 1.0, 3.5])
def test_cfg_endpoints_and_formula(w):
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.full((5,), 0.4, dtype=F64)
    c = torch.tensor([0, 1, 2, 0, 1])
    d_u = _toy_conditional_denoiser(x, t, torch.full_like(c, -1))
    d_c = _toy_conditional_denoiser(x, t, c)
    out = guided(_toy_conditional_denoiser, w)(x, t, c)
    torch.testing.assert_close(out, d_u + w * (d_c - d_u))
    if w == 0.0:
        torch.testing.assert_close(out, d_u)
    if w == 1.0:
        torch.testing.assert_close(out, d_c)


@pytest.mark.parametrize("prediction", ["eps", "v", "score", "flow", "edm"])
@pytest.mark.parametrize("name", NAMES)
def test_cfg_commutes_with_conversions(prediction, name):
    """Guiding in eps/v/score/flow space equals guiding D and converting (affine maps)."""
    sch = get_schedule(name)
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0.25, 0.6], dtype=F64)
    a, s = sch.alpha_sigma(t)
    kw = dict(zip(("d_alpha", "d_sigma"), sch.alpha_sigma_deriv(t), strict=True))
    x_t, d_u, d_c = (torch.randn(2, 3, generator=g, dtype=F64) for _ in range(3))
    w = 4.0
    in_space = cfg_combine(
        from_denoiser(d_u, x_t, a, s, prediction, **kw),
        from_denoiser(d_c, x_t, a, s, prediction, **kw),
        w,
    )
    via_d = from_denoiser(cfg_combine(d_u, d_c, w), x_t, a, s, prediction, **kw)
    torch.testing.assert_close(in_space, via_d)


def test_dreamfusion_scale_maps_to_w_plus_one():
    """eps_c + w'(eps_c - eps_u) == eps_u + (w' + 1)(eps_c - eps_u)."""
    eps_u, eps_c, wp = torch.tensor([0.3]), torch.tensor([1.1]), 7.5
    dreamfusion = eps_c + wp * (eps_c - eps_u)
    torch.testing.assert_close(cfg_combine(eps_u, eps_c, dreamfusion_to_cfg_scale(wp)), dreamfusion)
