"""``scoredistill distill --teacher DIR``: distil a diffusers teacher into a 1–K-step student.

The teacher is any local diffusers folder (``teachers.diffusers``); the student and the critic
are trainable copies of its network (``sources.diffusers``: DMD2/SiD initialisation); the
objectives are the same files as on the exact testbeds (``objectives``), run unchanged on
``(B, C·H·W)`` images by the same two-player loop (``train.two_player``). The run folder keeps
the distill contract (``samples.npz`` with ``x: (N, C·H·W)`` in the teacher's data range,
``metrics.json``, ``report.md``, PNGs, checkpoints) and adds ``pipeline/``: a stock diffusers
folder that ``DiffusionPipeline.from_pretrained`` loads (``export.py``).

Metrics: for 8×8 one-channel teachers (digits), the locally trained digits feature network
(``eval.features``) gives FD, precision/recall and class accuracy, beside the teacher's best
sampler at each NFE (``eval.image_baseline``); other shapes report wall times and samples only.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch

from ..config import ConfigError, NonNegativeFloat, PositiveInt, Range, to_dict
from ..config import resolve as resolve_config
from ..io import atomic_write_json
from ..objectives import OBJECTIVES
from ..presets.unet import DESCRIPTIONS, PRESETS, QUICK
from ..train.common import JsonlLogger, run_device
from ..train.two_player import TwoPlayerConfig, train_two_player
from .family import Family, Resolved, report_section

__all__ = ["BUNDLED_TEACHER", "FAMILY", "StudentConfig", "UNetDistillConfig", "run_unet"]

BUNDLED_TEACHER = Path(__file__).resolve().parents[3] / "assets" / "teachers" / "digits-unet"


@dataclass(frozen=True)
class StudentConfig:
    steps: PositiveInt = 1  # student NFE K (LCM's grid: 999 for K = 1; 999/749/499/249 for K = 4)
    # the top native timestep; -1: the table's last (DMD2's 999)
    init_timestep: Annotated[int, Range(-1, note="-1: the table's last")] = -1
    sigma_init: NonNegativeFloat = 0.0  # > 0: start where sigma/alpha = sigma_init (SiD's 2.5)
    gradient_checkpointing: bool = False  # recompute activations in backward: memory for time
    # attention kernels of teacher, student and critic: sdpa (fused) or eager (explicit softmax)
    attention: Literal["sdpa", "eager"] = "sdpa"


@dataclass(frozen=True)
class EvalConfig:
    samples: PositiveInt = 1000  # student and teacher draws scored at the end
    nfe: tuple[int, ...] = (1, 2, 4, 8)  # teacher rows of report.md (best sampler per NFE)
    samplers: tuple[str, ...] = ("ddim", "dpmpp-2m", "heun", "euler")
    panel_nfe: PositiveInt = 32  # the teacher's picture in samples.png (DPM-Solver++(2M))


@dataclass(frozen=True)
class UNetDistillConfig:
    method: str = "dmd"
    teacher: str = ""  # a local diffusers folder; "" = the bundled digits UNet
    scheduler: str = ""  # a scheduler folder for a bare model folder
    variant: str = ""  # weight variant ("fp16"); "": standard, or the only one (fp16-only)
    # a class-conditional UNet's classes: None reads num_class_embeds = K + 1 as K classes and
    # a null row K (the library's trainer); K + 1 declares every row a class (no null row)
    num_classes: PositiveInt | None = None
    data: str = "digits"  # real images (GAN's real class): "digits" or a folder of PNG/JPEG
    objective: dict[str, Any] = field(default_factory=dict)
    train: TwoPlayerConfig = field(default_factory=TwoPlayerConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast, fp32 master weights
    export: bool = True  # write OUT/pipeline/ (a stock diffusers folder) or OUT/student/


def teacher_path(cfg: UNetDistillConfig) -> Path:
    """The teacher folder: ``cfg.teacher`` or the bundled digits UNet."""
    if cfg.teacher:
        return Path(cfg.teacher)
    if not BUNDLED_TEACHER.is_dir():
        raise ConfigError(
            f"no bundled teacher at {BUNDLED_TEACHER}; pass --teacher DIR (a diffusers folder) "
            "or train one: scoredistill train-teacher --arch unet --data digits --out DIR"
        )
    return BUNDLED_TEACHER


def load_teacher(cfg: UNetDistillConfig):
    """The teacher, its attention blocks set to ``student.attention`` (copies inherit it)."""
    from ..sources.diffusers import set_attention
    from ..teachers.diffusers import load_diffusers_teacher
    from ..teachers.diffusers_check import check_forward

    teacher = load_diffusers_teacher(
        teacher_path(cfg),
        scheduler=cfg.scheduler or None,
        variant=cfg.variant,
        num_classes=cfg.num_classes,
    )
    set_attention(teacher.model, cfg.student.attention)
    teacher = teacher.to(run_device())
    label = torch.zeros(1, dtype=torch.long) if teacher.num_classes else None
    check_forward(teacher, teacher_path(cfg), label)  # --dry-run too: before a long job
    return teacher


def load_real(cfg: UNetDistillConfig, teacher) -> Any:
    """The real images (``ImageData``), checked against the teacher's shape and classes."""
    from ..data import load_digits_images, load_image_folder

    # no silent resizing: images of another size or channel count are refused below
    data = load_digits_images("train") if cfg.data == "digits" else load_image_folder(cfg.data)
    if tuple(data.x.shape[1:]) != tuple(teacher.shape):
        which = "the default, sklearn's digits," if cfg.data == "digits" else cfg.data
        raise ConfigError(
            f"config key 'data': images of shape {tuple(data.x.shape[1:])} ({which}) do not fit "
            f"the teacher's {tuple(teacher.shape)} (channels, height, width); give a folder of "
            "PNG/JPEG images of the teacher's shape: --set data=DIR"
        )
    if teacher.num_classes and data.labels is not None and data.num_classes > teacher.num_classes:
        raise ConfigError(
            f"config key 'data': {data.num_classes} classes, the teacher knows "
            f"{teacher.num_classes}"
        )
    return data


def _label_sampler(teacher):
    """``(n, rng) -> labels`` (``eval.image_baseline.draw_labels``), None when unconditional."""
    from ..eval.image_baseline import draw_labels

    return (lambda n, rng: draw_labels(teacher, n, rng)) if teacher.num_classes else None


def _real_sampler(data, conditional: bool):
    def sample(n: int, rng: torch.Generator):
        idx = torch.randint(data.x.shape[0], (n,), generator=rng)
        labels = data.labels[idx] if conditional and data.labels is not None else None
        return data.x[idx].flatten(1), labels

    return sample


def digits_like(teacher) -> bool:
    """Whether the digits feature network can score this teacher's samples."""
    return tuple(teacher.shape) == (1, 8, 8)


def student_draw(generator, teacher, n: int, seed: int, chunk: int = 500):
    """The fixed evaluation draw ``(x (n, dim), labels | None, seconds)``, in chunks; ``x`` on
    the CPU whatever the generator's device (metrics, plots and ``samples.npz`` read it there)."""
    rng = torch.Generator().manual_seed(seed + 12345)
    sample_cond = _label_sampler(teacher)
    labels = sample_cond(n, rng) if sample_cond else None
    z = generator.sample_latent(n, rng)
    start = time.perf_counter()
    with torch.no_grad():
        x = torch.cat(
            [
                generator(
                    z[i : i + chunk], None if labels is None else labels[i : i + chunk], rng=rng
                )
                for i in range(0, n, chunk)
            ]
        ).cpu()
    return x, labels, time.perf_counter() - start


def score(teacher, x: torch.Tensor, labels, seed: int) -> dict[str, Any]:
    """Image metrics of a draw (digits-shaped teachers), else only its size."""
    if not digits_like(teacher):
        return {"n": int(x.shape[0])}
    from ..eval.features import image_metrics

    return image_metrics(x.reshape(-1, *teacher.shape).clamp(-1, 1), labels, seed=seed)


def _generator(cfg: UNetDistillConfig, teacher, denoiser=None):
    """The student: a trainable copy of the teacher, or ``denoiser`` itself (``--dry-run``
    reads its grid off the teacher without copying the network)."""
    from ..sources.diffusers import DiffusersGenerator

    s = cfg.student
    return DiffusersGenerator(
        teacher,
        steps=s.steps,
        init_timestep=None if s.init_timestep < 0 else s.init_timestep,
        sigma_init=s.sigma_init if s.sigma_init > 0 else None,
        gradient_checkpointing=s.gradient_checkpointing and denoiser is None,
        denoiser=denoiser,
    )


def _build(cfg: UNetDistillConfig, teacher, gan_head: bool):
    from ..sources.diffusers import make_diffusers_critic

    gen = _generator(cfg, teacher)  # first: the critic's head draws from the global RNG
    critic = make_diffusers_critic(
        teacher, logit_head=gan_head, gradient_checkpointing=cfg.student.gradient_checkpointing
    )
    return gen, critic


def _warn_if_not_exportable(cfg: UNetDistillConfig, gen, teacher) -> None:
    """Say before training, not after it, that no stock scheduler will reproduce the student."""
    from ..export import export_plan

    if cfg.export and (plan := export_plan(gen, teacher)).startswith("none: "):
        warnings.warn(f"the student will not be exported: {plan[6:]}", stacklevel=2)


def label_note(teacher) -> str:
    """How the teacher's label rows were read, and the key that reads them the other way."""
    k, null = teacher.num_classes, teacher.null_index
    if not k:
        return "unconditional"
    if null is None:
        return f"{k} classes, no null row (every label row is a class)"
    return (
        f"{k} classes and null row {null} (the library's trainer's layout); if all {k + 1} rows "
        f"are classes: --set num_classes={k + 1}"
    )


def teacher_summary(cfg, teacher) -> dict[str, Any]:
    """The ``--dry-run`` lines on the teacher: folder, shape, labels, prediction type."""
    return {
        "teacher_folder": str(teacher_path(cfg)),
        "shape": list(teacher.shape),
        "num_classes": teacher.num_classes,
        "labels": label_note(teacher),
        "prediction_type": teacher.prediction_type,
    }


def param_report(cfg: UNetDistillConfig) -> dict[str, Any]:
    """``--dry-run``: parameter counts and a peak-memory estimate per network (fp32 weights;
    Adam keeps two moments and the gradient: 4 copies of a trained network, 1 of the frozen
    teacher; activations not included)."""
    from ..export import export_plan

    teacher = load_teacher(cfg)
    params = sum(p.numel() for p in teacher.model.parameters())
    mib = 4 * params / 2**20
    gen = _generator(cfg, teacher, denoiser=teacher)  # the student's grid; no copy
    return {
        **teacher_summary(cfg, teacher),
        "export": export_plan(gen, teacher) if cfg.export else "off (export=false)",
        "params": {"teacher (frozen)": params, "student": params, "critic": params},
        "weights_and_optimizer_MiB": {
            "teacher (frozen)": round(mib, 2),
            "student": round(4 * mib, 2),
            "critic": round(4 * mib, 2),
            "total": round(9 * mib, 2),
        },
    }


def run_unet(
    cfg: UNetDistillConfig, objective: Any, out: Path, resume: bool = False
) -> dict[str, Any]:
    """Load, train, evaluate, export and write the run folder; returns the final metrics."""
    from ..eval.image_baseline import best_rows, image_rows
    from .unet_report import write_outputs

    teacher = load_teacher(cfg).to(run_device())  # players are copied from it: same device
    needs_real = _needs_real(objective)
    data = load_real(cfg, teacher) if needs_real else None
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(out / "config.json", to_dict(cfg))
    torch.manual_seed(cfg.train.seed)
    gen, critic = _build(cfg, teacher, needs_real)
    _warn_if_not_exportable(cfg, gen, teacher)
    n_eval = min(cfg.eval.samples, 500)

    def evaluate(generator) -> dict[str, Any]:
        x, labels, _ = student_draw(generator, teacher, n_eval, cfg.train.seed)
        return score(teacher, x, labels, cfg.train.seed)

    start = time.perf_counter()
    with torch.autocast(run_device().type, torch.bfloat16, enabled=cfg.precision == "bf16"):
        result = train_two_player(
            cfg.train,
            objective=objective,
            generator=gen,
            critic=critic,
            teacher=teacher,
            sample_latent=lambda n, rng: gen.sample_latent(n, rng),
            sample_cond=_label_sampler(teacher),
            evaluate=evaluate,
            out_dir=out,
            resume=resume,
            sample_real=_real_sampler(data, teacher.num_classes > 0) if needs_real else None,
        )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # training is over and rank 0 scores alone: torchmetrics' FID would otherwise gather its
        # state from every rank of the live process group, waiting on ranks that have left
        torch.distributed.destroy_process_group()
    if not result["is_main_process"]:  # one writer per run folder
        return {}
    ema = result["ema"]
    x, labels, sample_s = student_draw(ema, teacher, cfg.eval.samples, cfg.train.seed)
    metrics = {
        **score(teacher, x, labels, cfg.train.seed + 1),
        "nfe": ema.nfe,
        "wall_s": time.perf_counter() - start,
        "world_size": result["world_size"],
        "sample_s": sample_s,
    }
    rows = image_rows(
        teacher, cfg.eval.samplers, cfg.eval.nfe, cfg.eval.samples, cfg.train.seed, score
    )
    metrics["teacher_best"] = best_rows(rows, cfg.eval.nfe)
    atomic_write_json(out / "metrics.json", metrics)
    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    arrays = {"x": x.numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
    np.savez(out / "samples.npz", **arrays)
    write_outputs(out, cfg, teacher, ema, x, labels, metrics, rows, result["history"])
    return metrics


def _resolve_run(preset: str | None, sets: list[str]) -> Resolved:
    cfg, objective = resolve_config(UNetDistillConfig(), PRESETS, preset, sets, OBJECTIVES)
    teacher = load_teacher(cfg)  # a bad folder, data or shape fails before any training
    if _needs_real(objective):
        load_real(cfg, teacher)
    _check_start(cfg, teacher)
    return Resolved(cfg, objective, preset)


def _check_start(cfg: UNetDistillConfig, teacher) -> None:
    """The student's start (``init_timestep``, ``sigma_init``) is a VP table's timestep: on an
    EDM or flow teacher it starts at the teacher's top, so both keys must be off there."""
    s = cfg.student
    if teacher.family == "vp" or (s.init_timestep < 0 and s.sigma_init <= 0):
        return
    key, value = (
        ("sigma_init", s.sigma_init) if s.sigma_init > 0 else ("init_timestep", s.init_timestep)
    )
    off = {"sigma_init": "0", "init_timestep": "-1"}[key]
    raise ConfigError(
        f"config key 'student.{key}': {value} picks a start on a VP table, and this teacher is "
        f"{teacher.family!r}; --set student.{key}={off} starts the student at the teacher's top"
    )


def real_note(cfg: UNetDistillConfig, objective: Any) -> str:
    """``--dry-run``: which real images the run reads, if any (the ``data`` key)."""
    if not _needs_real(objective):
        return f"none: {cfg.method} reads only the teacher, so 'data' is unused"
    where = "sklearn's digits (train split)" if cfg.data == "digits" else cfg.data
    return f"{where}, for the GAN term's real class"


def _needs_real(objective: Any) -> bool:
    """Whether the objective reads real images (the GAN term's real class): without it the
    ``data`` key is unused, so a teacher of any shape needs no image folder."""
    return bool(getattr(objective, "needs_real", False))


FAMILY = Family(
    name="distill-unet",
    help="distil a diffusers teacher folder into a 1-4-step student and export a pipeline",
    presets=PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=_resolve_run,
    run=lambda r, out, resume: run_unet(r.config, r.extra, out, resume=resume),
    quick=lambda name: list(QUICK),
    steps_help="generator updates",
    epilogue=report_section,
    dry_run=lambda r: {
        "networks": param_report(r.config),
        "real_images": real_note(r.config, r.extra),
    },
)
