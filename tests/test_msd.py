"""MSD (sources/multi_student.py): K one-step students routed by class, trained with DMD2.

- Partition: K blocks of consecutive classes; routing: each row's output is the owning student's
  own output on that row.
- K = 1 is the plain ``OneStepGenerator`` that the same seed builds (outputs and gradients).
- One DMD generator step: only students owning a class of the batch get gradients, and each
  student's gradient is DMD's gradient computed by hand on its rows alone (its own batch mean).
- Config: K above the class count, K on an unconditional testbed, K with a few-step student,
  a student width without students: ``ConfigError`` naming ``generator.students`` (or the key).
"""

from __future__ import annotations

import copy

import pytest
import torch

from scoredistill.config import ConfigError
from scoredistill.objectives import DMD
from scoredistill.runs.distill import FAMILY, GeneratorConfig, resolve, run_distill
from scoredistill.runs.distill_generator import make_generator
from scoredistill.schedules import get_schedule
from scoredistill.sources.generators import OneStepGenerator
from scoredistill.sources.multi_student import MultiStudent, multi_student, partition
from scoredistill.teachers.analytic import GaussianMixtureTeacher
from scoredistill.teachers.testbeds import get_testbed

F64 = torch.float64


def _students(k: int, classes: int, seed: int = 0) -> MultiStudent:
    torch.manual_seed(seed)
    return multi_student(2, students=k, num_classes=classes, hidden=16, depth=2).double()


# ------------------------------------------------------------------------- routing
def test_partition_is_consecutive_blocks_covering_every_class_once():
    assert partition(10, 4) == ((0, 1, 2), (3, 4, 5), (6, 7), (8, 9))
    assert partition(2, 2) == ((0,), (1,))
    assert partition(3, 1) == ((0, 1, 2),)
    with pytest.raises(ValueError, match="students=3"):
        partition(2, 3)


@pytest.mark.parametrize(("k", "classes"), [(2, 2), (4, 10), (3, 5)])
def test_each_row_comes_from_the_student_owning_its_class(k, classes):
    gen = _students(k, classes)
    rng = torch.Generator().manual_seed(1)
    z = gen.sample_latent(64, rng, dtype=F64)
    c = torch.randint(classes, (64,), generator=rng)
    with torch.no_grad():
        x = gen(z, c)
        for j, block in enumerate(gen.blocks):
            rows = torch.isin(c, torch.tensor(block))
            assert bool((gen.owner(c)[rows] == j).all())
            # the same student on its rows alone, as a batch of its own: row-wise MLP, so equal
            # to float64 rounding (the routed call sees the same rows in the same order)
            torch.testing.assert_close(x[rows], gen.students[j](z[rows], c[rows]))
            others = [s for i, s in enumerate(gen.students) if i != j]
            assert all((s(z[rows], c[rows]) - x[rows]).abs().max() > 1e-3 for s in others)
    with pytest.raises(ValueError, match="null label"):
        gen(z[:2], torch.tensor([0, -1]))


def test_one_student_is_the_plain_one_step_generator_of_the_same_seed():
    torch.manual_seed(3)
    plain = OneStepGenerator(2, hidden=16, depth=2, num_classes=3)
    gen = _students(1, 3, seed=3).float()
    assert list(gen.students[0].state_dict()) == list(plain.state_dict())
    for a, b in zip(
        gen.students[0].state_dict().values(), plain.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    z_gen = gen.sample_latent(32, torch.Generator().manual_seed(4))
    z = plain.sample_latent(32, torch.Generator().manual_seed(4))
    assert torch.equal(z_gen, z)
    c = torch.randint(3, (32,), generator=torch.Generator().manual_seed(5))
    x_gen, x = gen(z, c), plain(z, c)
    assert torch.equal(x_gen, x)  # one student takes the whole batch as given: bit for bit
    x_gen.pow(2).sum().backward()
    x.pow(2).sum().backward()
    for p, q in zip(gen.students[0].parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)  # the per-student rescale is B / B = 1 exactly


# ------------------------------------------------------------------------- one DMD step
def _pair(classes: int):
    """Exact class-conditional mixtures on edm: the teacher, and a shifted 'fake' critic."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(2 * classes, 2, generator=g, dtype=F64) * 2
    labels = torch.arange(classes).repeat_interleave(2)
    kw = {"labels": labels, "schedule": "edm"}
    teacher = GaussianMixtureTeacher(means, torch.ones(2 * classes), stds=[0.3] * 2 * classes, **kw)
    critic = GaussianMixtureTeacher(
        means + 0.4, torch.ones(2 * classes), stds=[0.5] * 2 * classes, **kw
    )
    return teacher, critic


def _dmd_grad_by_hand(student, z, c, u, eps, teacher, critic):
    """DMD2's generator gradient for one student on its own rows (objectives/dmd.py docstring):
    ``g = (D_fake - D_real) / mean|x - D_real|``, ``dL/dx = g / B_k``, the same (t, eps)."""
    sched = get_schedule("edm")
    x = student(z, c)
    t = sched.t_min + (sched.t_max - sched.t_min) * u  # t_reference edm on edm: no mapping
    alpha, sigma = sched.alpha_sigma(t)
    x_t = alpha[:, None] * x.detach() + sigma[:, None] * eps
    d_real, d_fake = teacher.denoise(x_t, t, c), critic.denoise(x_t, t, c)
    w = (x.detach() - d_real).abs().mean(1, keepdim=True)
    (x * ((d_fake - d_real) / w)).sum().div(len(x)).backward()
    return [p.grad for p in student.parameters()]


def test_dmd_step_trains_only_present_students_each_on_its_own_rows():
    classes, n = 5, 48  # blocks (0, 1), (2, 3), (4,); the batch holds classes 0, 1 and 4 only
    teacher, critic = _pair(classes)
    gen = _students(3, classes)
    before = copy.deepcopy(gen)
    rng = torch.Generator().manual_seed(7)
    z = gen.sample_latent(n, rng, dtype=F64)
    c = torch.tensor([0, 1, 4])[torch.randint(3, (n,), generator=rng)]
    obj = DMD(t_reference="edm")  # DMD2's defaults: t fractions (0.02, 0.98), w per sample
    loss = obj.generator_loss(gen(z, c), c, teacher=teacher, critic=critic, rng=_rng(9))
    loss.value.backward()
    assert all(p.grad is None for p in gen.students[1].parameters())  # owns 2, 3: absent
    # the objective's draws, in its order over the whole batch: u ~ U(0.02, 0.98), then eps
    draw = _rng(9)
    u = torch.rand(n, generator=draw, dtype=F64) * 0.96 + 0.02
    eps = torch.randn(n, 2, generator=draw, dtype=F64)
    for j in (0, 2):
        rows = torch.isin(c, torch.tensor(gen.blocks[j]))
        assert 0 < int(rows.sum()) < n
        alone = copy.deepcopy(before.students[j])
        want = _dmd_grad_by_hand(alone, z[rows], c[rows], u[rows], eps[rows], teacher, critic)
        got = [p.grad for p in gen.students[j].parameters()]
        assert sum(float(g.abs().sum()) for g in got) > 0
        for a, b in zip(
            got, want, strict=True
        ):  # float64, the same operations up to summation order
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------- config and run
@pytest.mark.parametrize(
    ("preset", "sets", "needle"),
    [
        ("msd-cond2d", ["generator.students=3"], "generator.students=3 exceeds .* 2 classes"),
        ("dmd2-ring8", ["generator.students=2"], "generator.students=2 .* unconditional"),
        ("msd-cond2d", ["generator.kind=few_step"], "generator.students=2 needs .*one_step"),
        ("dmd2-cond2d", ["generator.student_hidden=64"], "generator.student_hidden needs"),
    ],
)
def test_bad_student_settings_fail_at_resolve_naming_the_key(preset, sets, needle):
    resolve(preset, sets)  # the typed config alone is fine: the testbed decides
    with pytest.raises(ConfigError, match=needle):
        FAMILY.resolve(preset, sets)


def test_smaller_students_and_the_preset_build():
    cond2d = get_testbed("cond2d")
    torch.manual_seed(0)
    gen = make_generator(GeneratorConfig(students=2, student_hidden=64), cond2d)
    assert isinstance(gen, MultiStudent) and gen.blocks == ((0,), (1,))
    assert [s.hidden for s in gen.students] == [64, 64]
    cfg, _ = resolve("msd-cond2d", [])
    assert cfg.method == "dmd" and cfg.generator.students == 2
    assert resolve("msd-digits", [])[0].generator.students == 4  # the paper's K


@pytest.mark.slow  # ~10-18 s on the shared 2-core CPU: the report's teacher sampler table
def test_msd_runs_end_to_end_in_the_distill_family(tmp_path):
    tiny = ["train.steps=2", "train.batch_size=64", "train.eval_every=0", "critic.init_steps=2",
            "critic.init_batch=64", "train.eval_samples=200", "train.critic_updates=1"]  # fmt: skip
    cfg, objective = resolve("msd-cond2d", tiny)
    metrics = run_distill(cfg, objective, tmp_path)
    assert metrics["nfe"] == 1 and 0.0 <= metrics["class_acc"] <= 1.0
    assert (tmp_path / "samples.npz").exists() and (tmp_path / "report.md").exists()
