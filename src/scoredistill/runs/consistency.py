"""``scoredistill distill --preset cd-ring8|scm-ring8|rcm-ring8|…``: consistency distillation runs.

A run is a ``ConsistencyConfig`` (method ``cd``, ``hypersd``, ``scm``, ``rcm`` or
``sana_sprint``, testbed, the objective's fields, the loop, the student network, the evaluation).
The student is a consistency function (``sources.consistency``): ``BoundaryConsistency`` on the
teacher's schedule for CD and Hyper-SD, ``TrigFlowStudent`` for sCM, rCM and SANA-Sprint;
``sigma_d`` is the testbed mixture's exact data std unless ``student.sigma_data`` is set. The data
the objectives noise are exact samples of the testbed.
rCM's critic (and Hyper-SD's, with its DMD stage on) is the distill family's MLP denoiser
(``critic.*``), fitted to the teacher by DSM first (``train.dsm.init_critic_from_teacher``: rCM
copies the teacher into its fake score);
SANA-Sprint's discriminator is the same fit, frozen, with a trainable logit head (its stand-in
for heads on the frozen teacher's features; ``objective.train_trunk=true`` trains the fit too).

The run folder: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``metrics.json`` (the
EMA student's metrics at ``student.sample_steps`` at the top level, every step count of
``eval.steps`` under ``by_steps``, the exact consistency error under ``consistency``),
``samples.npz`` (``x: (N, D)`` at ``student.sample_steps``), ``samples.png`` and ``report.md``
(the student's rows inside the teacher's sampler × NFE table).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, PositiveFloat, PositiveInt, to_dict
from ..config import resolve as resolve_config
from ..io import atomic_write_json
from ..objectives import CONSISTENCY_OBJECTIVES
from ..presets.consistency import DESCRIPTIONS, PRESETS, quick
from ..train.common import JsonlLogger
from ..train.consistency import ConsistencyLoopConfig, train_consistency
from .distill import CriticConfig, testbed_resolver
from .family import Family, report_section

__all__ = [
    "FAMILY",
    "METHODS",
    "ConsistencyConfig",
    "EvalConfig",
    "StudentConfig",
    "check_sample_grid",
    "run",
]

METHODS: dict[str, type] = CONSISTENCY_OBJECTIVES


@dataclass(frozen=True)
class StudentConfig:
    hidden: PositiveInt = 256
    depth: PositiveInt = 4
    sigma_data: PositiveFloat | None = None  # None: the testbed mixture's exact data std
    sample_steps: PositiveInt = 2  # student steps of samples.npz (sCM's headline: 2)
    time_scale: PositiveFloat = 1 / 64  # scm: c_noise = log(sigma) * this (sources.consistency)
    # TrigFlow students: the intermediate angles (radians, theta = atan(sigma / sigma_d)) of the
    # sample_steps-step draw; (): sources.consistency.MID_ANGLES. Other step counts keep those.
    sample_mid: tuple[PositiveFloat, ...] = ()
    # TrigFlow students: the first angle of every draw (radians, <= pi/2); None: sCM's
    # atan(80 / sigma_d). SANA-Sprint trains that angle by its adversarial term alone
    # (largest_prob); docs/consistency.md, "The top angle"
    sample_top: PositiveFloat | None = None


@dataclass(frozen=True)
class EvalConfig:
    # student step counts scored at the end (3: rCM's best on digits and gmm64, docs/consistency.md)
    steps: tuple[PositiveInt, ...] = (1, 2, 3, 4)
    levels: tuple[PositiveFloat, ...] = (0.1, 0.5, 2.0, 10.0)  # VE sigma of the consistency error
    consistency_samples: PositiveInt = 500  # exact PF-ODE solves per level
    teacher_samplers: tuple[str, ...] = ("ddim", "dpmpp-2m", "heun")
    teacher_nfe: tuple[PositiveInt, ...] = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class ConsistencyConfig:
    method: str = "scm"
    testbed: str = "ring8"
    schedule: str = "edm"
    objective: dict[str, Any] = field(default_factory=dict)
    train: ConsistencyLoopConfig = field(default_factory=ConsistencyLoopConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)  # rcm only


def resolve(preset: str | None, sets: list[str]) -> tuple[ConsistencyConfig, Any]:
    """Preset + ``--set`` overrides -> (validated config, objective instance)."""
    return resolve_config(ConsistencyConfig(), PRESETS, preset, sets, METHODS)


def check_sample_grid(cfg: ConsistencyConfig, testbed) -> None:
    """``student.sample_top``: a TrigFlow student's first angle in ``(0, pi/2]``;
    ``student.sample_mid``: its ``sample_steps - 1`` strictly decreasing angles below the first
    (``atan(SIGMA_MAX / sigma_d)`` unless set); otherwise a ``ConfigError`` naming the key.
    ``sample_top`` applies to every step count, so each count's default grid must fall below it."""
    from ..sources.consistency import trigflow_angles
    from ..teachers.trigflow import mixture_sigma_data

    s = cfg.student
    keys = [k for k, v in (("sample_top", s.sample_top), ("sample_mid", s.sample_mid)) if v]
    if not keys:
        return
    if cfg.method in ("cd", "hypersd"):
        raise ConfigError(
            f"config key 'student.{keys[0]}' applies to TrigFlow students (scm, rcm, "
            f"sana_sprint); method {cfg.method!r} samples on its teacher's schedule"
        )
    sigma_d = s.sigma_data or mixture_sigma_data(testbed.truth)
    for steps in sorted({*cfg.eval.steps, s.sample_steps}):
        mid = s.sample_mid if steps == s.sample_steps and s.sample_mid else None
        key = "sample_mid" if mid is not None else "sample_top"
        try:
            trigflow_angles(steps, sigma_d, mid, s.sample_top)
        except ValueError as err:
            raise ConfigError(f"config key 'student.{key}' ({steps} steps): {err}") from None


def _data_sampler(testbed):
    """``(n, rng) -> (x0, labels | None)``: exact data (labels from the class prior)."""
    from ..eval.baseline import draw_labels

    def sample(n: int, rng: torch.Generator):
        labels = draw_labels(testbed, n, rng)
        return testbed.truth.sample(n, rng=rng, cond=labels), labels

    return sample


def _build_student(cfg: ConsistencyConfig, testbed, sigma_d: float) -> torch.nn.Module:
    from ..sources.consistency import BoundaryConsistency, TrigFlowStudent

    torch.manual_seed(cfg.train.seed)
    s, k = cfg.student, testbed.truth.num_classes
    if cfg.method in ("cd", "hypersd"):
        return BoundaryConsistency(
            testbed.dim, testbed.teacher.schedule, sigma_d, hidden=s.hidden, depth=s.depth,
            num_classes=k,
        )  # fmt: skip
    return TrigFlowStudent(
        testbed.dim, sigma_d, hidden=s.hidden, depth=s.depth, num_classes=k,
        time_scale=s.time_scale,
    )  # fmt: skip


def _fresh_critic(cfg: ConsistencyConfig, testbed) -> torch.nn.Module:
    """The critic's MLP denoiser before its DSM fit (seeded ``train.seed + 1``)."""
    from ..sources.critic import make_critic

    torch.manual_seed(cfg.train.seed + 1)
    return make_critic(
        testbed.dim, schedule=testbed.teacher.schedule, num_classes=testbed.truth.num_classes,
        hidden=cfg.critic.hidden, depth=cfg.critic.depth,
    )  # fmt: skip


def _wants_critic(objective: Any) -> bool:
    # Hyper-SD has a critic_loss but needs a critic only with its DMD stage on
    return getattr(objective, "needs_critic", hasattr(objective, "critic_loss"))


def param_report(cfg: ConsistencyConfig, objective: Any) -> dict[str, Any]:
    """``--dry-run``: the student's (and its EMA's) and the critic's parameters and memory
    (``runs.dry_run``), from the networks the run builds, before any fit."""
    from ..teachers.testbeds import get_testbed
    from ..teachers.trigflow import mixture_sigma_data
    from .dry_run import network_report

    testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
    student = _build_student(
        cfg, testbed, cfg.student.sigma_data or mixture_sigma_data(testbed.truth)
    )
    trained = {"student": student}
    if _wants_critic(objective):
        critic = _fresh_critic(cfg, testbed)
        if getattr(objective, "needs_logit_head", False):
            critic = objective.make_discriminator(critic, cfg.critic.hidden)
        trained["critic"] = critic
    ema = {"student EMA (frozen)": student} if cfg.train.ema_halflife else {}
    return network_report(trained, ema)


def _build_critic(
    cfg: ConsistencyConfig, testbed, objective: Any = None
) -> tuple[torch.nn.Module, dict]:
    """rCM's fake score: a fresh MLP denoiser fitted to exact teacher samples by DSM; for an
    objective that ``needs_logit_head`` (SANA-Sprint), its ``make_discriminator`` of that fit: a
    trainable logit head on the last hidden layer, the trunk frozen unless ``train_trunk``."""
    from ..train.dsm import init_critic_from_teacher

    c, sample = cfg.critic, _data_sampler(testbed)
    critic = _fresh_critic(cfg, testbed)

    def teacher_sample(n: int, rng: torch.Generator):
        x, labels = sample(n, rng)
        return (x, labels) if labels is not None else x

    init = init_critic_from_teacher(
        critic, teacher_sample, steps=c.init_steps, batch_size=c.init_batch, lr=c.init_lr,
        seed=cfg.train.seed,
    )  # fmt: skip
    if getattr(objective, "needs_logit_head", False):
        critic = objective.make_discriminator(critic, c.hidden)
    return critic, init


def student_noise(testbed, n: int, rng: torch.Generator) -> tuple[torch.Tensor, Any]:
    """A consistency student's sampling input from ``rng``: ``(z, labels)``, the class labels
    (None on an unconditional testbed) drawn first, then unit normal noise ``(n, dim)``."""
    from ..eval.baseline import draw_labels

    labels = draw_labels(testbed, n, rng)
    return torch.randn(n, testbed.dim, generator=rng), labels


def _student_draw(
    student,
    testbed,
    steps: int,
    n: int,
    seed: int,
    mid: Sequence[float] | None = None,
    top: float | None = None,
):
    """The fixed evaluation draw: ``(x, labels, seconds)``; the same noise for every step count.
    ``mid``, ``top``: a TrigFlow student's intermediate and first angles (None: the defaults)."""
    rng = torch.Generator().manual_seed(seed + 12345)
    z, labels = student_noise(testbed, n, rng)
    kw = ({} if mid is None else {"mid": mid}) | ({} if top is None else {"top": top})
    start = time.perf_counter()
    with torch.no_grad():
        x = student.sample(z, labels, steps=steps, rng=rng, **kw)
    return x, labels, time.perf_counter() - start


def _score(
    student,
    testbed,
    steps: int,
    n: int,
    seed: int,
    mid: Sequence[float] | None = None,
    top: float | None = None,
) -> tuple[dict, torch.Tensor, Any]:
    from ..eval.metrics import testbed_metrics

    x, labels, wall = _student_draw(student, testbed, steps, n, seed, mid, top)
    metrics = testbed_metrics(testbed, x.double(), labels=labels, seed=seed + 1)
    return {**metrics, "nfe": steps, "sample_s": wall}, x, labels


def run(cfg: ConsistencyConfig, objective: Any, out: Path, resume: bool = False) -> dict:
    """Build, train, evaluate and write the run folder; returns the final metrics."""
    from ..eval.consistency import consistency_errors
    from ..teachers.testbeds import get_testbed
    from ..teachers.trigflow import mixture_sigma_data
    from .consistency_report import save_figure, write_report

    testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", to_dict(cfg))
    sigma_d = cfg.student.sigma_data or mixture_sigma_data(testbed.truth)
    student = _build_student(cfg, testbed, sigma_d)
    n, seed, k = cfg.train.eval_samples, cfg.train.seed, cfg.student.sample_steps
    mid = cfg.student.sample_mid or None  # the sample_steps draw's grid (None: MID_ANGLES)
    top = cfg.student.sample_top  # every draw's first angle (None: atan(80 / sigma_d))
    start = time.perf_counter()
    critic, init = (
        _build_critic(cfg, testbed, objective) if _wants_critic(objective) else (None, {})
    )
    result = train_consistency(
        cfg.train, objective=objective, student=student, teacher=testbed.teacher,
        sample_data=_data_sampler(testbed), evaluate=lambda m: _score(m, testbed, k, n, seed, mid, top)[0],
        out_dir=out, resume=resume, desc=f"{cfg.method} {cfg.testbed}", critic=critic,
    )  # fmt: skip
    ema, train_s = result["ema"], time.perf_counter() - start
    by_steps, draws = {}, {}
    for steps in sorted({*cfg.eval.steps, k}):
        grid = mid if steps == k else None
        by_steps[str(steps)], draws[steps], labels = _score(ema, testbed, steps, n, seed, grid, top)
    consistency = consistency_errors(
        testbed, ema.at_level, cfg.eval.levels, cfg.eval.consistency_samples, seed
    )
    metrics = {
        **by_steps[str(k)],
        "wall_s": train_s,
        "sigma_data": sigma_d,
        "by_steps": by_steps,
        "consistency": consistency,
    } | ({"critic_init": init} if init else {})
    atomic_write_json(out / "metrics.json", metrics)
    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    arrays = {"x": draws[k].numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
    np.savez(out / "samples.npz", **arrays)
    save_figure(out / "samples.png", testbed, draws, labels, n, seed)
    write_report(out, cfg, metrics, result["history"], testbed)
    return metrics


FAMILY = Family(
    name="distill-consistency",
    help="consistency distillation (CD, Hyper-SD, sCM, rCM, SANA-Sprint) of a testbed's teacher "
    "into a few-step student",
    presets=PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=testbed_resolver(resolve, check_sample_grid),
    run=lambda r, out, resume: run(r.config, r.extra, out, resume=resume),
    quick=quick,
    steps_help="student updates",
    epilogue=report_section,
    dry_run=lambda r: {"networks": param_report(r.config, r.extra)},
)
