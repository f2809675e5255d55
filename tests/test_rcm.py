"""rCM (sCM + DMD on backward-simulated student samples): closed forms, limits, contracts, loop.

The oracle is the single Gaussian ``N(mu, c^2 I)`` of ``tests/test_consistency.py``, whose exact
TrigFlow consistency function is written by hand:

    f*(x_hat, theta) = mu + (x_hat - mu cos) c / sqrt(c^2 cos^2 + s_d^2 sin^2)
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from scoredistill.objectives import CONSISTENCY_OBJECTIVES, RCM, SCM
from scoredistill.objectives.rcm import sample_p_d
from scoredistill.runs import FAMILIES
from scoredistill.sources.consistency import TrigFlowStudent
from scoredistill.sources.critic import make_critic
from scoredistill.teachers.analytic import GaussianMixtureTeacher
from scoredistill.train.consistency import ConsistencyLoopConfig, train_consistency

MU, C, SD = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.3, 0.9
D64 = torch.float64


def _gaussian(mu: torch.Tensor = MU) -> GaussianMixtureTeacher:
    return GaussianMixtureTeacher(mu[None].numpy(), np.ones(1), stds=np.array([C]), schedule="edm")


class ExactStudent(torch.nn.Module):
    """The exact TrigFlow consistency function of the Gaussian, with sCM's ``F`` and ``u = 0``."""

    sigma_data, dim = SD, 2

    def forward(self, x_hat, theta, cond=None):
        cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        return MU + (x_hat - MU * cos) * C / torch.sqrt(C**2 * cos**2 + SD**2 * sin**2)

    def F(self, x_hat, theta, cond=None):
        cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        return (cos * x_hat - self(x_hat, theta, cond)) / (SD * sin)

    def logvar(self, theta):
        return torch.zeros_like(theta)


def _student() -> TrigFlowStudent:
    torch.manual_seed(0)
    student = TrigFlowStudent(2, SD, hidden=16, depth=2)
    torch.nn.init.normal_(student.net.out.weight, std=0.1)  # the output layer starts at zero
    return student


def _critic():
    torch.manual_seed(1)
    critic = make_critic(2, schedule="edm", hidden=16, depth=2)
    torch.nn.init.normal_(critic.net.out.weight, std=0.1)
    return critic


def _data(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (MU + C * torch.randn(n, 2, generator=g, dtype=D64)).to(dtype)


# ------------------------------------------------------------------------------ closed forms
def test_p_d_is_rcms_shifted_rectified_flow_time() -> None:
    n, shift = 40_000, 5.0
    theta = sample_p_d(n, shift, torch.Generator().manual_seed(0))
    assert theta.dtype == D64 and theta.min() >= 0 and theta.max() < math.pi / 2
    for u in (0.1, 0.3, 0.5, 0.8):  # P(theta <= theta(u)) = u: theta is monotone in u
        s = shift * u / (1 + (shift - 1) * u)
        frac = (theta <= math.atan(s / (1 - s))).double().mean().item()
        assert abs(frac - u) < 4 * math.sqrt(u * (1 - u) / n)  # 4 binomial standard errors


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_backward_simulation_of_the_exact_consistency_function_draws_the_data(steps) -> None:
    # sigma_max = 1e4: the start sigma_d z is the marginal at theta_max up to cos ~ 1e-4
    n, obj = 20_000, RCM(sigma_max=1e4)
    with torch.no_grad():
        x = obj.simulate(ExactStudent(), n, None, steps, torch.Generator().manual_seed(3), D64)
    se_mean, se_std = C / math.sqrt(n), C / math.sqrt(2 * n)  # Gaussian standard errors
    assert (x.mean(0) - MU).abs().max().item() < 4 * se_mean
    assert (x.std(0) - C).abs().max().item() < 4 * se_std


def test_both_terms_vanish_at_the_exact_student_with_the_exact_critic() -> None:
    # the student's law is the data's, so the exact fake score is the teacher's: g = 0 exactly
    teacher, obj = _gaussian(), RCM(scm=SCM(tangent_warmup_steps=0), dmd_start=0)
    rng = torch.Generator().manual_seed(4)
    loss = obj.loss(_data(256, 5, D64), None, student=ExactStudent(), teacher=teacher, rng=rng,
                    step=1, critic=teacher)  # fmt: skip
    assert loss.logs["dmd_loss"] == 0.0 and loss.logs["sim_steps"] == 2
    assert abs(loss.value.item()) < 1e-14  # 100 x sCM's ~1e-18 at the exact function
    wrong = obj.loss(_data(256, 5, D64), None, student=ExactStudent(), teacher=teacher, rng=rng,
                     step=1, critic=_gaussian(MU + 0.5))  # fmt: skip
    assert wrong.logs["dmd_loss"] > 1e-3


# ------------------------------------------------------------------------------ limits
def test_with_dmd_weight_zero_rcm_is_scm_exactly() -> None:
    x0, teacher, scm = _data(64, 6), _gaussian(), SCM(tangent_warmup_steps=10)

    def run(objective, **kw):
        student = _student()
        loss = objective.loss(x0, None, student=student, teacher=teacher,
                              rng=torch.Generator().manual_seed(7), step=20, **kw)  # fmt: skip
        loss.value.backward()
        return loss, [p.grad for p in student.parameters()]

    ref, ref_grads = run(scm)
    critic = _critic()
    for weight in (1.0, 100.0):
        rcm = RCM(scm=scm, scm_weight=weight, dmd_weight=0.0)
        got, grads = run(rcm, critic=critic)
        assert "dmd_loss" in got.logs  # the DMD term ran, weighted by zero
        assert got.value.item() == weight * ref.value.item()
        for g, r in zip(grads, ref_grads, strict=True):
            if weight == 1.0:
                assert torch.equal(g, r)
            else:  # the scale enters before the float32 backward: rounding only (eps 1.2e-7)
                assert torch.allclose(g, weight * r, rtol=1e-5, atol=1e-7 * weight)
    assert all(p.grad is None for p in critic.parameters())
    rcm_on, _ = run(RCM(scm=scm, scm_weight=1.0), critic=critic)  # the term does add something
    assert rcm_on.value.item() > ref.value.item()


def test_the_dmd_term_and_the_critic_wait_for_the_tangent_warm_up() -> None:
    obj = RCM(scm=SCM(tangent_warmup_steps=30))
    assert not obj.uses_critic(29) and obj.uses_critic(30)
    assert RCM(dmd_start=0).uses_critic(0)
    loss = obj.loss(_data(8), None, student=_student(), teacher=_gaussian(),
                    rng=torch.Generator().manual_seed(0), step=29, critic=_critic())  # fmt: skip
    assert "dmd_loss" not in loss.logs


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("batch", [1, 32])
def test_rcm_contract(batch: int) -> None:
    obj, teacher = RCM(dmd_start=0), _gaussian()
    student, critic = _student(), _critic()
    x0 = _data(batch, 8)

    def student_loss(seed: int, step: int = 5):
        return obj.loss(x0, None, student=student, teacher=teacher, critic=critic,
                        rng=torch.Generator().manual_seed(seed), step=step)  # fmt: skip

    first = student_loss(0)
    assert torch.isfinite(first.value) and first.value.dim() == 0
    assert student_loss(0).value.item() == first.value.item()  # seeded: same rng, same loss
    first.value.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in critic.parameters())  # the student's loss: student only
    student.zero_grad(set_to_none=True)

    def critic_loss(seed: int, index: int = 3):
        return obj.critic_loss(x0, None, student=student, critic=critic,
                               rng=torch.Generator().manual_seed(seed), index=index)  # fmt: skip

    c = critic_loss(1)
    assert torch.isfinite(c.value) and c.logs["sim_steps"] == 4
    assert critic_loss(1).value.item() == c.value.item()
    c.value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in critic.parameters())
    assert all(p.grad is None for p in student.parameters())  # the critic's loss: critic only


# ------------------------------------------------------------------------------ loop and run
def _train(out: Path, steps: int, resume: bool, dmd_start: int = 2):
    cfg = ConsistencyLoopConfig(
        steps=steps, batch_size=16, checkpoint_every=3, eval_every=0, log_every=1,
        critic_updates=2,
    )  # fmt: skip
    obj = RCM(scm=SCM(tangent_warmup_steps=2), dmd_start=dmd_start, max_student_steps=2)
    student, critic = _student(), _critic()

    def data(n, rng):
        return (MU + C * torch.randn(n, 2, generator=rng, dtype=D64)).float(), None

    result = train_consistency(
        cfg, objective=obj, student=student, teacher=_gaussian(), sample_data=data,
        evaluate=lambda m: {}, out_dir=out, resume=resume, critic=critic,
    )  # fmt: skip
    return result["ema"], critic


def test_loop_trains_the_critic_and_resumes_it(tmp_path: Path) -> None:
    ema, critic = _train(tmp_path / "a", 6, False)
    untouched = _critic()
    pairs = zip(critic.parameters(), untouched.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)
    _, idle = _train(tmp_path / "c", 3, False, dmd_start=10)  # before dmd_start: no critic steps
    pairs = zip(idle.parameters(), untouched.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    _train(tmp_path / "b", 3, False)
    ema_b, critic_b = _train(tmp_path / "b", 6, True)
    for p, q in zip([*ema.parameters(), *critic.parameters()],
                    [*ema_b.parameters(), *critic_b.parameters()], strict=True):  # fmt: skip
        assert torch.equal(p, q)


def test_rcm_presets_resolve() -> None:
    fam = FAMILIES["distill-consistency"]
    assert CONSISTENCY_OBJECTIVES["rcm"] is RCM and {"rcm-ring8", "rcm-grid25"} <= set(fam.presets)
    resolved = fam.resolve("rcm-ring8", [])
    cfg, obj = resolved.config, resolved.extra
    assert cfg.method == "rcm" and cfg.student.sample_steps == 2
    assert (RCM().scm_weight, RCM().dmd_weight) == (100.0, 1.0)  # rCM's loss_scale(_dmd)
    assert obj.scm_weight / obj.dmd_weight == 100.0 and cfg.train.critic_updates == 4
    assert obj.scm.tangent_warmup_steps == 500 and obj.uses_critic(500)
    scm = fam.resolve("scm-ring8", []).config.train  # the student trains as scm-ring8's
    assert (cfg.train.lr, cfg.train.optimizer, cfg.train.steps) == (scm.lr, scm.optimizer, 2000)
    with pytest.raises(Exception, match=re.escape("objective.scm.no_such_key")):
        fam.resolve("rcm-ring8", ["objective.scm.no_such_key=1"])


@pytest.mark.slow
def test_quick_rcm_run_writes_the_contract_files(tmp_path: Path) -> None:
    import json

    from scoredistill.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--preset", "rcm-ring8", "--quick", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"] == 2 and set(metrics["by_steps"]) == {"1", "2", "3", "4"}
    assert metrics["critic_init"]["steps"] == 20
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("dmd_loss" in row and "critic_loss" in row for row in logged)
    assert np.isfinite(np.load(out / "samples.npz")["x"]).all()
