"""``scoredistill optimize``: score distillation as optimization (SDS and its successors).

A run optimises a *source* with a score objective against an exact teacher: a voxel field on the
3-D ``views`` testbed (renders through the differentiable renderer) or ``N`` particles on a
mixture testbed (``digits``, ``ring8``). ``teacher`` picks the views teacher: ``biased`` (view-
biased and camera-agnostic, the SD-like prior that makes Janus), ``prompted`` (front / side /
back labels from the camera's azimuth, view-dependent prompting, CFG exact), ``camera`` (one
Gaussian per ring camera: the sanity ceiling). Presets are plain dicts of ``--set`` overrides
(``optimize_presets.py``); ``objective.<field>`` reaches the method's dataclass.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    to_dict,
)
from ..config import resolve as resolve_config
from ..io import atomic_write_json
from ..objectives import SCORE_OBJECTIVES
from ..objectives.reward import RewardGuided
from ..presets.optimize import DESCRIPTIONS, LABELLED_ONLY, PRESETS, QUICK
from ..train.optimize import Batch, OptimizeLoopConfig, optimize
from ..train.view_classifier import azimuth_bins, train_view_classifier
from .family import Family, Resolved
from .optimize_build import (
    accepts,
    fresh_mlp_critic,
    load_testbed,
    needs_critic,
    views_critic_labels,
    views_teacher,
    voxel_field,
)
from .optimize_dry_run import param_report

__all__ = [
    "FAMILY",
    "PRESETS",
    "CriticConfig",
    "OptimizeConfig",
    "RewardConfig",
    "SourceConfig",
    "resolve",
    "run_optimize",
]

TEACHERS = ("biased", "prompted", "camera", "exact")
REFERENCE_DRAWS = 32  # exact sample sets of the particles' size, for the "same size" reference


@dataclass(frozen=True)
class SourceConfig:
    n_particles: PositiveInt = 16  # particles: N (N = 1 is DreamFusion's image-as-parameters)
    init_std: NonNegativeFloat = 1.0  # particles: start at N(0, init_std^2 I)
    resolution: PositiveInt = 32  # field: voxels per axis (the ground truth's)
    n_samples: PositiveInt = 48  # field: samples per ray (the ground truth's)
    init_density: PositiveFloat = 0.1  # field: almost transparent start
    init_noise: NonNegativeFloat = 0.1  # field: N(0, 0.1^2) on every raw value


@dataclass(frozen=True)
class CriticConfig:
    kind: Literal["mlp", "exact"] = "mlp"  # exact: the particles' / the field's renders' mixture
    hidden: PositiveInt = 256
    depth: PositiveInt = 3
    camera_bins: PositiveInt = 8  # 3-D critic label: nearest of 8 azimuths (45 deg apart); see docs
    # 3-D critic's camera: "bins" (the label above) or "azimuth", continuous [cos, sin] features
    # as threestudio's extrinsics embedding (issue 15; teachers.mlp.MLPDenoiserNet)
    camera: Literal["bins", "azimuth"] = "bins"
    exact_std: PositiveFloat = 0.02  # exact critic: std of each particle's (render's) component
    # exact 3-D critic: cameras of its camera-free mixture, 360/M apart at a random offset per
    # step (not checkpointed: a resumed run draws other offsets)
    exact_views: PositiveInt = 12
    init_steps: NonNegativeInt = 0  # DSM steps fitting the critic to the teacher (0: fresh critic)


@dataclass(frozen=True)
class RewardConfig:
    weight: NonNegativeFloat = 0.0  # lambda_r of objectives.reward (0: no reward term)
    bins: PositiveInt = 8  # the classifier's azimuth bins
    renders: PositiveInt = 720  # ground-truth renders it is trained on (uniform azimuths)
    steps: PositiveInt = 400  # its Adam steps


@dataclass(frozen=True)
class OptimizeConfig:
    method: str = "sds"
    testbed: str = "views"
    teacher: str = "biased"  # one of TEACHERS; "exact" for particle testbeds
    schedule: str = "edm"
    image_size: PositiveInt = 16  # views: render and teacher size (32 is the testbed's default)
    kappa: NonNegativeFloat = 4.0  # views: teacher view weights exp(kappa cos az) (testbed's 4)
    objective: dict[str, Any] = field(default_factory=dict)
    train: OptimizeLoopConfig = field(default_factory=OptimizeLoopConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)


def _check(cfg: OptimizeConfig) -> None:
    views = cfg.testbed == "views"
    if cfg.teacher not in TEACHERS or views == (cfg.teacher == "exact"):
        valid = "biased, prompted, camera" if views else "exact"
        raise ConfigError(f"config key 'teacher': {cfg.teacher!r} on {cfg.testbed}; valid: {valid}")
    if cfg.method in LABELLED_ONLY and cfg.teacher in ("biased", "exact"):
        raise ConfigError(
            f"config key 'teacher': {cfg.method} distils eps_c - eps_∅ and needs labels; "
            f"the {cfg.teacher} teacher is used without any: use teacher=prompted or camera"
        )
    if cfg.reward.weight > 0 and not views:
        raise ConfigError("config key 'reward.weight' > 0 needs testbed=views (a view classifier)")
    if cfg.critic.kind == "exact" and views and cfg.critic.camera != "azimuth":
        raise ConfigError(
            "config key 'critic.kind': the exact 3-D critic needs critic.camera=azimuth"
        )
    if cfg.kappa != 4.0 and not views:
        raise ConfigError(f"config key 'kappa': {cfg.kappa} needs testbed=views (view weights)")
    if cfg.critic.camera == "azimuth" and not views:
        raise ConfigError("config key 'critic.camera': 'azimuth' needs testbed=views; use 'bins'")


def resolve(preset: str | None, sets: list[str]) -> tuple[OptimizeConfig, Any]:
    """Preset + ``--set`` overrides -> (validated config, objective instance)."""
    cfg, objective = resolve_config(OptimizeConfig(), PRESETS, preset, sets, SCORE_OBJECTIVES)
    _check(cfg)
    if cfg.reward.weight > 0:
        objective = RewardGuided(objective, cfg.reward.weight)
    return cfg, objective


def _mlp_critic(cfg: OptimizeConfig, teacher: Any, num_classes: int, azimuth: bool = False):
    """A fresh MLP critic; ``critic.init_steps`` > 0 first fits it to the teacher by DSM
    (ProlificDreamer's LoRA starts as the teacher), with uniformly drawn camera labels
    (``azimuth``: a continuous camera azimuth in degrees, uniform on [0, 360))."""
    from ..train.dsm import init_critic_from_teacher

    critic, c = fresh_mlp_critic(cfg, teacher, num_classes, azimuth), cfg.critic
    if c.init_steps > 0:

        def sample(n: int, rng: torch.Generator):
            x = teacher.sample(n, rng=rng)
            if azimuth:
                return x, 360.0 * torch.rand(n, generator=rng)
            return (x, torch.randint(num_classes, (n,), generator=rng)) if num_classes else x

        init_critic_from_teacher(critic, sample, steps=c.init_steps, seed=cfg.train.seed)
    return critic


# ----------------------------------------------------------------------------- 3-D field
def _view_classifier(cfg: OptimizeConfig, testbed) -> tuple[Any, float]:
    rng = torch.Generator().manual_seed(cfg.train.seed + 31)
    az = 360.0 * torch.rand(cfg.reward.renders, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        images = testbed.gt_field(testbed.cameras(az))
    r = cfg.reward
    return train_view_classifier(images, az, r.bins, rng=rng, steps=r.steps)


def _views_labels(cfg: OptimizeConfig, testbed, az: torch.Tensor) -> torch.Tensor | None:
    if cfg.teacher == "prompted":
        return testbed.prompt_for_azimuth(az)
    return testbed.ring_index(az) if cfg.teacher == "camera" else None


def _marginal_reference(testbed) -> dict[str, float]:
    """What a perfect marginal matcher reads on this teacher (``eval.janus_reference``): the
    optimal transport of the cameras onto the view marginal, and the least Janus rate of any."""
    from ..eval.janus_reference import least_janus_rate, ring_ot_reference

    sweep = [c.azimuth for c in testbed.heldout if c.elevation == testbed.elevation]
    ot = ring_ot_reference(testbed.kappa, testbed.ring_azimuths.numpy(), np.asarray(sweep))
    return {f"ot_{k}": v for k, v in ot.items()} | {
        "least_janus_rate": least_janus_rate(testbed.kappa)
    }


def _render_critic(cfg: OptimizeConfig, testbed, field_, schedule):
    """``() -> RenderMixtureCritic`` of the field as it is now (``sources.critic``)."""
    from ..sources.critic import RenderMixtureCritic

    rng = torch.Generator().manual_seed(cfg.train.seed + 101)
    m = cfg.critic.exact_views

    def render(az: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return field_(testbed.cameras(az)).detach()

    def critic():
        grid = (float(torch.rand((), generator=rng, dtype=torch.float64)) + torch.arange(m)) / m
        return RenderMixtureCritic(render, 360.0 * grid.double(), cfg.critic.exact_std, schedule)

    return critic


def _views_task(cfg: OptimizeConfig, objective: Any, testbed) -> dict[str, Any]:
    """The voxel field, its teacher, ``draw`` and ``evaluate`` on the ``views`` testbed."""
    from ..eval.metrics3d import metrics3d

    field_, teacher = voxel_field(cfg), views_teacher(cfg, testbed)
    camera_critic = accepts(objective, "camera")
    continuous = camera_critic and cfg.critic.camera == "azimuth"
    critic: Any = None
    if needs_critic(objective) and cfg.critic.kind == "exact":
        critic = _render_critic(cfg, testbed, field_, teacher.schedule)
    elif needs_critic(objective):
        critic = _mlp_critic(cfg, teacher, *views_critic_labels(cfg, objective, teacher))
    reward = _view_classifier(cfg, testbed) if cfg.reward.weight > 0 else None

    def draw(rng: torch.Generator) -> Batch:
        cams = testbed.sample_cameras(cfg.train.batch_size, rng)
        az = torch.tensor([c.azimuth for c in cams], dtype=torch.float64)
        cond = _views_labels(cfg, testbed, az)
        bins = az.float() if continuous else azimuth_bins(az, cfg.critic.camera_bins)
        extra: dict[str, Any] = {"camera": bins} if camera_critic else {}
        if reward is not None:
            extra |= {"classifier": reward[0], "view": azimuth_bins(az, cfg.reward.bins)}
        return Batch(field_(cams, rng=rng), cond, bins if camera_critic else cond, extra)

    info = {"reward_classifier_acc": reward[1]} if reward is not None else {}
    if cfg.teacher == "biased":
        info |= _marginal_reference(testbed)
    evaluate = lambda f: metrics3d(f, testbed)  # noqa: E731
    return {"source": field_, "teacher": teacher, "critic": critic, "draw": draw,
            "evaluate": evaluate, "info": info}  # fmt: skip


# ----------------------------------------------------------------------------- particles
def _particles_task(cfg: OptimizeConfig, objective: Any, testbed) -> dict[str, Any]:
    """``N`` particles, the exact teacher, ``draw`` and ``evaluate`` on a mixture testbed."""
    from ..eval.metrics import testbed_metrics
    from ..sources.particles import Particles
    from ..teachers.analytic import GaussianMixtureTeacher

    gen = torch.Generator().manual_seed(cfg.train.seed)
    n, teacher = cfg.source.n_particles, testbed.teacher
    particles = Particles(n, (testbed.dim,), init_std=cfg.source.init_std, rng=gen)
    camera = accepts(objective, "camera")  # ESD: the particle index is the "camera"
    fixed_noise = hasattr(objective, "noise_seed") or hasattr(
        getattr(objective, "base", 0), "noise_seed"
    )
    critic: Any = None
    if needs_critic(objective) and cfg.critic.kind == "mlp":
        critic = _mlp_critic(cfg, teacher, n if camera else 0)
    elif needs_critic(objective):

        def critic() -> GaussianMixtureTeacher:  # the particles' own (near-Dirac) mixture
            return GaussianMixtureTeacher(
                particles.theta.detach(), torch.ones(n), stds=torch.full((n,), cfg.critic.exact_std),
                labels=torch.arange(n) if camera else None, schedule=teacher.schedule,
            )  # fmt: skip

    def draw(rng: torch.Generator) -> Batch:
        b = cfg.train.batch_size
        idx = torch.arange(n) if b in (0, n) else torch.randperm(n, generator=rng)[:b]
        extra: dict[str, Any] = {"camera": idx} if camera else {}
        if fixed_noise:
            extra["noise"] = particles.noise[idx]
        return Batch(particles(idx), None, idx if camera else None, extra)

    seed = cfg.train.seed + 1
    evaluate = lambda p: testbed_metrics(testbed, p.theta.detach().double(), seed=seed)  # noqa: E731
    return {"source": particles, "teacher": teacher, "critic": critic, "draw": draw,
            "evaluate": evaluate, "info": {}}  # fmt: skip


def exact_reference(testbed, n: int, seed: int, draws: int = REFERENCE_DRAWS) -> dict[str, float]:
    """Mean and std over ``draws`` sets of ``n`` exact samples of every testbed metric."""
    from ..eval.metrics import testbed_metrics

    rows = []
    for k in range(draws):
        rng = torch.Generator().manual_seed(10_000 + 97 * seed + k)
        x = testbed.truth.sample(n, rng=rng, dtype=torch.float64)
        rows.append(testbed_metrics(testbed, x, seed=seed + 1))
    keys = [k for k in rows[0] if k != "n"]
    out = {f"exact_{k}": statistics.fmean(r[k] for r in rows) for k in keys}
    return out | {f"exact_{k}_std": statistics.stdev(r[k] for r in rows) for k in keys}


# ----------------------------------------------------------------------------- run
def run_optimize(
    cfg: OptimizeConfig, objective: Any, out: Path, resume: bool = False
) -> dict[str, Any]:
    """Build, optimise, evaluate and write the run folder; returns the final metrics."""
    from .optimize_report import save_figure, write_report

    testbed = load_testbed(cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", to_dict(cfg))
    build = _views_task if cfg.testbed == "views" else _particles_task
    task = build(cfg, objective, testbed)
    initial_path = out / "initial.json"
    if not initial_path.exists():
        atomic_write_json(initial_path, task["evaluate"](task["source"]))
    initial = json.loads(initial_path.read_text())
    start = time.perf_counter()
    result = optimize(
        cfg.train, source=task["source"], objective=objective, teacher=task["teacher"],
        draw=task["draw"], evaluate=task["evaluate"], out_dir=out, resume=resume,
        critic=task["critic"],
    )  # fmt: skip
    metrics = {**task["evaluate"](task["source"]), "wall_s": time.perf_counter() - start}
    if cfg.testbed != "views":
        metrics |= exact_reference(testbed, cfg.source.n_particles, cfg.train.seed)
    metrics |= {**task["info"], "steps": cfg.train.steps, "initial": initial}
    atomic_write_json(out / "metrics.json", metrics)
    from ..train.common import JsonlLogger

    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    save_figure(out, cfg, testbed, task["source"])
    write_report(out, cfg, metrics, result["history"])
    return metrics


FAMILY = Family(
    name="optimize",
    help="score distillation as optimization (3-D field, particles)",
    presets=PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=lambda preset, sets: Resolved(*resolve(preset, sets), preset),
    run=lambda r, out, resume: run_optimize(r.config, r.extra, out, resume=resume),
    quick=lambda name: list(QUICK),
    steps_help="source updates",
    dry_run=lambda r: {"networks": param_report(r.config, r.extra)},
)
