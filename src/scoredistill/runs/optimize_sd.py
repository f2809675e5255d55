"""``scoredistill optimize --teacher SD_DIR --prompts FILE``: score distillation as optimization
with a text-to-image latent prior.

The source is ``N`` latent particles ``theta: (N, c·h·w)`` (DreamFusion's image-as-parameters,
in the VAE's latent space); particle ``i`` is prompted by prompt ``i mod P`` of the list (with
line ``i mod P`` of the ``prompts_2``/``prompts_3`` files, diffusers' ``prompt_2``/``prompt_3``,
and the ``negative_prompt_2``/``negative_prompt_3`` null rows: ``runs.sd_prompts``, checked
before any weights load as for ``distill-sd``), passed as prompt ids
(``teachers.diffusers_latent.set_prompt_labels``: ``NULL_LABEL`` is the null prompt), so every
score objective (``objectives.SCORE_OBJECTIVES``) and its guidance run unchanged, in the same
loop as the exact testbeds (``train.optimize``). Objectives with a critic (VSD, as
ProlificDreamer) get a LoRA adapter on the frozen teacher's own UNet (``sources.lora``): one UNet
in memory, the adapter's weights the only trained critic weights, the teacher's answers
unchanged (adapters rest off).

``source.kind=field`` optimises a voxel field instead, rendered from ring cameras and encoded
through the VAE, with view-dependent prompts and a camera-conditioned LoRA critic
(``runs.optimize_sd_field``); that is where ESD (``esd-sd``) is defined.

Outputs in ``--out``: ``samples.npz`` (``x``: decoded images ``(N, C·H·W)`` in [-1, 1],
``latents``, ``labels`` = prompt ids; a field: its ring renders, ``azimuth``), ``metrics.json``
(digits FD / precision / recall / prompt accuracy of the decoded particles when the teacher is
the digits kind, ``runs.sd``'s scorer; else ``n``), ``report.md``, ``samples.png`` (before and
after), checkpoints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch

from ..config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    to_dict,
)
from ..config import resolve as resolve_config
from ..errors import NonFiniteError
from ..io import atomic_write_json
from ..objectives import SCORE_OBJECTIVES
from ..presets.optimize_sd import DESCRIPTIONS, PRESETS, QUICK
from ..train.common import JsonlLogger
from ..train.optimize import Batch, OptimizeLoopConfig, optimize
from .family import Family, Resolved
from .optimize_build import accepts, needs_critic
from .sd import _scorer, check_negative_prompt, read_prompts, sd_paths, teacher_report
from .sd_prompts import prompt_streams
from .sd_teacher_keys import FluxKeys, SDXLKeys, T5Length, apply_teacher_keys, micro_cond

__all__ = ["FAMILY", "OptimizeSDConfig", "load_teacher", "run_optimize_sd"]

REPORT_KEYS = ("fd", "precision", "recall", "class_acc")
FIELD_KEYS = ("class_acc_front", "class_acc_side", "class_acc_back", "view_spread")


@dataclass(frozen=True)
class LatentSourceConfig:
    # "particles": N latent images; "field": one voxel field rendered and VAE-encoded
    # (runs.optimize_sd_field, view-dependent prompts)
    kind: Literal["particles", "field"] = "particles"
    n_particles: PositiveInt = 60  # particles: N; particle i is prompted by prompt i mod P
    init_std: NonNegativeFloat = 1.0  # particles: start at N(0, init_std^2 I), scaled latents
    prompt_index: NonNegativeInt = 0  # field: the prompt (line of --prompts) it is made for
    view_prompts: bool = True  # field: DreamFusion's ", front/side/back view" suffixes
    resolution: PositiveInt = 16  # field: voxels per axis
    n_samples: PositiveInt = 24  # field: samples per ray
    init_density: PositiveFloat = 0.1  # field: almost transparent start (runs.optimize's)
    init_noise: NonNegativeFloat = 0.1  # field: N(0, 0.1^2) on every raw value
    background: Annotated[float, Range(0.0, 1.0)] = 0.0  # field: grey level behind the box
    elevation: Annotated[float, Range(-89.0, 89.0)] = 15.0  # field: cameras' elevation (deg)
    eval_views: PositiveInt = 24  # field: ring renders scored at the end (every 360/n deg)
    # field: weight of a smoothness prior, the grid's total variation (VoxelField.total_variation)
    tv_weight: NonNegativeFloat = 0.0


@dataclass(frozen=True)
class LoraCriticConfig:
    # ProlificDreamer's LoRA (threestudio stable_diffusion_vsd_guidance.py: LoRAAttnProcessor
    # with diffusers' default rank 4 and no network_alpha, i.e. scale 1)
    lora_rank: PositiveInt = 4
    lora_alpha: NonNegativeFloat = 0.0  # 0: equal to the rank (scale 1)
    lora_targets: tuple[str, ...] = ()  # module-name suffixes; (): sources.lora.default_targets


@dataclass(frozen=True)
class OptimizeSDConfig:
    method: str = "sds"
    teacher: str = ""  # a local StableDiffusionPipeline-layout folder; "" = the bundled digits one
    variant: str = ""  # weight variant ("fp16"); "": standard, or the only one (fp16-only)
    prompts: str = ""  # a text file, one prompt per line ("" = the bundled teacher's prompts)
    negative_prompt: str = ""  # the null condition of guidance ("" = the empty prompt)
    prompts_2: str = ""  # a file: line i the prompt_2 of prompt i ("" = prompt; sd_prompts)
    prompts_3: str = ""  # a file: line i the prompt_3 (SD3's T5) of prompt i ("" = prompt)
    negative_prompt_2: str = ""  # the null row's prompt_2 ("" = negative_prompt)
    negative_prompt_3: str = ""  # the null row's prompt_3 ("" = negative_prompt)
    sdxl: SDXLKeys = field(default_factory=SDXLKeys)  # micro-conditioning (sd_teacher_keys)
    flux: FluxKeys = field(default_factory=FluxKeys)  # embedded guidance (sd_teacher_keys)
    max_sequence_length: T5Length = 0  # SD3/Flux T5 length; 0: the pipeline's (sd_teacher_keys)
    objective: dict[str, Any] = field(default_factory=dict)
    train: OptimizeLoopConfig = field(default_factory=OptimizeLoopConfig)
    source: LatentSourceConfig = field(default_factory=LatentSourceConfig)
    critic: LoraCriticConfig = field(default_factory=LoraCriticConfig)


def load_teacher(cfg: OptimizeSDConfig):
    """The latent teacher with the prompt list (and its per-encoder prompts) as its labels
    (``runs.sd``'s paths and checks, all before any weights load)."""
    from ..teachers.diffusers_check import check_forward
    from ..teachers.diffusers_latent import load_latent_teacher

    folder, prompt_file = sd_paths(cfg)
    prompts = read_prompts(prompt_file)
    streams = prompt_streams(cfg, folder, prompt_file, len(prompts))
    if cfg.source.kind == "field":  # the field's prompt and its views (runs.optimize_sd_field)
        from .optimize_sd_field import field_prompts, field_streams

        prompts, streams = field_prompts(prompts, cfg.source), field_streams(streams, cfg.source)
    teacher = load_latent_teacher(folder, variant=cfg.variant)
    apply_teacher_keys(cfg, teacher)  # before the prompts' rows are built
    teacher.set_prompt_labels(prompts, cfg.negative_prompt, **streams)
    check_forward(teacher, folder, torch.zeros(1, dtype=torch.long))  # prompt 0; --dry-run too
    return teacher


def _check(cfg: OptimizeSDConfig, objective: Any) -> None:
    check_negative_prompt(cfg, objective)
    micro_cond(cfg.sdxl)  # bad pairs fail before any weights load
    lam = float(getattr(objective, "lam", 0.0))
    if accepts(objective, "camera") and lam != 0.0 and cfg.source.kind != "field":
        raise ConfigError(
            f"config key 'objective.lam': {lam} needs cameras (source.kind=field, preset "
            "esd-sd); on particles a critic's only label is the prompt; valid: 0 (VSD)"
        )
    if cfg.source.tv_weight > 0 and cfg.source.kind != "field":
        raise ConfigError(
            f"config key 'source.tv_weight': {cfg.source.tv_weight} is a prior on a voxel "
            "field's grid; particles have none (source.kind=field, or 0)"
        )


def resolve(preset: str | None, sets: list[str]) -> tuple[OptimizeSDConfig, Any]:
    """Preset + ``--set`` overrides -> (validated config, objective); a bad folder or prompt file
    fails here, before any work."""
    cfg, objective = resolve_config(OptimizeSDConfig(), PRESETS, preset, sets, SCORE_OBJECTIVES)
    _check(cfg, objective)
    load_teacher(cfg)
    return cfg, objective


def _lora_critic(cfg: OptimizeSDConfig, teacher: Any):
    """ProlificDreamer's critic: adapter ``critic`` on the teacher's UNet (``B = 0``: it starts
    as the teacher), seen through ``DiffusersCritic`` (its parameters: the adapter's only); on a
    field, with the camera embedding of ``sources.camera_lora`` beside the adapter."""
    from ..sources.diffusers import make_diffusers_critic
    from ..sources.lora import AdapterView, add_lora

    torch.manual_seed(cfg.train.seed)  # the adapter's A matrices and the camera embedding
    c = cfg.critic
    try:  # lora_targets naming no module of the network
        add_lora(teacher.model, "critic", c.lora_rank, c.lora_alpha or None, c.lora_targets or None)
    except ValueError as err:
        raise ConfigError(f"config key 'critic.lora_targets': {err}") from None
    if cfg.source.kind == "field":
        from ..sources.camera_lora import CameraLoraCritic

        return make_diffusers_critic(teacher, denoiser=CameraLoraCritic(teacher, "critic"))
    return make_diffusers_critic(teacher, denoiser=AdapterView(teacher, "critic"))


def build_task(cfg: OptimizeSDConfig, objective: Any, teacher: Any) -> dict[str, Any]:
    """The particles, their prompt ids, the critic (or None), ``draw`` and ``evaluate``; on a
    field, ``runs.optimize_sd_field.field_task``."""
    from ..sources.particles import Particles

    if cfg.source.kind == "field":
        from .optimize_sd_field import field_task

        critic = _lora_critic(cfg, teacher) if needs_critic(objective) else None
        return field_task(cfg, objective, teacher, critic)

    gen = torch.Generator().manual_seed(cfg.train.seed)
    n, prompts = cfg.source.n_particles, teacher.num_classes
    particles = Particles(n, (teacher.dim,), init_std=cfg.source.init_std, rng=gen)
    labels = torch.arange(n) % prompts
    camera = accepts(objective, "camera")  # ESD at lam = 0: the critic's label is the prompt
    fixed_noise = hasattr(objective, "noise_seed")
    critic = _lora_critic(cfg, teacher) if needs_critic(objective) else None

    def draw(rng: torch.Generator) -> Batch:
        b = cfg.train.batch_size
        idx = torch.arange(n) if b in (0, n) else torch.randperm(n, generator=rng)[:b]
        extra: dict[str, Any] = {"camera": labels[idx]} if camera else {}
        if fixed_noise:
            extra["noise"] = particles.noise[idx]
        return Batch(particles(idx), labels[idx], labels[idx], extra)

    score, seed = _scorer(teacher), cfg.train.seed + 1
    evaluate = lambda p: score(teacher, p.theta.detach(), labels, seed)  # noqa: E731

    def pictures() -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
        z = particles.theta.detach()
        with torch.no_grad():
            images = teacher.decode(z)
        return images, labels, {"latents": z.numpy(), "labels": labels.numpy()}

    return {"source": particles, "critic": critic, "draw": draw, "evaluate": evaluate,
            "pictures": pictures, "what": f"{n} latent particles"}  # fmt: skip


def _guidance(objective: object) -> float | None:
    """The objective's CFG scale, or None where it has none (CSD's and BSD's directions carry
    their own scales; a 1.0 there would claim an unguided run)."""
    g = getattr(objective, "guidance", None)
    return None if g is None else float(g)


def _guidance_text(g: float | None) -> str:
    return "none (the objective has no CFG scale)" if g is None else f"{g:g}"


def _check_images(images: torch.Tensor, source: torch.nn.Module, step: int) -> None:
    """Stop before writing samples that are not finite. A diverged source can keep a finite
    (even zero) loss: at |θ| ~ 1e30 the surrogate's ``θ − sg(θ − g)`` rounds to 0 in float32,
    so nothing non-finite reaches the loop's checks while the decoder returns NaN."""
    if bool(torch.isfinite(images).all()):
        return
    top = max(float(p.detach().abs().max()) for p in source.parameters())
    raise NonFiniteError(
        f"the decoded samples are not finite after step {step}: the source diverged (largest "
        f"|value| {top:.3g}); lower train.lr. Its checkpoints hold the diverged values",
        step,
    )


def run_optimize_sd(
    cfg: OptimizeSDConfig, objective: Any, out: Path, resume: bool = False
) -> dict[str, Any]:
    """Load, optimise, evaluate and write the run folder; returns the final metrics."""
    teacher = load_teacher(cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", to_dict(cfg))
    torch.manual_seed(cfg.train.seed)  # the checkpoints save the global RNG: same seed, same bytes
    task = build_task(cfg, objective, teacher)
    source = task["source"]
    before = task["pictures"]()[0]
    initial_path = out / "initial.json"
    if not initial_path.exists():
        atomic_write_json(initial_path, task["evaluate"](source))
    start = time.perf_counter()
    result = optimize(
        cfg.train, source=source, objective=objective, teacher=teacher, draw=task["draw"],
        evaluate=task["evaluate"], out_dir=out, resume=resume, critic=task["critic"],
        prior=task.get("prior"),
    )  # fmt: skip
    critic = task["critic"]
    images, labels, arrays = task["pictures"]()
    _check_images(images, source, cfg.train.steps)  # before the metrics read them
    metrics = {
        **task["evaluate"](source), "wall_s": time.perf_counter() - start,
        "steps": cfg.train.steps, "guidance": _guidance(objective),
        "trainable_params": {
            cfg.source.kind: sum(p.numel() for p in source.parameters()),
            "critic": 0 if critic is None else sum(p.numel() for p in critic.parameters()),
        },
        "initial": json.loads(initial_path.read_text()),
    }  # fmt: skip
    atomic_write_json(out / "metrics.json", metrics)
    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    np.savez(out / "samples.npz", x=images.flatten(1).numpy(), **arrays)
    _save_grid(out, cfg, images, before, labels, task["what"])
    _write_report(out, cfg, teacher, metrics, result["history"], task["what"])
    return metrics


def _name(cfg: OptimizeSDConfig, objective: Any = None) -> str:
    """The method as a reader knows it: ESD at lam = 0 is VSD."""
    lam = dict(cfg.objective).get("lam", getattr(objective, "lam", None))
    return "vsd (esd, lam = 0)" if cfg.method == "esd" and lam == 0 else cfg.method


def _save_grid(out: Path, cfg: OptimizeSDConfig, images, before, labels, what: str) -> Path:
    """``samples.png``: the source's pictures before and after (particles sorted by prompt; a
    field's ring renders in azimuth order)."""
    from ..eval.plots import save_image_grid

    panels = {"before": before, f"{_name(cfg)}: {what}": images}
    sort = {k: labels for k in panels} if cfg.source.kind == "particles" else None
    return save_image_grid(panels, out / "samples.png", sort, per_panel=min(len(images), 64))


def _stream_lines(cfg: OptimizeSDConfig) -> list[str]:
    """The report's line naming the per-encoder prompt keys set (``runs.sd_prompts``), if any."""
    keys = ("prompts_2", "prompts_3", "negative_prompt_2", "negative_prompt_3")
    given = [f"`{k}={getattr(cfg, k)}`" for k in keys if getattr(cfg, k)]
    return [f"Per-encoder prompts: {', '.join(given)}."] if given else []


def _write_report(
    out: Path,
    cfg: OptimizeSDConfig,
    teacher: Any,
    metrics: dict[str, Any],
    history: list[dict],
    what: str,
) -> None:
    """``report.md``: the run, the metric table over steps and what the figure shows."""
    from ..eval.report import format_value

    rows = [{"step": 0, **metrics["initial"]}, *history, {"step": cfg.train.steps, **metrics}]
    keys = [k for k in (*REPORT_KEYS, *FIELD_KEYS) if k in metrics]
    prompts = teacher.prompt_table.prompts
    critic = (
        f"LoRA rank {cfg.critic.lora_rank}" if metrics["trainable_params"]["critic"] else "none"
    )
    lines = [
        f"# {_name(cfg)} on {what}",
        "",
        f"Teacher `{sd_paths(cfg)[0]}`, {len(prompts)} prompts (first: {prompts[0]!r}); "
        f"guidance {_guidance_text(metrics['guidance'])}.",
        *_stream_lines(cfg),
        "",
        f"Objective: `{cfg.objective}`; critic: {critic}.",
        "",
    ]
    if keys:  # digits-like teacher: the decoded particles scored against held-out digits
        lines += ["| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
        lines += [
            f"| {r['step']} | " + " | ".join(format_value(r.get(k, "")) for k in keys) + " |"
            for r in rows
        ]
        lines += ["", "class_acc: the digits classifier's agreement with each prompt's digit."]
        if cfg.source.kind == "field":
            lines += ["view_spread: RMS pixel distance between ring renders (0: one picture)."]
    lines += [
        "",
        f"Wall time {metrics['wall_s']:.1f} s for {cfg.train.steps} steps. Figure: "
        "`samples.png` (the pictures before and after).",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def param_report(cfg: OptimizeSDConfig, objective: Any) -> dict[str, Any]:
    """``--dry-run``: ``runs.sd.teacher_report`` and the trained parameters (particles, LoRA)."""
    teacher = load_teacher(cfg)
    critic = _lora_critic(cfg, teacher) if needs_critic(objective) else None
    src = cfg.source  # a field: density + RGB per voxel (scene.field3d.VoxelField)
    trained = {
        src.kind: 4 * src.resolution**3 if src.kind == "field" else src.n_particles * teacher.dim,
        "critic": 0 if critic is None else sum(p.numel() for p in critic.parameters()),
    }
    return teacher_report(cfg, teacher) | {"trainable_params": trained}


FAMILY = Family(
    name="optimize-sd",
    help="score distillation as optimization under a text-to-image teacher: latent particles or a "
    "voxel field through the VAE",
    presets=PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=lambda preset, sets: Resolved(*resolve(preset, sets), preset),
    run=lambda r, out, resume: run_optimize_sd(r.config, r.extra, out, resume=resume),
    quick=lambda name: list(QUICK),
    steps_help="particle updates",
    dry_run=lambda r: {"networks": param_report(r.config, r.extra)},
)
