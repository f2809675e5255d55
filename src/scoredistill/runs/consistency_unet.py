"""``scoredistill distill --preset cd-unet|scm-unet --teacher DIR``: consistency distillation of a
diffusers teacher folder into a 1-4-step student exported as a stock pipeline.

The student is LCM's consistency function on a trainable copy of the teacher's network
(``sources.diffusers_consistency.LCMConsistency``), trained by the same CD objective as the exact
testbeds (``objectives/cd.py``: draw, teacher DDIM solve, distance) or by sCM's continuous-time
objective (``objectives/scm.py``) on the same network seen in TrigFlow coordinates
(``TrigFlowLCM``: forward-mode JVP through the UNet, its attention made forward-AD-able by
``forward_ad_attention``), in the same consistency loop
(``train.consistency``: EMA target, evaluated EMA, checkpoints, ``--resume``), on the real images
the teacher was trained on (``data``, as LCM noises real data). The teacher, the data and the
scores are the ``distill-unet`` family's (``runs.unet``: FD, precision/recall and class accuracy
of the digits feature network, beside the teacher's best sampler per NFE).

The run folder: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``metrics.json`` (the EMA
student at ``student.sample_steps`` at the top level, every step count of ``eval.steps`` under
``by_steps``, ``teacher_best``), ``samples.npz``, ``samples.png``, ``curves.png``, ``report.md``
and ``pipeline/``: ``ConsistencyModelPipeline`` + ``LCMScheduler`` (``export_consistency.
export_consistency_pipeline``) that ``DiffusionPipeline.from_pretrained`` loads and runs at any
step count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import ConfigError, PositiveFloat, PositiveInt, to_dict
from ..config import resolve as resolve_config
from ..io import atomic_write_json
from ..objectives.cd import CD
from ..objectives.scm import SCM
from ..presets.consistency_unet import DESCRIPTIONS, PRESETS, QUICK
from ..schedules import log_snr
from ..train.common import JsonlLogger
from ..train.consistency import ConsistencyLoopConfig, train_consistency
from . import unet
from .family import Family, Resolved, report_section

__all__ = ["FAMILY", "METHODS", "ConsistencyUNetConfig", "EvalConfig", "StudentConfig", "run"]

METHODS: dict[str, type] = {"cd": CD, "scm": SCM}


@dataclass(frozen=True)
class StudentConfig:
    timestep_scaling: PositiveFloat = 10.0  # LCM's c_skip/c_out scale (LCMScheduler's default)
    sample_steps: PositiveInt = 1  # steps of samples.npz and the top-level metrics
    # scm: LCM grid size the student samples and exports on (cd: objective.grid // skip)
    original_steps: PositiveInt = 50
    # scm: the grid's top timestep is the highest with log-SNR >= top_log_snr; None: LCM's grid
    # to k = N - 1 (cd: objective.top_log_snr; objectives/cd.py)
    top_log_snr: float | None = None
    sigma_data: PositiveFloat = 0.5  # scm: TrigFlow's sigma_d (sCM's, images in [-1, 1])
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "eager"] = "sdpa"  # attention kernels (runs.unet.load_teacher)


@dataclass(frozen=True)
class EvalConfig(unet.EvalConfig):
    steps: tuple[PositiveInt, ...] = (1, 2, 4)  # student step counts scored at the end


@dataclass(frozen=True)
class ConsistencyUNetConfig:
    method: str = "cd"
    teacher: str = ""  # a local diffusers folder; "" = the bundled digits UNet
    scheduler: str = ""  # a scheduler folder for a bare model folder
    variant: str = ""  # weight variant ("fp16"); "": standard, or the only one (fp16-only)
    # a class-conditional UNet's classes: None reads num_class_embeds = K + 1 as K classes and
    # a null row K (the library's trainer); K + 1 declares every row a class (no null row)
    num_classes: PositiveInt | None = None
    data: str = "digits"  # the images CD noises: "digits" or a folder of PNG/JPEG
    objective: dict[str, Any] = field(default_factory=dict)
    train: ConsistencyLoopConfig = field(default_factory=ConsistencyLoopConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: bool = True  # write OUT/pipeline/


def _grid(cfg: ConsistencyUNetConfig, objective: CD | SCM, teacher) -> tuple[int, int]:
    """``(m, stride)`` of the LCM grid the student samples on, ``j stride - 1`` for ``j = 1..m``:
    CD's kept solver starts and skip, or ``student.original_steps``' grid (stride ``N // m``)
    kept up to its highest timestep with log-SNR ``>= student.top_log_snr``."""
    if isinstance(objective, CD):
        return objective.starts(teacher.schedule), objective.skip
    m, n, top = cfg.student.original_steps, teacher.native_schedule.n, cfg.student.top_log_snr
    stride = n // m
    ks = torch.arange(1, m + 1, dtype=torch.float64) * stride - 1
    lam = log_snr(teacher.native_schedule, ks / (n - 1))
    kept = m if top is None else int((lam >= top).sum())
    if kept == 0:
        raise ConfigError(
            f"config key 'student.top_log_snr': no grid timestep has log-SNR >= {top} "
            f"(timestep {stride - 1}: {float(lam[0]):.3g})"
        )
    return kept, stride


def _check(cfg: ConsistencyUNetConfig, objective: CD | SCM, teacher) -> None:
    """The teacher has a table the objective's grid can be laid on, and the evaluated step counts
    fit the grid; ``ConfigError`` naming the key otherwise."""
    if teacher.family != "vp" or teacher.continuous:
        raise ConfigError(
            f"config key 'teacher': LCM's grid needs a VP-table teacher (DDPM, DDIM, ...), not a "
            f"{type(teacher.scheduler).__name__}"
        )
    n = teacher.native_schedule.n
    if isinstance(objective, SCM):
        if cfg.student.original_steps > n:
            raise ConfigError(
                f"config key 'student.original_steps': {cfg.student.original_steps} exceeds the "
                f"teacher's {n} timesteps"
            )
    else:
        _check_cd(objective, teacher)
    m, _ = _grid(cfg, objective, teacher)
    bad = [k for k in (*cfg.eval.steps, cfg.student.sample_steps) if k > m]
    if bad:
        raise ConfigError(f"config key 'eval.steps': {bad} exceed the {m} grid timesteps")


def _check_cd(objective: CD, teacher) -> None:
    """CD's solver grid is LCM's on the teacher's own table."""
    if objective.spacing != "table":
        raise ConfigError(
            "config key 'objective.spacing': the exported LCMScheduler runs LCM's grid on the "
            "teacher's table; valid: table"
        )
    n = teacher.native_schedule.n
    if objective.grid != n:
        raise ConfigError(
            f"config key 'objective.grid' must equal the teacher's {n} timesteps (got "
            f"{objective.grid})"
        )


def _resolve(preset: str | None, sets: list[str]) -> Resolved:
    cfg, objective = resolve_config(ConsistencyUNetConfig(), PRESETS, preset, sets, METHODS)
    teacher = unet.load_teacher(cfg)  # a bad folder, data or grid fails before any training
    unet.load_real(cfg, teacher)
    _check(cfg, objective, teacher)
    return Resolved(cfg, objective, preset)


def _student(cfg: ConsistencyUNetConfig, objective: CD | SCM, teacher):
    """CD: the ``LCMConsistency``; sCM: its ``TrigFlowLCM`` view (forward-AD attention when the
    JVP is forward mode)."""
    from ..sources.diffusers_consistency import LCMConsistency, TrigFlowLCM, forward_ad_attention

    m, stride = _grid(cfg, objective, teacher)
    torch.manual_seed(cfg.train.seed)
    lcm = LCMConsistency(
        teacher,
        original_steps=m,
        stride=stride,
        timestep_scaling=cfg.student.timestep_scaling,
        gradient_checkpointing=cfg.student.gradient_checkpointing,
    )
    if isinstance(objective, CD):
        return lcm
    if objective.jvp == "forward":
        forward_ad_attention(lcm.denoiser.model)
    return TrigFlowLCM(lcm, cfg.student.sigma_data)


def _score_steps(student, teacher, steps: int, n: int, seed: int, score_seed: int):
    """``(metrics, x, labels)`` of the ``steps``-step sampler on the family's fixed draw."""
    from ..sources.diffusers_consistency import LCMRollout

    x, labels, wall = unet.student_draw(LCMRollout(student, steps), teacher, n, seed)
    return {**unet.score(teacher, x, labels, score_seed), "nfe": steps, "sample_s": wall}, x, labels


def run(cfg: ConsistencyUNetConfig, objective: CD | SCM, out: Path, resume: bool = False) -> dict:
    """Load, train, evaluate, export and write the run folder; returns the final metrics."""
    from ..eval.image_baseline import best_rows, image_rows
    from ..export_consistency import export_consistency_pipeline
    from ..sources.diffusers_consistency import LCMRollout
    from .unet_report import write_outputs

    teacher = unet.load_teacher(cfg)
    data = unet.load_real(cfg, teacher)
    _check(cfg, objective, teacher)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", to_dict(cfg))
    student = _student(cfg, objective, teacher)
    seed, k = cfg.train.seed, cfg.student.sample_steps
    n_eval = min(cfg.eval.samples, cfg.train.eval_samples)
    start = time.perf_counter()
    result = train_consistency(
        cfg.train, objective=objective, student=student, teacher=teacher,
        sample_data=unet._real_sampler(data, teacher.num_classes > 0),
        evaluate=lambda m: _score_steps(m, teacher, k, n_eval, seed, seed)[0],
        out_dir=out, resume=resume, desc=f"{cfg.method} unet",
    )  # fmt: skip
    ema, train_s = result["ema"], time.perf_counter() - start
    by_steps, draws = {}, {}
    for steps in sorted({*cfg.eval.steps, k}):
        row, x, labels = _score_steps(ema, teacher, steps, cfg.eval.samples, seed, seed + 1)
        by_steps[str(steps)], draws[steps] = row, (x, labels)
    metrics = {**by_steps[str(k)], "wall_s": train_s, "by_steps": by_steps}
    rows = image_rows(teacher, cfg.eval.samplers, cfg.eval.nfe, cfg.eval.samples, seed, unet.score)
    metrics["teacher_best"] = best_rows(rows, cfg.eval.nfe)
    atomic_write_json(out / "metrics.json", metrics)
    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    x, labels = draws[k]
    arrays = {"x": x.numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
    np.savez(out / "samples.npz", **arrays)

    def export() -> str:
        lcm = getattr(ema, "f", ema)  # sCM's TrigFlowLCM wraps the exported LCM network
        path = export_consistency_pipeline(lcm, teacher, out, note=f"scoredistill {cfg.method}")
        return f"`{path}` (load with `DiffusionPipeline.from_pretrained`)"

    rollout = LCMRollout(ema, k)
    write_outputs(
        out, cfg, teacher, rollout, x, labels, metrics, rows, result["history"], export=export
    )
    _append_steps(out / "report.md", by_steps)
    return metrics


def _append_steps(report: Path, by_steps: dict[str, dict[str, Any]]) -> None:
    """A table of every evaluated step count at the end of ``report.md``."""
    from ..eval.report import format_value

    keys = [k for k in ("fd", "precision", "recall", "class_acc") if k in by_steps[min(by_steps)]]
    lines = ["## The student at each step count (same draw)", ""]
    lines += ["| steps | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for steps, m in by_steps.items():
        lines.append(f"| {steps} | " + " | ".join(format_value(m[key]) for key in keys) + " |")
    with report.open("a", encoding="utf-8") as f:
        f.write("\n" + "\n".join(lines) + "\n")


def param_report(cfg: ConsistencyUNetConfig) -> dict[str, Any]:
    """``--dry-run``: parameter counts and fp32 memory of the teacher, the student (weights,
    gradient and two AdamW moments), its EMA target and its evaluated EMA; activations not
    included."""
    teacher = unet.load_teacher(cfg)
    params = sum(p.numel() for p in teacher.model.parameters())
    mib = 4 * params / 2**20
    copies = {"teacher (frozen)": 1, "student": 4, "target (EMA 0.95)": 1, "ema (evaluated)": 1}
    return {
        **unet.teacher_summary(cfg, teacher),
        "params": dict.fromkeys(copies, params),
        "weights_and_optimizer_MiB": {k: round(c * mib, 2) for k, c in copies.items()}
        | {"total": round(sum(copies.values()) * mib, 2)},
    }


FAMILY = Family(
    name="distill-consistency-unet",
    help="consistency distillation (LCM-style CD or sCM) of a diffusers teacher folder into a "
    "1-4-step student and a stock LCM pipeline",
    presets=PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=_resolve,
    run=lambda r, out, resume: run(r.config, r.extra, out, resume=resume),
    quick=lambda name: list(QUICK),
    steps_help="student updates",
    epilogue=report_section,
    dry_run=lambda r: {"networks": param_report(r.config)},
)
