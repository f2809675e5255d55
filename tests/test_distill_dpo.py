"""Distillation-DPO (objectives/distill_dpo.py, runs/systems/dpo.py): closed-form checks.

The denoisers here are hand-written isotropic Gaussians, ``x ~ N(mu_b, lam I)`` per row:
``D(x_t) = mu + alpha lam / (alpha^2 lam + sigma^2) (x_t - alpha mu)`` (independent of the
library's mixture code); they record the ``(x_t, t)`` they are asked about, so the expected
update can be recomputed from the same noise.
"""

from __future__ import annotations

import json

import pytest
import torch

from scoredistill.config import ConfigError
from scoredistill.objectives.distill_dpo import DistillDPO, official_surrogate, preference_pair
from scoredistill.objectives.dmd import DMD
from scoredistill.schedules import get_schedule

SCHED = get_schedule("edm")


class Gaussian:
    """Exact denoiser of ``N(mu, lam I)`` (``mu: (B, D)``); records its calls."""

    def __init__(self, mu: torch.Tensor, lam: float) -> None:
        self.mu, self.lam, self.schedule, self.calls = mu, lam, SCHED, []

    def denoise(self, x_t, t, cond=None):
        self.calls.append((x_t.clone(), t.clone()))
        a, s = (v[:, None] for v in SCHED.alpha_sigma(t))
        return self.mu + a * self.lam / (a**2 * self.lam + s**2) * (x_t - a * self.mu)


def _setup(seed: int = 0, b: int = 6, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=g, dtype=torch.float64)
    teacher = Gaussian(mu, 0.3)
    crit_w = Gaussian(mu + 0.2, 0.1)  # winners: shifted and tighter than the teacher
    crit_l = Gaussian(mu - 0.3, 0.8)  # losers: shifted the other way and wider
    x_w = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    x_l = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    return teacher, crit_w, crit_l, x_w, x_l


def test_preference_pair_picks_the_row_with_lower_squared_error():
    g = torch.Generator().manual_seed(1)
    x1, x2, y = (torch.randn(50, 7, generator=g) for _ in range(3))
    x_w, x_l, first = preference_pair(x1, x2, y)
    for i in range(50):  # independent per-row loop
        e1, e2 = float(((x1[i] - y[i]) ** 2).sum()), float(((x2[i] - y[i]) ** 2).sum())
        want_w, want_l = (x1[i], x2[i]) if e1 <= e2 else (x2[i], x1[i])
        assert torch.equal(x_w[i], want_w) and torch.equal(x_l[i], want_l)
        assert bool(first[i]) == (e1 <= e2)
    assert 0 < int(first.sum()) < 50  # both branches were exercised


def test_official_surrogate_carries_no_gradient_to_the_generator():
    """The recorded departure: the official loss multiplies no-grad eps differences by
    ``x_t - x = sigma eps``, which is constant in ``x``, so its gradient is exactly zero even
    though the score differences are not."""
    teacher, crit_w, crit_l, x_w, x_l = _setup()
    t = torch.full((6,), 0.3, dtype=torch.float64)
    eps = torch.randn(6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    loss = official_surrogate(
        x_w, x_l, None, t, eps, teacher=teacher, critic_w=crit_w, critic_l=crit_l
    )
    loss.backward()
    assert loss.item() != 0.0  # the score differences are far from zero
    assert torch.count_nonzero(x_w.grad) == 0 and torch.count_nonzero(x_l.grad) == 0


@pytest.mark.parametrize("loser_weight", [1.0, 0.5])
def test_generator_gradient_is_winner_dmd_minus_loser_dmd(loser_weight):
    """``dL/dx^w = g_w / B``, ``dL/dx^l = -loser_weight g_l / B`` with DMD2's per-sample
    normaliser, one shared ``t`` and ``eps`` for the pair (the official generator step)."""
    teacher, crit_w, crit_l, x_w, x_l = _setup()
    obj = DistillDPO(dmd=DMD(t_range=(0.1, 0.9)), loser_weight=loser_weight)
    obj.generator_loss(
        x_w,
        x_l,
        None,
        teacher=teacher,
        critic_w=crit_w,
        critic_l=crit_l,
        rng=torch.Generator().manual_seed(3),
    ).value.backward()
    (x_wt, t), (x_lt, t_l) = crit_w.calls[0], crit_l.calls[0]
    assert torch.equal(t, t_l)
    a, s = (v[:, None] for v in SCHED.alpha_sigma(t))
    eps = (x_wt - a * x_w.detach()) / s
    torch.testing.assert_close((x_lt - a * x_l.detach()) / s, eps)  # shared noise
    assert eps.std().item() == pytest.approx(1.0, abs=0.35)  # a standard normal draw, 30 values

    def expected(x, x_t, crit):
        d_real, d_fake = Gaussian(teacher.mu, 0.3).denoise(x_t, t), crit.denoise(x_t, t)
        w = (x.detach() - d_real).abs().mean(1, keepdim=True)
        return (d_fake - d_real) / w / x.shape[0]

    torch.testing.assert_close(x_w.grad, expected(x_w, x_wt, crit_w))
    torch.testing.assert_close(x_l.grad, -loser_weight * expected(x_l, x_lt, crit_l))


def test_update_vanishes_when_both_critics_equal_the_teacher():
    teacher, _, _, x_w, x_l = _setup()
    obj = DistillDPO()
    obj.generator_loss(
        x_w,
        x_l,
        None,
        teacher=teacher,
        critic_w=teacher,
        critic_l=teacher,
        rng=torch.Generator().manual_seed(4),
    ).value.backward()
    assert torch.count_nonzero(x_w.grad) == 0 and torch.count_nonzero(x_l.grad) == 0


def test_negative_loser_weight_is_refused():
    with pytest.raises(ValueError, match="loser_weight"):
        DistillDPO(loser_weight=-1.0)
    from scoredistill.runs.systems import _resolve

    with pytest.raises(ConfigError, match="loser_weight"):
        _resolve("dpo-completion", ["loser_weight=-1"])


# ---------------------------------------------------------------------- the system's pieces
@pytest.fixture(scope="module")
def task():
    from scoredistill.runs.systems.dpo import make_task

    return make_task(0)


def test_cached_conditioner_equals_the_library_conditioning(task):
    from scoredistill.teachers.conditional_mixture import condition_on_coordinates

    c, _ = task.draw(40, torch.Generator().manual_seed(5))
    fast = task.law(c)
    slow = condition_on_coordinates(task.truth, torch.arange(32), c)
    # float64 solves of 32x32 systems with condition numbers up to ~1e3: 1e-9 is ~1e4 ulp
    torch.testing.assert_close(fast.log_weights, slow.log_weights, atol=1e-9, rtol=0)
    torch.testing.assert_close(fast.means, slow.means, atol=1e-9, rtol=0)
    assert task.law(c) is fast  # the repeated question is answered from the cache


def test_critic_and_generator_start_at_the_teacher(task):
    from scoredistill.runs.systems.dpo import HALF
    from scoredistill.sources.float_cond import (
        FloatCondDenoiserNet,
        FloatCondGenerator,
        TeacherResidualDenoiser,
    )

    g = torch.Generator().manual_seed(6)
    c, y = task.draw(16, g)
    critic = TeacherResidualDenoiser(task.teacher, FloatCondDenoiserNet(HALF, HALF, hidden=16))
    t = torch.full((16,), 0.4)
    x_t = y + 0.5 * torch.randn(16, HALF, generator=g)
    torch.testing.assert_close(critic.denoise(x_t, t, c), task.teacher.denoise(x_t, t, c).float())
    gen = FloatCondGenerator(HALF, HALF, hidden=16, base=task.teacher, sigma_init=2.5)
    z = torch.randn(16, HALF, generator=g)
    t0 = torch.full((16,), gen.t_init)
    a, s = SCHED.alpha_sigma(t0)
    assert (s / a)[0].item() == pytest.approx(2.5, rel=1e-6)  # bisection to float64 precision
    torch.testing.assert_close(gen(z, c), task.teacher.denoise(a[:, None] * 2.5 * z, t0, c).float())


def test_cli_quick_run_writes_the_claim_metrics(tmp_path):
    from scoredistill.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--preset", "dpo-completion", "--quick", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for who in ("dpo", "dmd", "exact", "mean"):
        for key in ("mse", "logp", "mmd2", "spread"):
            assert isinstance(metrics[f"{who}_{key}"], float), (who, key)
    assert {"mse_gain", "mmd2_cost", "dpo_mse_curve", "wall_s"} <= set(metrics)
    # the exact conditional mean has the least possible squared error: a property of the truth
    assert metrics["mean_mse"] < metrics["exact_mse"]
    assert "| Distillation-DPO" in (out / "report.md").read_text()
