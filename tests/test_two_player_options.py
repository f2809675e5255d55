"""Two-player loop options: the cosine learning-rate schedule (a function of the step alone) and
which sample of a few-step student the players see."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scoredistill.errors import UserError
from scoredistill.objectives.dmd import DMD
from scoredistill.sources.critic import make_critic
from scoredistill.sources.generators import OneStepGenerator
from scoredistill.teachers.testbeds import get_testbed
from scoredistill.train.common import ResumeError, cosine_factor
from scoredistill.train.run_folder import check_resume_config
from scoredistill.train.two_player import TwoPlayerConfig, train_two_player


def test_cosine_factor_is_sgdr_without_restarts():
    assert cosine_factor(0, 8) == 1.0
    assert cosine_factor(4, 8) == pytest.approx(0.5, abs=1e-15)
    assert cosine_factor(8, 8) == pytest.approx(0.0, abs=1e-15)
    assert cosine_factor(2, 8) == pytest.approx((1 + math.sqrt(0.5)) / 2, rel=1e-12)
    assert cosine_factor(12, 8) == pytest.approx(0.0, abs=1e-15)  # past the end: stays at 0


def _train(out: Path, steps: int, schedule: str, resume: bool = False) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    testbed = get_testbed("ring8")
    gen = OneStepGenerator(2, hidden=16, depth=1)
    critic = make_critic(2, schedule=testbed.teacher.schedule, hidden=16, depth=1)
    cfg = TwoPlayerConfig(
        steps=steps, batch_size=8, critic_updates=1, eval_every=0, log_every=1,
        checkpoint_every=2, lr_generator=1e-3, lr_critic=4e-3, lr_schedule=schedule,
    )  # fmt: skip
    train_two_player(
        cfg, objective=DMD(), generator=gen, critic=critic, teacher=testbed.teacher,
        sample_latent=lambda n, rng: gen.sample_latent(n, rng), sample_cond=None,
        evaluate=lambda g: {}, out_dir=out, resume=resume,
    )  # fmt: skip
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_loop_logs_the_scheduled_generator_rate(tmp_path: Path, schedule: str):
    logs = _train(tmp_path, 4, schedule)
    factor = [cosine_factor(s, 4) if schedule == "cosine" else 1.0 for s in range(4)]
    assert [row["lr_generator"] for row in logs] == pytest.approx([1e-3 * f for f in factor])


def test_a_cosine_run_resumes_on_its_curve_and_refuses_other_steps(tmp_path: Path):
    whole = _train(tmp_path / "whole", 4, "cosine")
    _train(tmp_path / "cut", 2, "cosine")  # a run whose config said 2 steps cannot grow to 4
    with pytest.raises(ResumeError, match=r"steps cannot change from 2 to 4 \(lr_schedule=cosine"):
        _train(tmp_path / "cut", 4, "cosine", resume=True)
    part = tmp_path / "part"
    _train(part, 4, "cosine")
    ckpt = part / "checkpoints"
    (ckpt / "latest.json").write_text(json.dumps({"step": 2, "path": "step-2"}))
    resumed = _train(part, 4, "cosine", resume=True)  # from step 2, the same curve and losses
    assert [r["lr_generator"] for r in resumed] == [r["lr_generator"] for r in whole]
    assert [r["generator_loss"] for r in resumed] == [r["generator_loss"] for r in whole]


def test_the_cli_config_check_ties_steps_to_a_cosine_schedule(tmp_path: Path):
    stored = {"method": "dmd", "train": {"steps": 4, "lr_schedule": "cosine"}}
    (tmp_path / "config.json").write_text(json.dumps(stored))
    new = {"method": "dmd", "train": {"steps": 8, "lr_schedule": "cosine"}}
    with pytest.raises(UserError, match=r'from 4 to 8 with train\.lr_schedule="cosine"'):
        check_resume_config(tmp_path, new)
    (tmp_path / "config.json").write_text(json.dumps({**stored, "train": {"steps": 4}}))
    check_resume_config(tmp_path, {"method": "dmd", "train": {"steps": 8}})  # constant: fine


@pytest.mark.parametrize(("mode", "with_grad"), [("random_step", 1), ("last_step", 3)])
def test_few_step_sample_sets_how_many_student_calls_carry_the_gradient(tmp_path, mode, with_grad):
    """DMD2's backward simulation differentiates one of the K calls per generator update;
    last_step differentiates all K, and every critic sample is then the full K-step output."""
    from scoredistill.sources.generators import FewStepGenerator

    torch.manual_seed(0)
    testbed = get_testbed("ring8")
    gen = FewStepGenerator.from_mlp(2, testbed.teacher.schedule, steps=3, hidden=16, depth=1)
    calls: list[tuple[bool, float]] = []
    inner = gen.denoiser.forward

    def counting(x_t, t, cond=None):
        calls.append((torch.is_grad_enabled(), float(t[0])))
        return inner(x_t, t, cond)

    gen.denoiser.forward = counting
    critic = make_critic(2, schedule=testbed.teacher.schedule, hidden=16, depth=1)
    cfg = TwoPlayerConfig(
        steps=2, batch_size=8, critic_updates=2, eval_every=0, log_every=1,
        few_step_sample=mode, seed=3,
    )  # fmt: skip
    train_two_player(
        cfg, objective=DMD(), generator=gen, critic=critic, teacher=testbed.teacher,
        sample_latent=lambda n, rng: gen.sample_latent(n, rng), sample_cond=None,
        evaluate=lambda g: {}, out_dir=tmp_path,
    )  # fmt: skip
    graded = [t for grad, t in calls if grad]
    assert len(graded) == 2 * with_grad  # two generator updates
    if mode == "last_step":
        assert len(calls) == 2 * (2 + 1) * 3  # every sample (2 critic + 1 generator) is 3 calls
        assert graded[:3] == pytest.approx(list(gen.ts))  # in the grid's order
