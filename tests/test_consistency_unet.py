"""Consistency distillation of a diffusers teacher (``cd-unet``): LCM's grid, boundary scalings,
teacher solver and sampler checked against diffusers' own ``LCMScheduler``, ``DDIMScheduler`` and
``DDPMScheduler`` (independent code), and the exported stock pipeline against the student.

The teacher is ``conftest.teacher_dir`` (a tiny random class-conditional ``UNet2DModel`` saved by
diffusers); random weights suffice: every check is an identity between two computations."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from scoredistill.cli import main
from scoredistill.objectives.cd import CD, table_times
from scoredistill.sources.diffusers_consistency import LCMConsistency, lcm_inference_timesteps
from scoredistill.teachers.diffusers import load_diffusers_teacher

ATOL = 1e-5  # float32 images in [-1, 1]: the two loops round differently (~10 ulps)


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return load_diffusers_teacher(teacher_dir)


@pytest.fixture(scope="module")
def student(teacher):
    """A student whose weights differ from the teacher's (so a copy mix-up would show)."""
    torch.manual_seed(1)
    s = LCMConsistency(teacher).eval()
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return s


@pytest.mark.parametrize(("n", "m"), [(1000, 50), (1000, 8), (500, 25)])
def test_inference_timesteps_are_lcm_schedulers(n, m):
    from diffusers import LCMScheduler

    sched = LCMScheduler(num_train_timesteps=n, original_inference_steps=m)
    for steps in sorted({1, 2, 3, 4, m}):
        sched.set_timesteps(steps)
        assert lcm_inference_timesteps(n, m, steps) == tuple(sched.timesteps.tolist())
    with pytest.raises(ValueError, match="steps <= original_steps"):
        lcm_inference_timesteps(n, m, m + 1)


def test_table_grid_is_lcms_ddim_solver_pairs(teacher):
    # LCM's DDIMSolver: starts (arange(1, 51) * 20 - 1), targets start - 20 clamped at 0
    cd = CD(spacing="table")
    ts = cd.times(teacher.schedule) * 999
    starts = np.arange(0, 1000, 20)
    got = {(round(float(ts[s])), round(float(ts[s + 20]))) for s in starts}
    want = {(k, max(k - 20, 0)) for k in np.arange(1, 51) * 20 - 1}
    assert got == want
    with pytest.raises(ValueError, match=r"500 table entries.*got n=1000"):
        table_times(teacher.schedule, 500)


@pytest.mark.parametrize(("top", "m"), [(None, 50), (-6.0, 48), (-5.4, 47), (-3.8, 45)])
def test_a_topped_grid_draws_lcm_schedulers_timesteps_below_999(teacher, top, m):
    """``top_log_snr``: the drawn starts are exactly the ``m`` timesteps of
    ``LCMScheduler(num_train_timesteps=20 m, original_inference_steps=m)`` (19, ..., 20 m - 1: the
    table cut after them) with log-SNR >= top in diffusers' own cosine table."""
    from diffusers import DDPMScheduler, LCMScheduler

    cd = CD(spacing="table", top_log_snr=top)
    assert cd.starts(teacher.schedule) == m
    t, t_next, _, _ = cd.draw(torch.zeros(4000, 64), teacher, torch.Generator().manual_seed(0))
    k, k_next = (t * 999).round().long(), (t_next * 999).round().long()
    sched = LCMScheduler(num_train_timesteps=20 * m, original_inference_steps=m)
    sched.set_timesteps(m)
    assert set(k.tolist()) == set(sched.timesteps.tolist())
    assert torch.equal(k_next, (k - 20).clamp(min=0))
    abar = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    lam = torch.log(abar / (1 - abar))
    if top is not None:
        assert float(lam[20 * m - 1]) >= top > float(lam[20 * m + 19])  # the next one up is cut


def test_top_log_snr_cuts_cd_and_scm_grids_alike_and_a_bad_one_is_named(
    teacher_dir, teacher, capsys
):
    from scoredistill.objectives.scm import SCM
    from scoredistill.runs.consistency_unet import ConsistencyUNetConfig, StudentConfig, _grid

    for top, m in ((-5.4, 47), (-3.8, 45)):
        cfg = ConsistencyUNetConfig(student=StudentConfig(top_log_snr=top))
        assert _grid(cfg, CD(spacing="table", top_log_snr=top), teacher) == (m, 20)
        assert _grid(cfg, SCM(), teacher) == (m, 20)
    assert _grid(ConsistencyUNetConfig(), SCM(), teacher) == (50, 20)
    for preset, key in (("cd-unet", "objective.top_log_snr"), ("scm-unet", "student.top_log_snr")):
        args = ["distill", "--preset", preset, "--teacher", teacher_dir, "--out", "unused"]
        assert main([*args, "--dry-run", "--set", f"{key}=9"]) == 2
        assert key in capsys.readouterr().err


def test_draw_noises_like_ddpm_add_noise_and_solve_is_ddim_step(teacher_dir):
    """``x_t`` = ``DDPMScheduler.add_noise`` at the drawn LCM timestep; the solver step = one
    ``DDIMScheduler.step`` of 20 timesteps (50 inference steps), on an unclipped teacher."""
    from diffusers import DDIMScheduler, DDPMScheduler

    teacher = load_diffusers_teacher(teacher_dir)
    teacher.clip_sample = None  # DDIM below does not clip either
    cd, ddpm = CD(spacing="table"), DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    x0 = torch.rand(6, 64) * 2 - 1
    rng = torch.Generator().manual_seed(0)
    t, t_next, x_t, starts = cd.draw(x0, teacher, rng)
    replay = torch.Generator().manual_seed(0)
    assert torch.equal(torch.randint(50, (6,), generator=replay) * 20, starts)
    eps = torch.randn(x0.shape, generator=replay)
    k = (t * 999).round().long()
    assert torch.allclose(x_t, ddpm.add_noise(x0, eps, k), atol=1e-6)
    assert torch.equal((t_next * 999).round().long(), (k - 20).clamp(min=0))
    labels = torch.arange(6)
    ddim = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    ddim.set_timesteps(50)
    with torch.no_grad():
        ours = cd.solve(teacher, x_t, t, t_next, labels)
        eps_hat = teacher.model(x_t.reshape(6, 1, 8, 8), k.float(), class_labels=labels).sample
    for i in torch.nonzero(k >= 39).flatten().tolist():  # k = 19 -> 0 is LCM's own clamp
        ref = ddim.step(eps_hat[i : i + 1], int(k[i]), x_t[i].reshape(1, 1, 8, 8)).prev_sample
        assert torch.allclose(ours[i], ref.flatten(), atol=ATOL)


def test_boundary_scalings_are_lcm_schedulers(student):
    from diffusers import LCMScheduler

    lcm = LCMScheduler(timestep_scaling=10.0)
    k = torch.tensor([0.0, 1.0, 19.0, 499.0, 999.0])
    c_skip, c_out = student.scalings(k)
    for i, ki in enumerate(k.tolist()):
        ref = lcm.get_scalings_for_boundary_condition_discrete(ki)
        assert (float(c_skip[i]), float(c_out[i])) == pytest.approx(ref, rel=1e-12)
    x = torch.randn(3, 64)  # f(x, k = 0) = x exactly: c_skip = 1, c_out = 0
    with torch.no_grad():
        assert torch.equal(student(x, torch.zeros(3), torch.arange(3)), x)


def test_cd_loss_trains_the_student_only(teacher, student):
    s = copy.deepcopy(student).train()
    target = copy.deepcopy(student).requires_grad_(False)
    x0, labels = torch.rand(4, 64) * 2 - 1, torch.arange(4)
    loss = CD(spacing="table").loss(
        x0, labels, student=s, target=target, teacher=teacher, rng=torch.Generator().manual_seed(0)
    )
    loss.value.backward()
    assert torch.isfinite(loss.value) and loss.value > 0
    assert all(p.grad is not None for p in s.parameters() if p.requires_grad)
    assert all(p.grad is None for p in [*teacher.parameters(), *target.parameters()])


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exported_pipeline_reproduces_the_student(teacher, student, tmp_path, steps):
    from diffusers import DiffusionPipeline

    from scoredistill.export_consistency import export_consistency_pipeline

    export_consistency_pipeline(student, teacher, tmp_path)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipeline", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "ConsistencyModelPipeline"
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    labels = torch.tensor([0, 3, 7, 9])
    images = pipe(
        batch_size=4,
        class_labels=labels,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(5),
        output_type="pt",
    ).images
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        x = student.sample(student.sample_latent(4, g), labels, steps=steps, rng=g)
    assert torch.allclose(images, (x.reshape(4, 1, 8, 8) / 2 + 0.5).clamp(0, 1), atol=ATOL)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_a_topped_grid_exports_a_stock_scheduler_that_starts_at_939(
    teacher, student, tmp_path, steps
):
    """47 timesteps 20 apart: the stock pipeline runs the student on 939, ..., 19 (the teacher's
    table cut after 940 entries: same abar at every kept k)."""
    from diffusers import DDPMScheduler, DiffusionPipeline

    from scoredistill.export_consistency import export_consistency_pipeline

    topped = LCMConsistency(teacher, original_steps=47, stride=20).eval()
    topped.load_state_dict(student.state_dict())
    want = {1: (939,), 2: (939, 479), 4: (939, 719, 479, 239)}[steps]
    assert topped.timesteps(steps) == want
    export_consistency_pipeline(topped, teacher, tmp_path)
    assert (
        "cut after 940 entries: the grid tops at 939"
        in (tmp_path / "pipeline/README.md").read_text()
    )
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipeline", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    abar = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod[:940]
    assert torch.allclose(pipe.scheduler.alphas_cumprod, abar)
    labels = torch.tensor([2, 5])
    images = pipe(
        batch_size=2, class_labels=labels, num_inference_steps=steps,
        generator=torch.Generator().manual_seed(3), output_type="pt",
    ).images  # fmt: skip
    assert tuple(pipe.scheduler.timesteps.tolist()) == want
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        x = topped.sample(topped.sample_latent(2, g), labels, steps=steps, rng=g)
    assert torch.allclose(images, (x.reshape(2, 1, 8, 8) / 2 + 0.5).clamp(0, 1), atol=ATOL)
    with pytest.raises(ValueError, match="50 timesteps 21 apart exceeds the teacher's 1000"):
        LCMConsistency(teacher, original_steps=50, stride=21)


def test_dry_run_and_a_bad_grid(teacher_dir, capsys):
    args = ["distill", "--preset", "cd-unet", "--teacher", teacher_dir, "--out", "unused"]
    assert main([*args, "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    params = out["networks"]["params"]
    assert params["student"] == params["teacher (frozen)"] > 1000
    assert out["method"] == "cd" and out["objective"]["spacing"] == "table"
    assert main([*args, "--dry-run", "--set", "objective.grid=500"]) == 2
    assert "objective.grid" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_writes_metrics_and_a_stock_pipeline(teacher_dir, tmp_path):
    from diffusers import DiffusionPipeline

    out = tmp_path / "run"
    args = ["distill", "--preset", "cd-unet", "--teacher", teacher_dir, "--quick"]
    assert main([*args, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"] == 1 and set(metrics["by_steps"]) == {"1", "2", "4"}
    assert all(np.isfinite(m["fd"]) for m in metrics["by_steps"].values())
    assert set(metrics["teacher_best"]) == {"1", "2"}
    assert np.load(out / "samples.npz")["x"].shape == (64, 64)
    for name in ("report.md", "samples.png", "curves.png", "pipeline/README.md"):
        assert (out / name).is_file(), name
    pipe = DiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    images = pipe(batch_size=2, class_labels=[1, 2], num_inference_steps=4, generator=g).images
    assert len(images) == 2 and images[0].size == (8, 8)
