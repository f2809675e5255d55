"""The ``distill`` family's networks: ``GeneratorConfig``, its checks against the testbed, the
student it builds (one-step MLP, few-step with optional phase experts, conv, or MSD's students),
and the fresh critic (``make_distill_critic``, before its DSM fit).

``init="teacher"`` starts the student from the teacher's weights, as DMD2, SiD and FastGen do. An
exact teacher has no weights, so its stand-in is the critic's DSM fit to the teacher
(``sources.critic``: the critic starts there for the same reason): the student is a copy of that
fitted network, evaluated once at the VE level ``sigma_init`` (``TeacherInitGenerator``) or at the
few-step grid (``FewStepGenerator.from_teacher``). MSD's K students start the same way, one copy
each (``teacher_init_students``); smaller ones, which no copy fits, are first fitted to the
teacher by MSD's teacher score matching (``build_teacher_init``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from torch import nn

from ..config import ConfigError, NonNegativeInt, PositiveFloat, PositiveInt

__all__ = [
    "GeneratorConfig",
    "build_teacher_init",
    "check_generator",
    "critic_sigma_data",
    "make_distill_critic",
    "make_generator",
    "teacher_init_generator",
    "teacher_init_students",
]

DMD2_SIGMA_MAX = 80.0  # DMD2's EDM runs: the one-step student's input is sigma_max z


@dataclass(frozen=True)
class GeneratorConfig:
    kind: Literal["one_step", "few_step", "conv"] = "one_step"  # conv: image testbeds only
    steps: PositiveInt = 4  # few_step: student NFE K (DMD2's 4-step SDXL schedule)
    experts: PositiveInt = 1  # few_step: one network per phase of steps/experts (Phased DMD)
    # one_step, conditional testbeds: one student per block of consecutive classes (MSD)
    students: PositiveInt = 1
    student_hidden: NonNegativeInt = 0  # MSD: each student's width; 0 = hidden (same-sized)
    hidden: PositiveInt = 256
    depth: PositiveInt = 3
    channels: PositiveInt = 32  # conv: feature maps (~0.1 s per 256-batch step on 2 cores at 8x8)
    blocks: NonNegativeInt = 2  # conv: residual blocks
    # "teacher": a copy of the critic's DSM fit to the teacher (module docstring); "scratch": fresh
    init: Literal["scratch", "teacher"] = "scratch"
    # the student's first input's VE level sigma/alpha. None: DMD2's choice, sigma_max -- the
    # one-step teacher copy is fed 80 z (tianweiy/DMD2 main/edm: conditioning_sigma 80), the
    # few-step grid starts at t_max (t = 999); SiD uses 2.5 (reference note b4). Used by
    # init=teacher one_step and by every few_step student (its grid then starts at that level)
    sigma_init: PositiveFloat | None = None
    # few_step: the student's VE levels sigma/alpha, one per step, decreasing (replaces the grid
    # from sigma_init). DMD2's SDXL steps [999, 749, 499, 249] sit at sigma/alpha = 14.6, 4.08,
    # 1.61, 0.69 on SD's table: the last step still removes noise of the data's scale
    sigmas: tuple[PositiveFloat, ...] | None = None
    # one_step init=teacher: latent dimensions beyond the data's, fed through a zero-initialised
    # layer into the copy's first hidden layer (TeacherInitGenerator; a higher-dimensional latent
    # can hold disconnected modes apart with less mass between them). 0: z has the data's dim
    latent_extra: NonNegativeInt = 0
    # students > 1 with init=teacher and student_hidden > 0: MSD's teacher score matching steps
    # fitting each smaller student (a fresh critic-shaped denoiser of width student_hidden) to the
    # teacher's denoiser on its own classes before it becomes a one-step generator
    # (teacher_init_students); 0 skips the stage (the paper's ablation: a random small denoiser)
    tsm_steps: NonNegativeInt = 400


def check_generator(g: GeneratorConfig, testbed) -> None:
    """Raise ``ConfigError`` naming the key when ``g`` cannot be built on ``testbed``."""
    if g.experts > 1 and (g.kind != "few_step" or g.steps % g.experts):
        raise ConfigError("generator.experts > 1 needs kind=few_step and steps a multiple of it")
    if g.kind == "conv" and testbed.image_shape is None:
        raise ConfigError(f"generator.kind=conv needs an image testbed; {testbed.name} is not")
    classes = testbed.truth.num_classes
    if g.students > 1 and g.kind != "one_step":
        raise ConfigError(f"generator.students={g.students} needs generator.kind=one_step")
    if g.students > 1 and classes == 0:
        raise ConfigError(
            f"generator.students={g.students} routes by class; testbed {testbed.name} is "
            f"unconditional (use a conditional one, e.g. cond2d or digits, or students=1)"
        )
    if g.students > max(classes, 1):
        raise ConfigError(
            f"generator.students={g.students} exceeds testbed {testbed.name}'s {classes} classes "
            f"(each student owns at least one class; valid: 1..{classes})"
        )
    if g.init == "teacher" and g.kind == "conv":
        raise ConfigError(
            "generator.init=teacher copies the critic's MLP denoiser: it needs generator.kind "
            "one_step (one copy per MSD student) or few_step (one copy per expert), not conv"
        )
    if g.sigma_init is not None and not (
        g.kind == "few_step" or (g.kind == "one_step" and g.init == "teacher")
    ):
        raise ConfigError(
            "generator.sigma_init sets the first input's noise level of a teacher-initialised "
            f"one-step or a few-step student (got kind={g.kind}, init={g.init}); a fresh "
            "one-step MLP has no noise input"
        )
    if g.sigmas is not None:
        if g.kind != "few_step" or g.sigma_init is not None:
            raise ConfigError(
                "generator.sigmas sets a few-step student's levels and replaces sigma_init "
                f"(got kind={g.kind}, sigma_init={g.sigma_init})"
            )
        if len(g.sigmas) != g.steps or list(g.sigmas) != sorted(set(g.sigmas), reverse=True):
            raise ConfigError(
                f"generator.sigmas must hold generator.steps={g.steps} strictly decreasing "
                f"levels, got {list(g.sigmas)}"
            )
        try:
            _grid(g, testbed.teacher.schedule)
        except ValueError as err:
            raise ConfigError(f"generator.sigmas: {err}") from None
    if g.latent_extra and not (g.kind == "one_step" and g.init == "teacher" and g.students == 1):
        raise ConfigError(
            "generator.latent_extra adds latent dimensions to one teacher-initialised one-step "
            f"student (got kind={g.kind}, init={g.init}, students={g.students})"
        )
    if g.student_hidden and g.students == 1:
        raise ConfigError("generator.student_hidden needs generator.students > 1 (else set hidden)")


def _grid(g: GeneratorConfig, schedule) -> dict:
    """The few-step student's grid keyword: explicit times from ``sigmas``, else ``sigma_init``."""
    from ..sources.generators import times_at_ve_levels

    if g.sigmas is not None:
        return {"ts": times_at_ve_levels(schedule, g.sigmas)}
    return {"sigma_init": g.sigma_init} if g.sigma_init else {}


def make_generator(g: GeneratorConfig, testbed) -> nn.Module:
    """A fresh student for ``testbed`` from torch's global RNG (after ``check_generator``)."""
    from ..sources.conv import ConvGenerator
    from ..sources.experts import phased_student
    from ..sources.generators import FewStepGenerator, OneStepGenerator
    from ..sources.multi_student import multi_student

    check_generator(g, testbed)
    k = testbed.truth.num_classes
    if g.kind == "few_step":
        make = (
            FewStepGenerator.from_mlp
            if g.experts == 1
            else partial(phased_student, experts=g.experts)
        )
        sched = testbed.teacher.schedule
        return make(
            testbed.dim, sched, steps=g.steps, hidden=g.hidden, depth=g.depth, num_classes=k,
            **_grid(g, sched),
        )  # fmt: skip
    if g.kind == "conv":
        return ConvGenerator(
            testbed.image_shape, channels=g.channels, blocks=g.blocks, num_classes=k
        )
    if g.students > 1:
        hidden = g.student_hidden or g.hidden
        return multi_student(
            testbed.dim, students=g.students, num_classes=k, hidden=hidden, depth=g.depth
        )
    return OneStepGenerator(testbed.dim, hidden=g.hidden, depth=g.depth, num_classes=k)


def teacher_init_generator(g: GeneratorConfig, fitted: nn.Module) -> nn.Module:
    """The student as a trainable copy of ``fitted`` (the critic after its DSM fit to the
    teacher, a ``NeuralDenoiser``), without the critic's discriminator head (module docstring)."""
    import copy

    from ..sources.experts import phased_experts
    from ..sources.generators import FewStepGenerator, TeacherInitGenerator

    base = copy.deepcopy(fitted).requires_grad_(True).train()  # the one copy
    base.head = None  # DMD2's GAN head belongs to the critic
    if g.kind == "few_step" and g.experts > 1:  # Phased DMD: each expert starts as the teacher
        nets = [base, *(copy.deepcopy(base) for _ in range(g.experts - 1))]
        return phased_experts(nets, steps=g.steps, **_grid(g, base.schedule))
    if g.kind == "few_step":
        return FewStepGenerator(base, steps=g.steps, **_grid(g, base.schedule))  # base as given
    # copies once more (its own contract)
    sigma = DMD2_SIGMA_MAX if g.sigma_init is None else g.sigma_init
    return TeacherInitGenerator(base, sigma, latent_extra=g.latent_extra)


def teacher_init_students(
    g: GeneratorConfig, fitted: nn.Module, small: Callable[[tuple[int, ...]], nn.Module]
) -> nn.Module:
    """MSD's students from the teacher (``init=teacher``, ``students > 1``): a ``MultiStudent``
    whose student k is a one-step ``TeacherInitGenerator`` over

    - a copy of ``fitted`` (the critic's DSM fit, the teacher's stand-in) when same-sized
      (``student_hidden = 0``), as the paper's same-sized students start from the teacher;
    - ``small(block_k)`` otherwise: a smaller denoiser, which ``runs.distill`` fits to the teacher
      on block k's classes by teacher score matching (``train.dsm.teacher_score_matching``).

    Each student is fed ``sigma_init z`` as the single teacher-initialised student is."""
    import copy

    from ..sources.generators import TeacherInitGenerator
    from ..sources.multi_student import MultiStudent, partition

    classes = int(getattr(fitted, "num_classes", 0))
    sigma = DMD2_SIGMA_MAX if g.sigma_init is None else g.sigma_init
    nets = []
    for block in partition(classes, g.students):
        base = copy.deepcopy(fitted) if not g.student_hidden else small(block)
        base.head = None  # DMD2's GAN head belongs to the critic
        nets.append(TeacherInitGenerator(base, sigma))
    return MultiStudent(nets, classes)


def build_teacher_init(
    g: GeneratorConfig, c: Any, testbed, fitted: nn.Module, seed: int, fit: bool = True
) -> nn.Module:
    """The ``init=teacher`` student: ``teacher_init_generator`` for one student, else MSD's
    ``teacher_init_students``, whose smaller students are fresh critic-shaped denoisers (``c``,
    a ``CriticConfig``, at width ``student_hidden``) fitted by ``tsm_steps`` of teacher score
    matching on their own classes (``fit=False``: unfitted, for ``--dry-run``'s counts)."""
    from dataclasses import replace

    from ..train.dsm import teacher_score_matching

    if g.students == 1:
        return teacher_init_generator(g, fitted)

    def small(block: tuple[int, ...]) -> nn.Module:
        net = make_distill_critic(replace(c, hidden=g.student_hidden), testbed)
        if fit and g.tsm_steps:
            teacher_score_matching(
                net, testbed.teacher, _block_sampler(testbed.truth, block),
                steps=g.tsm_steps, batch_size=c.init_batch, lr=c.init_lr,
                seed=seed + 1 + block[0], progress=True,
            )  # fmt: skip
        return net

    return teacher_init_students(g, fitted, small)


def _block_sampler(truth, block: tuple[int, ...]):
    """``(n, rng) -> (x, labels)``: exact samples of ``truth`` with labels drawn from its class
    prior restricted to ``block``."""
    import torch

    from ..eval.baseline import class_prior

    prior, owned = class_prior(truth), torch.tensor(block)

    def sample(n: int, rng):
        labels = owned[torch.multinomial(prior[owned], n, replacement=True, generator=rng)]
        return truth.sample(n, rng=rng, cond=labels), labels

    return sample


def critic_sigma_data(c: Any, testbed) -> float:
    """``critic.sigma_data`` (a ``CriticConfig``'s), or (None) the testbed mixture's exact
    per-dimension data std."""
    from ..teachers.trigflow import mixture_sigma_data

    return c.sigma_data if c.sigma_data is not None else mixture_sigma_data(testbed.truth)


def make_distill_critic(c: Any, testbed, gan_head: bool = False) -> nn.Module:
    """The fresh MLP critic of ``c`` (a ``CriticConfig``) on ``testbed`` (torch's global RNG),
    with DMD2's GAN logit head when ``gan_head``; ``runs.distill`` fits it to the teacher."""
    from ..sources.critic import make_critic

    critic = make_critic(
        testbed.dim,
        schedule=testbed.teacher.schedule,
        num_classes=testbed.truth.num_classes,
        hidden=c.hidden,
        depth=c.depth,
        sigma_data=critic_sigma_data(c, testbed),
    )
    if gan_head:
        critic.attach_logit_head(c.hidden)
    return critic
