"""Consistency distillation (CD, sCM): closed forms, fixed points, contracts, the run family.

The fixed points use a single Gaussian ``N(mu, c^2 I)``, whose exact consistency function is
written by hand (the PF-ODE map of a Gaussian is affine; see tests/test_pf_ode.py):

    VE view (x = x_t / alpha, s = sigma / alpha):  f*(x, s) = mu + (x - mu) c / sqrt(c^2 + s^2)
    TrigFlow (x_hat = cos(theta) x):  f* = mu + (x_hat - mu cos) c / sqrt(c^2 cos^2 + s_d^2 sin^2)
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from scoredistill.cli import main
from scoredistill.config import ConfigError
from scoredistill.objectives.cd import CD
from scoredistill.objectives.scm import SCM, scm_tangent, student_jvp
from scoredistill.runs import FAMILIES, family_of
from scoredistill.sources.consistency import (
    BoundaryConsistency,
    TrigFlowStudent,
    trigflow_angles,
)
from scoredistill.teachers.analytic import GaussianMixtureTeacher
from scoredistill.teachers.trigflow import trigflow_velocity
from scoredistill.train.consistency import ConsistencyLoopConfig, train_consistency

MU, C, SD = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.3, 0.9
D64 = torch.float64


def _gaussian(schedule: str = "edm") -> GaussianMixtureTeacher:
    return GaussianMixtureTeacher(
        MU[None].numpy(), np.ones(1), stds=np.array([C]), schedule=schedule
    )


class ExactTrigFlow:
    """The exact sCM network ``F`` of the Gaussian: ``F = (cos x_hat - f*) / (sigma_d sin)``."""

    sigma_data = SD

    def F(self, x_hat, theta, cond=None):
        cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        f = MU + (x_hat - MU * cos) * C / torch.sqrt(C**2 * cos**2 + SD**2 * sin**2)
        return (cos * x_hat - f) / (SD * sin)

    def logvar(self, theta):
        return torch.zeros_like(theta)


def _exact_cd(x_t, t, cond=None):
    alpha, sigma = _gaussian().schedule.alpha_sigma(t)
    s = (sigma / alpha)[:, None]
    return MU + (x_t / alpha[:, None] - MU) * C / torch.sqrt(C**2 + s**2)


def _data(n: int, seed: int = 0) -> torch.Tensor:
    return MU + C * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=D64)


# ------------------------------------------------------------------------------ JVP
def _random_student(dtype=D64) -> TrigFlowStudent:
    torch.manual_seed(0)
    student = TrigFlowStudent(2, SD, hidden=32, depth=3).to(dtype)
    torch.nn.init.normal_(student.net.out.weight, std=0.3)  # the output layer starts at zero
    return student


def test_jvp_matches_finite_differences() -> None:
    student = _random_student()
    rng = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, generator=rng, dtype=D64)
    theta = torch.rand(16, generator=rng, dtype=D64) * 1.4 + 0.05
    v_x, v_t = (
        torch.randn(16, 2, generator=rng, dtype=D64),
        torch.rand(16, generator=rng, dtype=D64),
    )
    forward = student_jvp(student, x, theta, v_x, v_t)
    h = 1e-6  # central difference: truncation ~h^2 |F'''| ~ 1e-12, rounding ~1e-16 / h ~ 1e-10
    up = student.F(x + h * v_x, theta + h * v_t)
    down = student.F(x - h * v_x, theta - h * v_t)
    assert (forward - (up - down) / (2 * h)).abs().max().item() < 1e-7
    # the fallback is a central difference: its error falls 4x when its step halves
    errs = [
        (forward - student_jvp(student, x, theta, v_x, v_t, mode="finite-diff", eps=e))
        .abs().max().item()
        for e in (2e-3, 1e-3)
    ]  # fmt: skip
    assert 3.0 < errs[0] / errs[1] < 5.0


def test_jvp_without_forward_mode_names_the_fallback() -> None:
    class NoForward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    class Student:
        def F(self, x, theta, cond=None):
            return NoForward.apply(x) * theta[:, None]

    x, theta = torch.ones(3, 2), torch.ones(3)
    with pytest.raises(ConfigError, match=re.escape("objective.jvp=finite-diff")):
        student_jvp(Student(), x, theta, x, theta)
    fd = student_jvp(Student(), x, theta, x, theta, mode="finite-diff")
    assert torch.allclose(fd, torch.full((3, 2), 4.0), atol=1e-4)  # d(2 x theta) = 2 v + 2 x


# ------------------------------------------------------------------------------ fixed points
def test_scm_tangent_and_loss_vanish_at_the_exact_consistency_function() -> None:
    teacher, exact = _gaussian(), ExactTrigFlow()
    rng = torch.Generator().manual_seed(2)
    x0 = _data(256, 3)
    theta = torch.rand(256, generator=rng, dtype=D64) * 1.5 + 0.02
    x_hat = torch.cos(theta)[:, None] * x0 + torch.sin(theta)[:, None] * SD * torch.randn(
        256, 2, generator=rng, dtype=D64
    )
    dxdt = trigflow_velocity(teacher, x_hat, theta, SD)
    v_t = torch.cos(theta) * torch.sin(theta)
    F = exact.F(x_hat, theta)
    jvp = student_jvp(exact, x_hat, theta, v_t[:, None] * dxdt, v_t)
    g = scm_tangent(F, jvp, x_hat, dxdt, theta, SD, r=1.0)
    assert g.abs().max().item() < 1e-10  # g = cos(theta) df*/dtheta = 0 along the flow
    wrong = scm_tangent(F + 0.1, jvp, x_hat, dxdt, theta, SD, r=1.0)
    assert wrong.abs().max().item() > 1e-3
    loss = SCM(tangent_warmup_steps=0).loss(
        x0, None, student=exact, teacher=teacher, rng=rng, step=0
    )
    assert abs(loss.value.item()) < 1e-18 and loss.logs["r"] == 1.0


def test_cd_loss_vanishes_at_the_exact_consistency_function() -> None:
    teacher = _gaussian()
    x0 = _data(64, 4)
    exact = CD(grid=20, skip=2, solver="exact").loss(
        x0, None, student=_exact_cd, target=_exact_cd, teacher=teacher,
        rng=torch.Generator().manual_seed(5),
    )  # fmt: skip
    assert exact.value.item() < 1e-16  # the exact map has only solver error (1e-9)^2

    def ddim_loss(grid: int) -> float:
        obj = CD(grid=grid, skip=1)
        x = _data(8192, 6)
        rng = torch.Generator().manual_seed(7)
        return obj.loss(
            x, None, student=_exact_cd, target=_exact_cd, teacher=teacher, rng=rng
        ).value.item()

    # DDIM's local error is O(h^2), so the squared distance falls ~16x when the grid doubles
    coarse, fine = ddim_loss(40), ddim_loss(80)
    assert 0 < fine < coarse / 8


# ------------------------------------------------------------------------------ students
def test_students_satisfy_the_boundary_condition() -> None:
    torch.manual_seed(0)
    trig = TrigFlowStudent(2, SD, hidden=16, depth=2)
    torch.nn.init.normal_(trig.net.out.weight)
    x = torch.randn(8, 2)
    assert torch.allclose(trig(x, torch.zeros(8), None), x)
    cd = BoundaryConsistency(2, _gaussian().schedule, SD, hidden=16, depth=2)
    torch.nn.init.normal_(cd.net.out.weight)
    t_min = torch.full((8,), cd.schedule.t_min)
    assert torch.allclose(cd(x, t_min), x, atol=1e-6)


def test_two_step_trigflow_sampling_renoises_at_the_intermediate_angle() -> None:
    assert trigflow_angles(2, 0.5) == [math.atan(160.0), 1.1]
    assert trigflow_angles(4, 0.5)[1:] == [1.3, 1.0, 0.6]
    with pytest.raises(ValueError, match="angles"):
        trigflow_angles(2, 0.5, mid=[2.0])


# ------------------------------------------------------------------------------ contracts
def _student_for(name: str):
    torch.manual_seed(0)
    if name == "cd":
        return BoundaryConsistency(2, _gaussian().schedule, SD, hidden=16, depth=2)
    return TrigFlowStudent(2, SD, hidden=16, depth=2)


@pytest.mark.parametrize("name", ["cd", "scm"])
@pytest.mark.parametrize("batch", [1, 32])
def test_objective_contract(name: str, batch: int) -> None:
    objective = CD(grid=40, skip=4) if name == "cd" else SCM(tangent_warmup_steps=10)
    student = _student_for(name)
    torch.nn.init.normal_(student.net.out.weight, std=0.1)
    target = copy.deepcopy(student).requires_grad_(False)
    x0 = _data(batch, 8).float()

    def loss(seed: int):
        rng = torch.Generator().manual_seed(seed)
        return objective.loss(x0, None, student=student, target=target, teacher=_gaussian(),
                              rng=rng, step=5)  # fmt: skip

    first = loss(0)
    assert torch.isfinite(first.value) and first.value.dim() == 0
    assert loss(0).value.item() == first.value.item()  # seeded: the same rng, the same loss
    first.value.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in target.parameters())  # the target gets none


# ------------------------------------------------------------------------------ loop and run
def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    cfg = ConsistencyLoopConfig(
        steps=6, batch_size=16, checkpoint_every=3, eval_every=0, log_every=1
    )
    objective = CD(grid=40, skip=4)
    teacher = _gaussian()

    def data(n, rng):
        return (MU + C * torch.randn(n, 2, generator=rng, dtype=D64)).float(), None

    def train(out: Path, steps: int, resume: bool):
        student = _student_for("cd")
        run_cfg = ConsistencyLoopConfig(**{**cfg.__dict__, "steps": steps})
        result = train_consistency(
            run_cfg, objective=objective, student=student, teacher=teacher, sample_data=data,
            evaluate=lambda m: {}, out_dir=out, resume=resume,
        )  # fmt: skip
        return result["ema"]

    straight = train(tmp_path / "a", 6, False)
    train(tmp_path / "b", 3, False)
    resumed = train(tmp_path / "b", 6, True)
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_family_is_registered_and_bad_input_names_the_key() -> None:
    assert family_of("distill", "scm-ring8").name == "distill-consistency"
    assert family_of("distill", "dmd2-ring8").name == "distill"
    fam = FAMILIES["distill-consistency"]
    assert {"cd-ring8", "scm-ring8"} <= set(fam.presets)
    assert fam.resolve("scm-ring8", []).config.student.sample_steps == 2
    with pytest.raises(ConfigError, match=re.escape("objective.skip")):
        fam.resolve("cd-ring8", ["objective.skip=30"])  # 1000 is not a multiple of 30
    with pytest.raises(ConfigError, match=re.escape("objective.no_such_key")):
        fam.resolve("scm-ring8", ["objective.no_such_key=1"])
    with pytest.raises(ConfigError, match=re.escape("student.widht")):
        fam.resolve("scm-ring8", ["student.widht=3"])


def test_cli_rejects_a_bad_skip_with_exit_2(capsys) -> None:
    args = ["distill", "--preset", "cd-ring8", "--set", "objective.skip=7", "--out", "x"]
    assert main(args) == 2
    assert "objective.skip" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_cli_run_writes_the_contract_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["distill", "--preset", "scm-ring8", "--quick", "--seed", "1", "--out", str(out)]
    assert main(args) == 0
    for name in ("config.json", "metrics.json", "metrics.jsonl", "report.md", "samples.npz"):
        assert (out / name).is_file(), name
    x = np.load(out / "samples.npz")["x"]
    assert x.ndim == 2 and x.shape[1] == 2 and np.isfinite(x).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_steps"]) == {"1", "2", "3", "4"} and metrics["nfe"] == 2
    assert all(v["student"] >= 0 for v in metrics["consistency"].values())
    assert "teacher's best" in (out / "report.md").read_text()
    assert (out / "checkpoints" / "latest.json").is_file()


def test_trigflow_student_is_finite_at_float32_half_pi() -> None:
    """float32(pi/2) rounds *above* pi/2, where tan is a huge negative number: the student reads
    its magnitude, so the top angle gives what the angle one ulp below it gives, not NaN."""
    torch.manual_seed(0)
    student = TrigFlowStudent(2, 0.5)
    theta = torch.full((4,), math.pi / 2, dtype=torch.float32)
    assert float(theta[0].double()) > math.pi / 2  # the premise
    below = torch.nextafter(theta, torch.zeros_like(theta))
    x = torch.randn(4, 2)
    with torch.no_grad():
        out, u = student(x, theta), student.logvar(theta)
        assert torch.isfinite(out).all() and torch.isfinite(u).all()
        assert torch.allclose(out, student(x, below), atol=1e-6)
        assert torch.equal(u, student.logvar(below))


# --------------------------------------------------------- presets on cond2d, gmm64, digits
NEW_TESTBEDS = {"cond2d": (2, 2), "gmm64": (64, 0), "digits": (64, 10)}  # (dim, classes)


@pytest.mark.parametrize("method", ["cd", "scm", "rcm", "hypersd", "sana-sprint"])
def test_presets_cover_cond2d_gmm64_digits(method: str) -> None:
    """Every method has a preset on each testbed; the 64-D students are twice as wide, except
    ``scm-``, ``rcm-`` and ``hypersd-gmm64`` / ``-digits`` and ``sana-sprint-digits`` (stops
    32-33: hidden 256 for twice the steps, the same CPU; presets ``_TUNED``)."""
    fam = FAMILIES["distill-consistency"]
    for testbed, (dim, _) in NEW_TESTBEDS.items():
        cfg = fam.resolve(f"{method}-{testbed}", []).config
        assert cfg.testbed == testbed
        tuned = method in ("scm", "rcm", "hypersd") and testbed in ("gmm64", "digits")
        tuned |= f"{method}-{testbed}" == "sana-sprint-digits"
        assert cfg.student.hidden == (512 if dim == 64 and not tuned else 256)
        assert cfg.train.steps == (3000 if tuned else 1500 if dim == 64 else 2000)
    assert fam.resolve(f"{method}-ring8", []).config.student.hidden == 256  # unchanged


# the quick run trimmed further: 5 updates, one teacher cell, one consistency level; the run's
# wiring (labels, 64-D students, the report) is what is checked, in seconds
_TRIM = [
    "train.steps=5",
    "train.eval_samples=200",
    "eval.steps=[1,2]",
    "eval.levels=[0.5]",
    "eval.consistency_samples=8",
    'eval.teacher_samplers=["ddim"]',
    "eval.teacher_nfe=[2]",
]


def _trimmed_run(preset: str, out: Path) -> int:
    sets = [a for s in _TRIM for a in ("--set", s)]
    return main(["distill", "--preset", preset, "--quick", *sets, "--out", str(out)])


# cond2d is slow-marked: its 2-D path is ring8's, its labels are digits' (the 15 s test budget)
@pytest.mark.parametrize(
    "testbed", ["digits", "gmm64", pytest.param("cond2d", marks=pytest.mark.slow)]
)
def test_quick_run_on_each_new_testbed(testbed: str, tmp_path: Path) -> None:
    dim, classes = NEW_TESTBEDS[testbed]
    out = tmp_path / "run"
    assert _trimmed_run(f"scm-{testbed}", out) == 0
    samples = np.load(out / "samples.npz")
    assert samples["x"].shape == (200, dim) and np.isfinite(samples["x"]).all()
    if classes:  # labels from the class prior: 200 draws of 10 near-equal classes miss one
        # with probability < 10 * 0.9^200 ~ 1e-8
        assert samples["labels"].shape == (200,)
        assert set(samples["labels"].tolist()) == set(range(classes))
    else:
        assert "labels" not in samples
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_steps"]) == {"1", "2"} and metrics["nfe"] == 2
    assert "teacher's best" in (out / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset", ["cd-cond2d", "cd-gmm64", "cd-digits", "rcm-digits", "sana-sprint-gmm64",
               "hypersd-cond2d"],
)  # fmt: skip
def test_quick_run_of_the_other_methods_on_new_testbeds(preset: str, tmp_path: Path) -> None:
    """CD's student (``BoundaryConsistency``), rCM's and SANA-Sprint's critics and Hyper-SD's
    stages (quick: every stage runs) on the same wiring."""
    out = tmp_path / "run"
    assert _trimmed_run(preset, out) == 0
    x = np.load(out / "samples.npz")["x"]
    dim = NEW_TESTBEDS[preset.rsplit("-", 1)[1]][0]
    assert x.shape == (200, dim) and np.isfinite(x).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(np.isfinite(v["mmd"]) for v in metrics["by_steps"].values())
