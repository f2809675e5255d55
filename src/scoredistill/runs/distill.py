"""``scoredistill distill``: one-step generator distillation runs from presets.

A run is a ``DistillConfig`` (method, testbed, objective fields, loop, networks). Presets are
plain dicts of overrides; ``--set key=value`` overrides any field (``objective.<field>`` reaches
the method's own dataclass, so an unknown or ill-typed objective field is rejected by name
before training starts).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import LearningRate, PositiveFloat, PositiveInt, to_dict
from ..config import resolve as resolve_config
from ..io import atomic_write_json
from ..objectives import OBJECTIVES
from ..presets.distill import DESCRIPTIONS, PRESETS, QUICK
from ..sources.generators import rollout
from ..train.common import JsonlLogger
from ..train.disback import BacktrackConfig, TeacherPath, record_degradation
from ..train.two_player import TwoPlayerConfig, train_two_player
from .distill_generator import (
    GeneratorConfig,
    build_teacher_init,
    check_generator,
    make_distill_critic,
    make_generator,
)
from .distill_regression import check_regression, regression_term
from .distill_report import placement, save_previews, write_report
from .dry_run import param_report
from .family import Family, Resolved, report_section

__all__ = [
    "FAMILY",
    "PRESETS",
    "CriticConfig",
    "DistillConfig",
    "GeneratorConfig",
    "resolve",
    "run_distill",
    "testbed_resolver",
]


@dataclass(frozen=True)
class CriticConfig:
    hidden: PositiveInt = 256
    depth: PositiveInt = 4
    init_steps: PositiveInt = 400  # DSM steps fitting the teacher first ("init from teacher")
    init_lr: LearningRate = 2e-3
    init_batch: PositiveInt = 1024
    # EDM's sigma_d of the critic's preconditioning and DSM weighting (and of the objectives'
    # critic loss, whose sigma_data None means the critic's). 0.5 is EDM's value for images in [-1, 1];
    # None: the testbed's exact per-dimension data std, as FastGen's toy setups take it from data
    sigma_data: PositiveFloat | None = 0.5


@dataclass(frozen=True)
class DistillConfig:
    method: str = "dmd"
    testbed: str = "ring8"
    schedule: str = "edm"
    objective: dict[str, Any] = field(default_factory=dict)
    train: TwoPlayerConfig = field(default_factory=TwoPlayerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    regression_pairs: PositiveInt = 4096  # DMD v1: teacher-ODE (noise, sample) pairs, drawn once
    regression_nfe: PositiveInt = 64  # DPM-Solver++(2M) evaluations per pair
    # few-step students: "first" regresses step 1 (DP-DMD's split); "all" every step k on the
    # teacher's marginal at t_k with exact PF-ODE targets (distill_regression.later_step_pairs;
    # ours, not a paper's)
    regression_steps: Literal["first", "all"] = "first"
    backtrack: BacktrackConfig = field(default_factory=BacktrackConfig)  # DisBack (train.disback)


def resolve(preset: str | None, sets: list[str]) -> tuple[DistillConfig, Any]:
    """Preset + ``--set`` overrides -> (validated config, objective instance)."""
    cfg, objective = resolve_config(DistillConfig(), PRESETS, preset, sets, OBJECTIVES)
    check_regression(cfg, objective)
    return cfg, objective


def _label_sampler(testbed):
    """``(n, rng) -> labels`` from the class prior, or None for an unconditional testbed."""
    from ..eval.baseline import draw_labels

    return (lambda n, rng: draw_labels(testbed, n, rng)) if testbed.conditional else None


def _real_sampler(testbed):
    """``(n, rng) -> (x, labels | None)``: exact teacher samples (the GAN's real class)."""
    sample_cond = _label_sampler(testbed)

    def sample(n: int, rng: torch.Generator):
        labels = sample_cond(n, rng) if sample_cond else None
        return testbed.truth.sample(n, rng=rng, cond=labels), labels

    return sample


def _student_samples(generator, testbed, n: int, seed: int):
    """The fixed evaluation draw of a generator: ``(x, labels, sampling seconds, rng)``; the rng
    is returned so that later draws (the exact-data panel) continue the same stream."""
    rng = torch.Generator().manual_seed(seed + 12345)
    sample_cond = _label_sampler(testbed)
    labels = sample_cond(n, rng) if sample_cond else None
    start = time.perf_counter()
    with torch.no_grad():
        x = rollout(generator, generator.sample_latent(n, rng), labels, rng)
    return x, labels, time.perf_counter() - start, rng


def _score(testbed, objective: Any, x: torch.Tensor, labels, seed: int) -> dict[str, float]:
    """The exact metrics of a student draw. A forgetting objective (SFD) is scored against its
    target law, the forgotten class answered by the safe one, plus ``forgetting_metrics``."""
    from ..eval.forgetting import forgetting_metrics
    from ..eval.metrics import testbed_metrics

    forget = getattr(objective, "forget_class", None)
    if forget is None or labels is None:
        return testbed_metrics(testbed, x.double(), labels=labels, seed=seed)
    safe = objective.safe_class
    target = torch.where(labels == forget, torch.full_like(labels, safe), labels)
    return {
        **testbed_metrics(testbed, x.double(), labels=target, seed=seed),
        **forgetting_metrics(testbed.truth, x, labels, forget, safe),
    }


def _evaluator(testbed, objective: Any, n: int, seed: int):
    def evaluate(generator) -> dict[str, float]:
        x, labels, _, _ = _student_samples(generator, testbed, n, seed)
        return _score(testbed, objective, x, labels, seed + 1)

    return evaluate


def _build(cfg: DistillConfig, testbed, gan_head: bool = False):
    from ..train.dsm import init_critic_from_teacher

    torch.manual_seed(cfg.train.seed)
    gen = make_generator(cfg.generator, testbed)
    critic = make_distill_critic(cfg.critic, testbed, gan_head)
    real = _real_sampler(testbed)

    def teacher_sample(n: int, rng: torch.Generator):
        x, labels = real(n, rng)
        return (x, labels) if labels is not None else x

    init = init_critic_from_teacher(
        critic,
        teacher_sample,
        steps=cfg.critic.init_steps,
        batch_size=cfg.critic.init_batch,
        lr=cfg.critic.init_lr,
        seed=cfg.train.seed,
        progress=True,
    )
    if cfg.generator.init == "teacher":
        gen = build_teacher_init(cfg.generator, cfg.critic, testbed, critic, cfg.train.seed)
    return gen, critic, init


def trained_student(run: Path, cfg: DistillConfig | None = None):
    """``(config, testbed, EMA student)`` of a finished run folder: the student rebuilt from the
    run's ``config.json`` (or ``cfg``) and its EMA loaded from the latest checkpoint. The critic's
    DSM fit, which only shapes a teacher-initialised student before the weights are replaced, runs
    one step."""
    from ..config import from_dict
    from ..teachers.testbeds import get_testbed
    from ..train.common import latest_checkpoint, module_state

    if cfg is None:
        cfg = from_dict(DistillConfig, json.loads((run / "config.json").read_text()))
    testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
    shape_only = replace(cfg, critic=replace(cfg.critic, init_steps=1))
    gen, _, _ = _build(shape_only, testbed)
    gen.load_state_dict(module_state(latest_checkpoint(run / "checkpoints"), "ema"))
    return cfg, testbed, gen.eval()


def run_distill(
    cfg: DistillConfig, objective: Any, out: Path, resume: bool = False
) -> dict[str, Any]:
    """Build, train, evaluate and write the run folder; returns the final metrics."""
    from ..eval.plots import save_panels, save_training_curves
    from ..teachers.testbeds import get_testbed

    testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(out / "config.json", to_dict(cfg))
    needs_real = bool(getattr(objective, "needs_real", False))
    gen, critic, init = _build(cfg, testbed, gan_head=needs_real)
    evaluate = _evaluator(testbed, objective, cfg.train.eval_samples, cfg.train.seed)
    initial = _initial_metrics(out, gen, evaluate)
    start = time.perf_counter()
    teacher = _backtrack_path(cfg, testbed, gen, critic) if cfg.backtrack.nodes else None
    result = train_two_player(
        cfg.train,
        objective=objective,
        generator=gen,
        critic=critic,
        teacher=teacher or testbed.teacher,
        sample_latent=lambda n, rng: gen.sample_latent(n, rng),
        sample_cond=_label_sampler(testbed),
        evaluate=evaluate,
        out_dir=out,
        resume=resume,
        sample_real=_real_sampler(testbed) if needs_real else None,
        extra_generator_loss=regression_term(cfg, objective, testbed, gen),
    )
    ema = result["ema"]
    if not result["is_main_process"]:  # one writer per run folder
        return {}
    # one draw serves the final metrics, samples.npz and the figure (a few-step student
    # re-noises, so a second draw would not be the one that was scored)
    x, labels, sample_s, rng = _student_samples(
        ema, testbed, cfg.train.eval_samples, cfg.train.seed
    )
    metrics = {
        **_score(testbed, objective, x, labels, cfg.train.seed + 1),
        "nfe": getattr(ema, "nfe", 1),
        "wall_s": time.perf_counter() - start,
        "world_size": result["world_size"],
        "sample_s": sample_s,
        "critic_sigma_data": critic.sigma_data,
        "initial": initial,
        "testbed": cfg.testbed,  # as run: a --set testbed=FILE.npz overrides the preset's
    }
    atomic_write_json(out / "metrics.json", metrics)
    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    arrays = {"x": x.numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
    np.savez(out / "samples.npz", **arrays)
    teacher_x = testbed.truth.sample(cfg.train.eval_samples, rng=rng, cond=labels)
    save_panels(
        testbed,
        {f"student ({metrics['nfe']} NFE, EMA)": x, "exact data": teacher_x},
        out / "samples.png",
        labels=labels,
    )
    keep = slice(0, 512)  # enough points (and more than the 64 images a grid shows)
    save_previews(
        out / "previews.png", testbed, critic, x[keep], None if labels is None else labels[keep]
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    save_training_curves(records, out / "curves.png")
    write_report(out, cfg, metrics, result["history"], init, placement(testbed, cfg, metrics))
    return metrics


def _backtrack_path(cfg: DistillConfig, testbed, gen, critic) -> TeacherPath:
    """DisBack's stage 1 on the initial generator; ``critic`` (the teacher copy) becomes ``s_N``.

    Deterministic from the seed, so a resumed run records the same path again."""
    label = _label_sampler(testbed)

    @torch.no_grad()
    def sample_generator(n: int, rng: torch.Generator):
        z = gen.sample_latent(n, rng)
        c = label(n, rng) if label is not None else None
        x = rollout(gen, z, c, rng)  # a few-step generator: its full rollout
        return (x, c) if c is not None else x

    bt = cfg.backtrack
    path = record_degradation(
        critic, sample_generator, bt, batch_size=cfg.critic.init_batch, seed=cfg.train.seed
    )
    critic.load_state_dict(path[-1].state_dict())
    per_node = int(bt.fraction * cfg.train.steps) // (bt.nodes - 1)
    return TeacherPath(testbed.teacher, path, per_node)


def _initial_metrics(out: Path, gen, evaluate) -> dict[str, float]:
    """The untrained generator's metrics, kept in ``initial.json`` (so a resumed run reports the
    same starting point)."""
    path = out / "initial.json"
    if path.exists():
        return json.loads(path.read_text())
    metrics = evaluate(gen)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(path, metrics)
    return metrics


def testbed_resolver(
    resolve_fn: Callable[[str | None, list[str]], tuple[Any, Any]],
    check: Callable[[Any, Any], None] | None = None,
) -> Callable[[str | None, list[str]], Resolved]:
    """A family's ``resolve``: the config, then its ``testbed`` loaded (and ``check(cfg, testbed)``
    run) so that a bad testbed or a setting it cannot take fails before any training (the testbed
    families: ``distill``, ``distill-consistency``)."""

    def resolved(preset: str | None, sets: list[str]) -> Resolved:
        from ..teachers.testbeds import get_testbed

        cfg, extra = resolve_fn(preset, sets)
        testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
        if check is not None:
            check(cfg, testbed)
        return Resolved(cfg, extra, preset)

    return resolved


FAMILY = Family(
    name="distill",
    help="distil a one-step generator from a testbed's teacher",
    presets=PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=testbed_resolver(resolve, lambda cfg, testbed: check_generator(cfg.generator, testbed)),
    run=lambda r, out, resume: run_distill(r.config, r.extra, out, resume=resume),
    quick=lambda name: list(QUICK),
    steps_help="generator updates",
    epilogue=report_section,
    dry_run=lambda r: {"networks": param_report(r.config, r.extra)},
)
