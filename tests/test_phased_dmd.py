"""Phased DMD (objectives/phased_dmd.py) and its phase experts (sources/experts.py).

- One phase is DMD, at every student step and for a one-step student; phase j's score times lie
  in its subinterval, a margin above its boundary.
- The subinterval score-matching target, derived independently here: on rectified flow it is
  LightX2V's velocity target (reference note b12) seen through the library's flow conversion, and
  the critic loss is its velocity MSE; for Gaussians its regression on x_t is the exact denoiser
  of q_t — the closed-form E[x_0 | x_t] when x_s is the forward-diffused state of x_0, the
  denoiser of the Gaussian q_t when x_s is any Gaussian (orthogonality of the residual to 1 and
  x_t within 5 standard errors; the naive target x_s / alpha_s fails the same check).
- The critic loss is the same function of the log-SNR on rf and edm.
- An exact critic gives a zero update; contract with experts: only the step's expert learns.
- Experts route by time; a boundary time belongs to the phase below it.
"""

from __future__ import annotations

import math

import pytest
import torch

from scoredistill.objectives import DMD, PhasedDMD
from scoredistill.objectives.phased_dmd import subinterval_target
from scoredistill.parametrization import from_denoiser
from scoredistill.schedules import get_schedule, log_snr, t_from_log_snr
from scoredistill.sources.experts import PhaseExperts, phased_student
from step_aware_helpers import F64, TS, ModuleDenoiser, Recorder
from step_aware_helpers import exact_pair as _pair
from step_aware_helpers import generator_grad as _grad
from step_aware_helpers import inputs as _x

EDM_PDMD = PhasedDMD(t_reference="edm")  # two phases: steps 1-2 above s = 0.5, steps 3-4 below
K_SE = 5.0  # |mean| <= 5 standard errors: two-sided p ~ 6e-7 per check
N_MC = 200_000  # 2-D Gaussians: SE ~ 0.2 % of the O(1) terms, well under a second


# ------------------------------------------------------------------------- reduction to DMD
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_one_phase_is_dmd_at_every_step(k):
    teacher, critic = _pair()
    x = _x(seed=k)
    want = _grad(DMD(t_reference="edm"), x, teacher, critic, seed=2)  # DMD2's (0.02, 0.98)
    one = PhasedDMD(phases=1, t_reference="edm")
    got = _grad(one, x, teacher, critic, seed=2, step=k, student_times=TS)
    # the same draws (t, then the noise) and the same operations: equal to float64 rounding
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert want.abs().sum() > 0


def test_a_one_step_student_is_one_phase():
    teacher, critic = _pair()
    want = _grad(DMD(t_reference="rf"), _x(), teacher, critic, seed=4)
    got = _grad(PhasedDMD(), _x(), teacher, critic, seed=4)  # phases=2, but no student times
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("k", "lo", "hi"), [(1, 0.52, 0.98), (2, 0.52, 0.98), (3, 0.02, 0.5)])
def test_score_times_stay_inside_the_phase(k, lo, hi):
    teacher, critic = (Recorder(n) for n in _pair())
    x, rng = _x(256), torch.Generator().manual_seed(6)
    step = {"step": k, "student_times": TS}
    EDM_PDMD.generator_loss(x, None, teacher=teacher, critic=critic, rng=rng, **step)
    EDM_PDMD.critic_loss(x, None, critic=critic, rng=rng, **step)
    for ts in (torch.cat(teacher.ts), torch.cat(critic.ts)):
        assert ts.min() >= lo - 1e-12 and ts.max() <= hi + 1e-12, (k, ts.min(), ts.max())
        assert ts.max() - ts.min() > 0.5 * (hi - lo)


def test_phases_must_divide_the_steps():
    teacher, critic = _pair()
    with pytest.raises(ValueError, match="phases=3 must divide"):
        _grad(PhasedDMD(phases=3), _x(), teacher, critic, seed=0, step=1, student_times=TS)
    with pytest.raises(ValueError, match="experts=3"):
        phased_student(2, "edm", steps=4, experts=3)


# ------------------------------------------------------------------------- the target
def test_target_is_lightx2v_velocity_target_on_rectified_flow():
    sched = get_schedule("rf")  # alpha = 1 - t, sigma = t: LightX2V's flow coordinates
    g = torch.Generator().manual_seed(0)
    n = 16
    s_s = torch.rand(n, generator=g, dtype=F64) * 0.6 + 0.05
    s_t = s_s + torch.rand(n, generator=g, dtype=F64) * (0.9 - s_s) + 0.02
    x_s, eps = torch.randn(n, 3, generator=g, dtype=F64), torch.randn(n, 3, generator=g, dtype=F64)
    a_s, sig_s = sched.alpha_sigma(s_s)
    a_t, sig_t = sched.alpha_sigma(s_t)
    x_t, target = subinterval_target(x_s, eps, a_s, sig_s, a_t, sig_t)
    # note b12 (ModelTC/LightX2V phased_dmd/math.py), written out in sigma only
    alpha = ((1 - s_t) / (1 - s_s))[:, None]
    beta = (s_t[:, None] ** 2 - alpha**2 * s_s[:, None] ** 2).sqrt()
    ss, st = s_s[:, None], s_t[:, None]
    v_want = -x_s / (1 - ss) + (st + (1 - st) * ss**2 / (1 - ss) ** 2) / beta * eps
    torch.testing.assert_close(x_t, alpha * x_s + beta * eps, rtol=1e-12, atol=1e-12)
    d_a, d_s = sched.alpha_sigma_deriv(s_t)
    v_got = from_denoiser(target, x_t, a_t, sig_t, "flow", d_alpha=d_a, d_sigma=d_s)
    torch.testing.assert_close(v_got, v_want, rtol=1e-10, atol=1e-10)


def test_critic_loss_is_lightx2v_velocity_mse_on_rectified_flow():
    _, critic = _pair("rf")
    x, u = _x(32), 0.4
    one = PhasedDMD(phases=1, t_range=(u, u))  # the last phase's boundary is clean: D* = x
    value = one.critic_loss(x, None, critic=critic, rng=torch.Generator().manual_seed(3)).value
    rng = torch.Generator().manual_seed(3)
    torch.rand(32, generator=rng, dtype=F64)  # the time draw (fixed u)
    eps = torch.randn(x.shape, generator=rng, dtype=F64)
    sched = get_schedule("rf")
    t = torch.full((32,), sched.t_min + (sched.t_max - sched.t_min) * u, dtype=F64)
    a, s = sched.alpha_sigma(t)
    d_a, d_s = sched.alpha_sigma_deriv(t)
    x_t = a[:, None] * x + s[:, None] * eps
    flow = lambda d: from_denoiser(d, x_t, a, s, "flow", d_alpha=d_a, d_sigma=d_s)  # noqa: E731
    want = (flow(critic.denoise(x_t, t)) - flow(x)).pow(2).mean()  # F.mse_loss, mean
    torch.testing.assert_close(value, want, rtol=1e-10, atol=0.0)


def test_critic_loss_is_the_same_on_every_schedule():
    # at equal log-SNR the VE states x_t / alpha agree, so do the denoisers, targets and weights
    x, obj, values = _x(32), PhasedDMD(t_reference="edm"), []
    lam = log_snr(get_schedule("edm"), torch.tensor(TS, dtype=F64))
    for name in ("edm", "rf", "vp-linear"):
        _, critic = _pair(name)
        times = tuple(t_from_log_snr(critic.schedule, lam).tolist())  # TS at the same log-SNRs
        step = {"step": 1, "student_times": times}  # phase 1: a noisy boundary state x_s
        rng = torch.Generator().manual_seed(8)
        values.append(obj.critic_loss(x, None, critic=critic, rng=rng, **step).value)
    # bisection of the times to 2^-60 and float64 denoisers: far inside 1e-6
    torch.testing.assert_close(values[1], values[0], rtol=1e-6, atol=0.0)
    torch.testing.assert_close(values[2], values[0], rtol=1e-6, atol=0.0)


def _orthogonality_z(r: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """z-scores of E[r] and E[r (x_t - mean x_t)], per dimension: 0 in expectation iff the
    residual ``r`` is orthogonal to the affine functions of ``x_t`` (Gaussians: E[r | x_t] = 0)."""
    f = x_t - x_t.mean(0)
    prods = torch.cat([r, r * f], 1)
    return prods.mean(0) / (prods.std(0) / math.sqrt(len(r)))


@pytest.mark.parametrize("schedule", ["edm", "vp-linear"])
@pytest.mark.parametrize(("u_s", "u_t"), [(0.3, 0.5), (0.5, 0.6), (0.45, 0.9)])
def test_target_regresses_to_the_exact_denoiser_of_a_gaussian(schedule, u_s, u_t):
    sched = get_schedule(schedule)
    g = torch.Generator().manual_seed(int(100 * u_s + 10 * u_t))
    mu0, v0 = torch.tensor([0.7, -0.3], dtype=F64), 0.5
    s, t = (torch.full((N_MC,), sched.t_min + (sched.t_max - sched.t_min) * u, dtype=F64)
            for u in (u_s, u_t))  # fmt: skip
    a_s, sig_s = sched.alpha_sigma(s)
    a_t, sig_t = sched.alpha_sigma(t)
    x0 = mu0 + math.sqrt(v0) * torch.randn(N_MC, 2, generator=g, dtype=F64)
    x_s = a_s[:, None] * x0 + sig_s[:, None] * torch.randn(N_MC, 2, generator=g, dtype=F64)
    x_t, target = subinterval_target(
        x_s, torch.randn(N_MC, 2, generator=g, dtype=F64), a_s, sig_s, a_t, sig_t
    )
    # closed form: x_t = alpha_t x0 + sigma_t noise, so E[x0 | x_t] is the Gaussian posterior mean
    at, st = a_t[0].item(), sig_t[0].item()
    e_x0 = mu0 + at * v0 / (at**2 * v0 + st**2) * (x_t - at * mu0)
    z = _orthogonality_z(target - e_x0, x_t)
    assert z.abs().max() < K_SE, z
    naive = _orthogonality_z(x_s / a_s[:, None] - e_x0, x_t)  # conditioning on x_s, unscaled
    assert naive.abs().max() > 2 * K_SE, naive  # the check can fail


def test_target_regresses_to_the_denoiser_of_any_gaussian_boundary_law():
    # x_s ~ N(m, v) with v < sigma_s^2: not the forward-diffused state of any clean law
    sched, g = get_schedule("vp-linear"), torch.Generator().manual_seed(9)
    m, v = torch.tensor([0.4, 1.1], dtype=F64), 0.04
    s, t = (torch.full((N_MC,), u, dtype=F64) for u in (0.4, 0.55))
    a_s, sig_s = sched.alpha_sigma(s)
    a_t, sig_t = sched.alpha_sigma(t)
    assert v < sig_s[0] ** 2
    x_s = m + math.sqrt(v) * torch.randn(N_MC, 2, generator=g, dtype=F64)
    x_t, target = subinterval_target(
        x_s, torch.randn(N_MC, 2, generator=g, dtype=F64), a_s, sig_s, a_t, sig_t
    )
    # q_t = N(a m, a^2 v + b^2); its denoiser (x_t + sigma_t^2 score) / alpha_t
    a, at, st, ss = (a_t / a_s)[0].item(), a_t[0].item(), sig_t[0].item(), sig_s[0].item()
    var_t = a**2 * v + (st**2 - a**2 * ss**2)
    d_q = (x_t - st**2 * (x_t - a * m) / var_t) / at
    z = _orthogonality_z(target - d_q, x_t)
    assert z.abs().max() < K_SE, z


def test_a_clean_boundary_is_plain_dsm():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    a_t, s_t = torch.full((5,), 0.8, dtype=F64), torch.full((5,), 0.6, dtype=F64)
    one, zero = torch.ones(5, dtype=F64), torch.zeros(5, dtype=F64)
    x_t, target = subinterval_target(x, eps, one, zero, a_t, s_t)
    torch.testing.assert_close(x_t, 0.8 * x + 0.6 * eps, rtol=0, atol=1e-15)
    assert torch.equal(target, x)


# ------------------------------------------------------------------------- fixed point
@pytest.mark.parametrize("k", [None, 1, 2, 3, 4])
def test_exact_critic_gives_a_zero_update(k):
    teacher, _ = _pair()
    step = {} if k is None else {"step": k, "student_times": TS}
    assert _grad(EDM_PDMD, _x(), teacher, teacher, seed=5, **step).abs().max() == 0.0


# ------------------------------------------------------------------------- contract, experts
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_contract_gradients_reach_the_step_expert_only(k):
    torch.manual_seed(0)
    teacher, critic = (ModuleDenoiser(n) for n in _pair())
    gen = phased_student(2, "edm", steps=4, experts=2, hidden=16, depth=2).double()
    rng = torch.Generator().manual_seed(k)
    x = gen(gen.sample_latent(8, rng, dtype=F64), rng=rng, k=k)
    step = {"step": k, "student_times": gen.ts}
    loss = PhasedDMD().generator_loss(x, None, teacher=teacher, critic=critic, rng=rng, **step)
    assert loss.value.dim() == 0 and torch.isfinite(loss.value)
    assert all(math.isfinite(v) for v in loss.logs.values())
    loss.value.backward()
    active, idle = gen.denoiser.experts[(k - 1) // 2], gen.denoiser.experts[1 - (k - 1) // 2]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in active.parameters())
    assert sum(float(p.grad.abs().sum()) for p in active.parameters()) > 0
    assert all(p.grad is None for p in idle.parameters())
    assert teacher.dummy.grad is None and critic.dummy.grad is None
    gen.zero_grad(set_to_none=True)
    closs = PhasedDMD().critic_loss(x, None, critic=critic, rng=rng, **step)
    closs.value.backward()
    assert torch.isfinite(closs.value) and critic.dummy.grad is not None
    assert all(p.grad is None for p in gen.parameters())


def test_experts_route_by_time_and_the_boundary_goes_below():
    torch.manual_seed(0)
    gen = phased_student(2, "edm", steps=4, experts=2, hidden=16, depth=2)
    experts: PhaseExperts = gen.denoiser
    assert gen.ts == TS and experts.bounds == (0.5,)
    seen = {0: [], 1: []}
    for j, e in enumerate(experts.experts):
        e.register_forward_hook(lambda m, args, out, j=j: seen[j].append(float(args[1][0])))
    with torch.no_grad():
        gen(gen.sample_latent(4, torch.Generator().manual_seed(1)))
    assert seen == {0: [1.0, 0.75], 1: [0.5, 0.25]}  # steps 1-2, then 3-4 (0.5 is the boundary)
    x_t = torch.randn(4, 2)
    t = torch.tensor([0.9, 0.5, 0.3, 0.7])
    with torch.no_grad():
        mixed = experts(x_t, t)
        rows = [experts.experts[int(t[i] <= 0.5)](x_t[i : i + 1], t[i : i + 1]) for i in range(4)]
    torch.testing.assert_close(mixed, torch.cat(rows), rtol=1e-6, atol=1e-7)
