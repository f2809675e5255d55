"""Hyper-SD's stages after TSCD (objectives/hypersd.py, objectives/refl.py): the one-step DMD term
and the human-feedback (ReFL) term on an exact reward.

The oracle is the single Gaussian ``N(mu, c^2 I)`` of tests/test_hypersd.py, with the closed forms

    log p(x) = -|x - mu|^2 / (2 c^2) - (D / 2) log(2 pi c^2),   grad log p(x) = -(x - mu) / c^2,

and an affine student ``f(x_t, t) = m + a x_t / sigma_t`` whose one-step sample (``x_T = sigma_T
z``) is ``m + a z``: at ``(m, a) = (mu, c)`` its law is the teacher's, so the exact fake score is
the teacher's own denoiser and DMD's ``g`` vanishes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from scoredistill.config import ConfigError
from scoredistill.objectives.dmd import DMD
from scoredistill.objectives.hypersd import HyperSD
from scoredistill.objectives.refl import ReFL, denoised_at_step, teacher_log_prob
from scoredistill.runs import FAMILIES
from scoredistill.samplers import time_grid
from scoredistill.sources.consistency import BoundaryConsistency
from scoredistill.sources.critic import make_critic
from scoredistill.teachers.analytic import GaussianMixtureTeacher
from scoredistill.train.consistency import ConsistencyLoopConfig, train_consistency

MU, C = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.3
D64 = torch.float64


def _gaussian(mu: torch.Tensor = MU) -> GaussianMixtureTeacher:
    return GaussianMixtureTeacher(mu[None].numpy(), np.ones(1), stds=np.array([C]), schedule="edm")


class AffineStudent(torch.nn.Module):
    """``f(x_t, t) = m + a x_t / sigma_t``; one step from ``sigma_T z`` gives ``m + a z``."""

    dim = 2

    def __init__(self, m: torch.Tensor = MU, a: float = C):
        super().__init__()
        self.schedule = _gaussian().schedule
        self.m = torch.nn.Parameter(m.clone())
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=D64))

    def times(self, steps: int) -> list[float]:  # BoundaryConsistency's sampler grid
        return [float(t) for t in time_grid(self.schedule, steps + 1)[:-1]]

    def forward(self, x_t, t, cond=None):
        sigma = self.schedule.alpha_sigma(t.to(x_t.dtype))[1][:, None]
        return self.m + self.a * x_t / sigma


def _net_student() -> BoundaryConsistency:
    torch.manual_seed(0)
    student = BoundaryConsistency(2, _gaussian().schedule, 0.9, hidden=16, depth=2).double()
    torch.nn.init.normal_(student.net.out.weight, std=0.1)  # the output layer starts at zero
    return student


def _data(n: int, seed: int = 0) -> torch.Tensor:
    return MU + C * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=D64)


def _loss(obj: HyperSD, student, x0, seed: int, step: int, **kw):
    target = copy.deepcopy(student).requires_grad_(False)
    return obj.loss(x0, None, student=student, target=target, teacher=_gaussian(),
                    rng=torch.Generator().manual_seed(seed), step=step, **kw)  # fmt: skip


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


# ------------------------------------------------------------------------------ the sampler
def test_denoised_at_the_last_step_is_the_students_own_sampler() -> None:
    student, z = _net_student(), torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    for steps in (1, 2, 4):
        got = denoised_at_step(student, z.double(), None, steps=steps, stop=steps - 1,
                               rng=torch.Generator().manual_seed(2))  # fmt: skip
        with torch.no_grad():
            ref = student.sample(z.double(), steps=steps, rng=torch.Generator().manual_seed(2))
        assert torch.equal(got.detach(), ref)
    with pytest.raises(ValueError, match="stop must lie"):
        denoised_at_step(student, z.double(), None, steps=2, stop=2, rng=torch.Generator())


# ------------------------------------------------------------------------------ DMD stage
def _law_of(student: AffineStudent) -> GaussianMixtureTeacher:
    """The exact critic: the denoiser of the student's one-step law ``N(m, a^2 I)``."""
    m, a = student.m.detach(), abs(student.a.item())
    return GaussianMixtureTeacher(m[None].numpy(), np.ones(1), stds=np.array([a]), schedule="edm")


def test_dmd_term_vanishes_at_the_truth_with_the_exact_critic() -> None:
    obj, x0 = HyperSD(segments=(1,), dmd_weight=1.0), _data(256, 3)
    student = AffineStudent()  # its one-step law is the teacher's
    loss = _loss(obj, student, x0, 4, 0, critic=_law_of(student))
    assert loss.logs["dmd_loss"] == 0.0 and loss.logs["g_abs"] == 0.0
    tscd = _loss(HyperSD(segments=(1,)), AffineStudent(), x0, 4, 0)
    assert loss.value.item() == tscd.value.item()


def test_dmd_term_pulls_a_shifted_student_back_with_the_exact_critic() -> None:
    # equal covariances: D_fake - D_real = (m - mu) sigma^2 / (alpha^2 c^2 + sigma^2) at every
    # x_t, so every sample's g points along the shift, and so does dL/dm = mean_b g_b
    shift = torch.tensor([0.5, -0.25], dtype=D64)
    student, obj = AffineStudent(m=MU + shift), HyperSD(dmd_weight=1.0)
    rng = torch.Generator().manual_seed(5)
    x = obj.one_step(student, 512, None, rng, D64)
    dmd = obj.dmd.generator_loss(x, None, teacher=_gaussian(), critic=_law_of(student), rng=rng)
    dmd.value.backward()
    assert (student.m.grad * shift > 0).all()  # descent moves m toward mu
    assert dmd.logs["g_abs"] > 1e-3


def test_dmd_term_is_dmds_generator_loss_on_the_one_step_sample() -> None:
    # same draws: TSCD's, then z for the one-step sample, then DMD's (t, eps)
    x0, critic = _data(32, 5), _gaussian(MU + 0.2)
    obj = HyperSD(segments=(1,), dmd_weight=0.7, dmd=DMD(eps=1e-5))
    student = _net_student()
    got = _loss(obj, student, x0, 6, 0, critic=critic)
    got.value.backward()
    got_grads = _grads(student)

    ref_student, rng = _net_student(), torch.Generator().manual_seed(6)
    target = copy.deepcopy(ref_student).requires_grad_(False)
    tscd = HyperSD(segments=(1,)).loss(x0, None, student=ref_student, target=target,
                                       teacher=_gaussian(), rng=rng, step=0)  # fmt: skip
    z = torch.randn(32, 2, generator=rng, dtype=D64)
    x = denoised_at_step(ref_student, z, None, steps=1, stop=0, rng=rng)
    dmd = obj.dmd.generator_loss(x, None, teacher=_gaussian(), critic=critic, rng=rng)
    (tscd.value + 0.7 * dmd.value).backward()
    assert got.logs["dmd_loss"] == dmd.value.item() and dmd.value.item() > 0
    for g, r in zip(got_grads, _grads(ref_student), strict=True):
        assert torch.allclose(g, r, rtol=0, atol=1e-15)  # the same float64 graph


def test_dmd_stage_starts_with_the_last_stage_and_draws_nothing_before() -> None:
    obj = HyperSD(dmd_weight=1.0)
    assert obj.last_stage_start == 750 and obj.needs_critic
    assert not obj.uses_critic(749) and obj.uses_critic(750)
    assert HyperSD(dmd_weight=1.0, dmd_start=1200).uses_critic(1200)
    assert not HyperSD().needs_critic and not HyperSD().uses_critic(10**6)
    x0, critic = _data(16, 7), make_critic(2, schedule="edm", hidden=8, depth=1).double()
    before = _loss(obj, _net_student(), x0, 8, 749, critic=critic)
    plain = _loss(HyperSD(), _net_student(), x0, 8, 749)
    assert "dmd_loss" not in before.logs and before.value.item() == plain.value.item()


# ------------------------------------------------------------------------------ ReFL stage
def test_the_exact_reward_is_the_gaussian_log_density() -> None:
    x = _data(64, 9).requires_grad_(True)
    r = teacher_log_prob(_gaussian())(x, None)
    closed = -((x - MU) ** 2).sum(1) / (2 * C**2) - math.log(2 * math.pi * C**2)
    assert torch.allclose(r, closed, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(r.sum(), x)
    assert torch.allclose(grad, -(x - MU) / C**2, rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match=re.escape("objective.reward_weight")):
        teacher_log_prob(object())


@pytest.mark.parametrize("margin", [None, 1e6])
def test_refl_gradient_is_the_closed_form_score_through_the_student(margin) -> None:
    # margin 1e6 lies above every reward: the hinge is active everywhere, -r up to a constant
    n, obj, reward = 48, ReFL(margin=margin), teacher_log_prob(_gaussian())
    student = _net_student()
    loss = obj.loss(student, n, None, reward=reward, rng=torch.Generator().manual_seed(10),
                    dtype=D64)  # fmt: skip
    loss.value.backward()
    got = _grads(student)

    ref, rng = _net_student(), torch.Generator().manual_seed(10)
    late = int(torch.randint(obj.late_steps, (1,), generator=rng))
    assert obj.steps - 1 - late == loss.logs["refl_step"]
    z = torch.randn(n, 2, generator=rng, dtype=D64)
    x = denoised_at_step(ref, z, None, steps=obj.steps, stop=loss.logs["refl_step"], rng=rng)
    v = (x.detach() - MU) / (C**2 * n)  # d(-mean log p)/dx, by hand
    expect = torch.autograd.grad(x, list(ref.parameters()), grad_outputs=v)
    for g, e in zip(got, expect, strict=True):
        assert torch.allclose(g, e, rtol=1e-10, atol=1e-14)  # float64, different summation


def test_refl_hinge_switches_off_above_the_margin() -> None:
    student = _net_student()
    loss = ReFL(margin=-1e6).loss(student, 16, None, reward=teacher_log_prob(_gaussian()),
                                  rng=torch.Generator().manual_seed(11), dtype=D64)  # fmt: skip
    loss.value.backward()
    assert loss.value.item() == 0.0 and all(p.grad.abs().sum() == 0 for p in student.parameters())
    with pytest.raises(ConfigError, match=re.escape("objective.refl.late_steps")):
        ReFL(steps=2, late_steps=3)


def test_reward_stage_adds_weight_times_refl_after_tscd() -> None:
    x0, w = _data(32, 12), 1e-2
    obj = HyperSD(segments=(2, 1), stage_steps=(5,), reward_weight=w)
    assert not obj.uses_reward(4) and obj.uses_reward(5)
    got = _loss(obj, _net_student(), x0, 13, 5)
    ref_student, rng = _net_student(), torch.Generator().manual_seed(13)
    target = copy.deepcopy(ref_student).requires_grad_(False)
    tscd = HyperSD(segments=(2, 1), stage_steps=(5,)).loss(
        x0, None, student=ref_student, target=target, teacher=_gaussian(), rng=rng, step=5
    )
    refl = obj.refl.loss(ref_student, 32, None, reward=teacher_log_prob(_gaussian()), rng=rng,
                         dtype=D64)  # fmt: skip
    assert got.value.item() == pytest.approx((tscd.value + w * refl.value).item(), rel=1e-15)
    assert got.logs["reward"] == refl.logs["reward"]


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("batch", [1, 32])
def test_hypersd_stages_contract(batch: int) -> None:
    obj = HyperSD(segments=(2, 1), stage_steps=(1,), dmd_weight=1.0, reward_weight=1e-3)
    student, critic = _net_student(), make_critic(2, schedule="edm", hidden=8, depth=1).double()
    x0 = _data(batch, 14)
    first = _loss(obj, student, x0, 0, 3, critic=critic)
    assert torch.isfinite(first.value) and {"dmd_loss", "reward"} <= set(first.logs)
    assert _loss(obj, _net_student(), x0, 0, 3, critic=critic).value.item() == first.value.item()
    first.value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    assert all(p.grad is None for p in critic.parameters())  # the student's loss: student only
    student.zero_grad(set_to_none=True)
    c = obj.critic_loss(x0, None, student=student, critic=critic,
                        rng=torch.Generator().manual_seed(1), index=0)  # fmt: skip
    c.value.backward()
    assert torch.isfinite(c.value)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in critic.parameters())
    assert all(p.grad is None for p in student.parameters())  # the critic's loss: critic only


def test_loop_trains_the_dmd_critic_only_in_the_last_stage(tmp_path: Path) -> None:
    cfg = ConsistencyLoopConfig(steps=4, batch_size=16, checkpoint_every=4, eval_every=0,
                                log_every=1, critic_updates=2)  # fmt: skip
    obj = HyperSD(segments=(2, 1), stage_steps=(2,), dmd_weight=1.0, reward_weight=1e-3)
    torch.manual_seed(1)
    critic = make_critic(2, schedule="edm", hidden=8, depth=1)
    untouched = copy.deepcopy(critic)
    torch.manual_seed(0)
    student = BoundaryConsistency(2, _gaussian().schedule, 0.9, hidden=16, depth=2)

    def data(n, rng):
        return (MU + C * torch.randn(n, 2, generator=rng, dtype=D64)).float(), None

    train_consistency(cfg, objective=obj, student=student, teacher=_gaussian(), sample_data=data,
                      evaluate=lambda m: {}, out_dir=tmp_path, critic=critic)  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert ["dmd_loss" in r for r in rows] == [False, False, True, True]
    assert all("critic_loss" in r for r in rows[2:]) and all("reward" in r for r in rows[2:])
    pairs = zip(critic.parameters(), untouched.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)


def test_hypersd_stage_presets_resolve_and_leave_hypersd_as_it_was() -> None:
    fam = FAMILIES["distill-consistency"]
    base = fam.resolve("hypersd-ring8", []).extra
    assert (base.dmd_weight, base.reward_weight, base.needs_critic) == (0.0, 0.0, False)
    dmd = fam.resolve("hypersd-dmd-ring8", [])
    assert dmd.extra.dmd_weight == 1.0 and dmd.extra.needs_critic
    assert dmd.config.train.critic_updates == 4 and dmd.extra.segments == base.segments
    assert dmd.config.student.sample_steps == 1  # the one-step stage's model
    reward = fam.resolve("hypersd-reward-ring8", []).extra
    assert reward.reward_weight == 1e-3 and reward.refl.margin == 2.0 and not reward.needs_critic
    with pytest.raises(ConfigError, match=re.escape("objective.refl.no_such_key")):
        fam.resolve("hypersd-reward-ring8", ["objective.refl.no_such_key=1"])


@pytest.mark.parametrize("testbed", ["ring8", "cond2d", "gmm64", "digits"])
def test_a_stage_preset_is_hypersd_plus_its_stage_on_every_testbed(testbed: str) -> None:
    fam = FAMILIES["distill-consistency"]
    base = fam.resolve(f"hypersd-{testbed}", [])
    for stage, key in (("dmd", "dmd_weight"), ("reward", "reward_weight")):
        staged = fam.resolve(f"hypersd-{stage}-{testbed}", [])
        assert staged.config.testbed == testbed
        assert staged.config.student.hidden == base.config.student.hidden
        assert staged.config.train.steps == base.config.train.steps
        names = [f.name for f in dataclasses.fields(base.extra)]
        changed = {n for n in names if getattr(base.extra, n) != getattr(staged.extra, n)}
        assert changed == {key}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["hypersd-dmd-ring8", "hypersd-reward-ring8"])
def test_quick_stage_runs_reach_their_stage(tmp_path: Path, preset: str) -> None:
    from scoredistill.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--preset", preset, "--quick", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_steps"]) == {"1", "2", "3", "4"}
    assert ("critic_init" in metrics) == (preset == "hypersd-dmd-ring8")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    key = "dmd_loss" if preset == "hypersd-dmd-ring8" else "reward"
    assert any(key in row for row in rows)
