"""TDM (objectives/tdm.py) against DMD and hand computations.

- A one-step student (one interval: the whole range) with the squared distance is DMD, and step k
  of a 4-step student is DMD with its time range written out by hand as step k's interval.
- The teacher and the critic are only ever asked at times inside the step's interval.
- The pseudo-Huber gradient is ``Δ / sqrt(Δ^2 + c^2) / w / B`` with ``Δ = D_fake - D_real``.
- An exact critic (equal to the teacher) gives a zero update at every step.
- The critic's x0-MSE is weighted by ``min(SNR, 5)``.
- Contract on a real 4-step student; the two-player loop tells the objective its step.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from scoredistill.objectives import DMD, TDM
from scoredistill.schedules import get_schedule
from scoredistill.sources.critic import make_critic
from scoredistill.sources.generators import FewStepGenerator, OneStepGenerator
from scoredistill.train.two_player import TwoPlayerConfig, train_two_player
from step_aware_helpers import F64, TS, ModuleDenoiser, Recorder, inputs
from step_aware_helpers import exact_pair as _pair
from step_aware_helpers import generator_grad as _grad


def _x(n: int = 64, seed: int = 0) -> torch.Tensor:
    return inputs(n, seed).requires_grad_(True)


# a 4-step student on edm with edm as the reference: fractions equal times, so the intervals are
# written by hand (step k spans (TS[k], TS[k-1]), TS[4] = 0)
EDM_TDM = TDM(t_reference="edm", distance="mse")


# ------------------------------------------------------------------------- reduction to DMD
def test_one_step_tdm_with_the_squared_distance_is_dmd():
    teacher, critic = _pair()
    x = _x()
    dmd = DMD(t_range=(0.02, 0.99), t_reference="vp-linear")  # TDM: floor 20, 10 steps below top
    want = _grad(dmd, x, teacher, critic, seed=3)
    got = _grad(TDM(distance="mse"), x, teacher, critic, seed=3)
    # the same draws and the same operations: equal to float64 rounding
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert want.abs().sum() > 0
    one_step = _grad(EDM_TDM, x, teacher, critic, seed=3, step=1, student_times=(1.0,))
    edm_dmd = _grad(DMD(t_range=(0.02, 0.99), t_reference="edm"), x, teacher, critic, seed=3)
    torch.testing.assert_close(one_step, edm_dmd, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_step_k_is_dmd_on_its_own_interval(k):
    teacher, critic = _pair()
    x = _x(seed=k)
    lo, hi = max(([*TS, 0.0])[k], 0.02), TS[k - 1] - 0.01  # written out, not computed by TDM
    want = _grad(DMD(t_range=(lo, hi), t_reference="edm"), x, teacher, critic, seed=5)
    got = _grad(EDM_TDM, x, teacher, critic, seed=5, step=k, student_times=TS)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_teacher_and_critic_are_asked_inside_the_step_interval(k):
    teacher, critic = (Recorder(n) for n in _pair())
    x, rng = _x(256), torch.Generator().manual_seed(7)
    step = {"step": k, "student_times": TS}
    EDM_TDM.generator_loss(x, None, teacher=teacher, critic=critic, rng=rng, **step)
    EDM_TDM.critic_loss(x, None, critic=critic, rng=rng, **step)
    lo, hi = max(([*TS, 0.0])[k], 0.02), TS[k - 1] - 0.01
    for ts in (torch.cat(teacher.ts), torch.cat(critic.ts)):
        assert ts.min() >= lo - 1e-12 and ts.max() <= hi + 1e-12, (k, ts.min(), ts.max())
        assert ts.max() - ts.min() > 0.5 * (hi - lo)  # spread over the interval, not one point


def test_bad_step_and_fields_are_rejected_by_name():
    teacher, critic = _pair()
    with pytest.raises(ValueError, match="step"):
        _grad(EDM_TDM, _x(), teacher, critic, seed=0, step=5, student_times=TS)
    with pytest.raises(ValueError, match="distance"):
        TDM(distance="l1")
    with pytest.raises(ValueError, match="t_reference"):
        TDM(t_reference="nope")


# ------------------------------------------------------------------------- pseudo-Huber
def test_pseudo_huber_gradient_in_closed_form():
    teacher, critic = _pair()
    x, c = _x(), 1e-3
    got = _grad(TDM(t_reference="edm"), x, teacher, critic, seed=9)  # huber, c = 1e-3 default
    # the same draws through DMD's code (t, then the noise) give Δ and w independently of TDM
    rng = torch.Generator().manual_seed(9)
    parts = DMD(t_range=(0.02, 0.99), t_reference="edm").gradient(
        x, None, teacher=teacher, critic=critic, rng=rng
    )
    delta = parts["d_fake"] - parts["d_real"]
    want = delta / (delta**2 + c**2).sqrt() / parts["w"][:, None] / x.shape[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15)
    assert (delta.abs() > 10 * c).float().mean() > 0.5  # mostly the sign-like regime: not vacuous


# ------------------------------------------------------------------------- fixed point
@pytest.mark.parametrize("distance", ["huber", "mse"])
@pytest.mark.parametrize("k", [None, 1, 2, 3, 4])
def test_exact_critic_gives_a_zero_update(distance, k):
    teacher, _ = _pair()
    obj = dataclasses.replace(EDM_TDM, distance=distance)
    step = {} if k is None else {"step": k, "student_times": TS}
    grad = _grad(obj, _x(), teacher, teacher, seed=11, **step)
    assert grad.abs().max() == 0.0  # Δ = 0 exactly: no rounding to hide


# ------------------------------------------------------------------------- critic weighting
@pytest.mark.parametrize("u", [0.25, 0.75])  # SNR above 5 (capped), below 5 on edm
def test_critic_loss_is_min_snr_weighted_x0_mse(u):
    _, critic = _pair()
    x = _x(32).detach()
    obj = TDM(t_reference="edm", t_floor=u, top_margin=1 - u)  # lo = hi = u: a fixed time
    value = obj.critic_loss(x, None, critic=critic, rng=torch.Generator().manual_seed(4)).value
    rng = torch.Generator().manual_seed(4)
    torch.rand(32, generator=rng, dtype=F64)  # the time draw (u fixed)
    eps = torch.randn(x.shape, generator=rng, dtype=F64)
    t = torch.full((32,), u, dtype=F64)
    alpha, sigma = get_schedule("edm").alpha_sigma(t)
    x_t = alpha[:, None] * x + sigma[:, None] * eps
    snr = float(alpha[0] ** 2 / sigma[0] ** 2)
    mse = (critic.denoise(x_t, t) - x).pow(2).mean()
    assert (snr > 5) == (u == 0.25)
    torch.testing.assert_close(value, min(snr, 5.0) * mse, rtol=1e-12, atol=0.0)


# ------------------------------------------------------------------------- contract
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_contract_gradients_reach_the_student_only(k):
    torch.manual_seed(0)
    teacher, critic = (ModuleDenoiser(n) for n in _pair())
    gen = FewStepGenerator.from_mlp(2, "edm", steps=4, hidden=16, depth=2).double()
    rng = torch.Generator().manual_seed(k)
    x = gen(gen.sample_latent(8, rng, dtype=F64), rng=rng, k=k)
    step = {"step": k, "student_times": gen.ts}
    loss = TDM().generator_loss(x, None, teacher=teacher, critic=critic, rng=rng, **step)
    assert loss.value.dim() == 0 and torch.isfinite(loss.value)
    assert all(math.isfinite(v) for v in loss.logs.values())
    loss.value.backward()
    grads = [p.grad for p in gen.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert teacher.dummy.grad is None and critic.dummy.grad is None
    gen.zero_grad(set_to_none=True)
    closs = TDM().critic_loss(x, None, critic=critic, rng=rng, **step)
    closs.value.backward()
    assert torch.isfinite(closs.value) and critic.dummy.grad is not None
    assert all(p.grad is None for p in gen.parameters())


class StepLog:
    """Wraps an objective and records the step arguments the loop passes."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []
        self.step_aware = getattr(inner, "step_aware", False)

    def generator_loss(self, x, cond, **kw):
        self.calls.append(("g", kw.get("step"), kw.get("student_times")))
        return self.inner.generator_loss(x, cond, **kw)

    def critic_loss(self, x, cond, **kw):
        self.calls.append(("c", kw.get("step"), kw.get("student_times")))
        return self.inner.critic_loss(x, cond, **kw)


@pytest.mark.parametrize("few_step", [True, False])
def test_the_loop_tells_a_step_aware_objective_its_step(few_step, tmp_path):
    torch.manual_seed(0)
    teacher, _ = _pair(dtype=torch.float32)
    gen = (
        FewStepGenerator.from_mlp(2, "edm", steps=4, hidden=16, depth=2)
        if few_step
        else OneStepGenerator(2, hidden=16, depth=2)
    )
    critic = make_critic(2, schedule="edm", hidden=16, depth=2)
    obj = StepLog(TDM())
    cfg = TwoPlayerConfig(
        steps=3, batch_size=16, critic_updates=2, eval_every=0, checkpoint_every=3, log_every=1
    )
    train_two_player(
        cfg,
        objective=obj,
        generator=gen,
        critic=critic,
        teacher=teacher,
        sample_latent=lambda n, rng: gen.sample_latent(n, rng),
        sample_cond=None,
        evaluate=lambda g: {},
        out_dir=tmp_path,
    )
    assert [c[0] for c in obj.calls] == ["c", "c", "g"] * 3
    for _, k, ts in obj.calls:
        if few_step:
            assert k in (1, 2, 3, 4) and ts == gen.ts
        else:
            assert k is None and ts is None
