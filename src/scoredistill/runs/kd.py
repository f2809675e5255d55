"""``scoredistill kd``: supervised knowledge-distillation runs from presets.

A run trains (or reloads) a teacher on the task, the student with the method, optionally a
*reference* student with another method (PLD vs KD, LELP vs KD, ACAM-KD vs FitNet, …), and the
*same* student without the teacher (cross-entropy on the labels it may see): the gap to that
baseline is what the teacher bought. Methods: :mod:`scoredistill.kd.methods`; presets:
:mod:`scoredistill.presets.kd`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import (
    ConfigError,
    LearningRate,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    UnitFloat,
    to_dict,
)
from ..config import resolve as resolve_config
from ..io import atomic_write_json, load_safetensors, save_safetensors_atomic
from ..kd.methods import METHODS, SECTIONS, Plan, RetrievalConfig
from ..kd.methods.base import ce
from ..kd.models import TeacherScores
from ..kd.scoring import headline, predict, scores
from ..kd.tasks import RETRIEVAL, TASKS, Task, load_task
from ..presets.kd import DESCRIPTIONS, PRESETS, QUICK
from ..train.common import JsonlLogger
from ..train.kd import KDBatch, KDTrainConfig, train_kd
from .family import Family, Resolved
from .kd_dry_run import param_report
from .kd_nets import build_plan, teacher_net

__all__ = [
    "FAMILY",
    "METHODS",
    "PRESETS",
    "QUICK",
    "KDConfig",
    "TeacherConfig",
    "build_plan",
    "resolve",
    "run_kd",
]


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher network and its training budget (CE; BCE on graded relevance for retrieval)."""

    kind: Literal["mlp", "cnn"] = "mlp"  # retrieval always uses a cross-encoder MLP
    widths: tuple[int, ...] = (256, 256)  # mlp / cross-encoder hidden widths
    channels: tuple[int, ...] = (32, 32)  # cnn conv channels (8x8 maps)
    steps: PositiveInt = 1000
    batch_size: PositiveInt = 128
    # Adam; 1e-2 left the 256-wide teacher at 0.970-0.976 (1e-3: 0.980-0.983)
    lr: LearningRate = 1e-3
    # True: every clean training label (it stands for a pre-trained model); False: the student's
    clean_labels: bool = True


@dataclass(frozen=True)
class KDRunConfig:
    """The fields of every KD run: method, task, student, loss fields, label access, loop and
    teacher. :class:`KDConfig` adds one section per method that has fields of its own."""

    method: str = "kd"
    reference: str = ""  # a second method trained from the same init ("" = none)
    task: str = "digits"
    model: Literal["mlp", "cnn"] = "mlp"  # the student (retrieval: a bi-encoder of MLP towers)
    student_widths: tuple[int, ...] = (32,)
    student_channels: tuple[int, ...] = (8,)  # cnn student
    temperature: PositiveFloat = 4.0  # T, on both sides (PLD: tau on the teacher)
    alpha: UnitFloat = 0.5  # weight of the label CE; the divergence gets 1 - alpha
    beta: UnitFloat = 0.5  # jsd: JSD(beta) (0 forward KL, 1 reverse KL)
    bdkd_mode: Literal["hard", "soft"] = "hard"  # bdkd: entropy-gap switch, "hard" | "soft"
    bdkd_delta: NonNegativeFloat = 2.0  # bdkd: weight of the emphasised direction [R]
    n_labels: NonNegativeInt = 0  # training labels the student may use (stratified); 0 = all
    label_noise: UnitFloat = 0.0  # fraction of training labels replaced by another class
    data_seed: Seed = 0  # split, label subset and noise
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    train: KDTrainConfig = field(default_factory=KDTrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


# the methods' own sections (``lelp``, ``ofa``, ``acam``, ``aif``) come from the registry, so a
# new method with fields of its own needs no edit here
KDConfig = dataclasses.make_dataclass(
    "KDConfig",
    [(name, cls, field(default_factory=cls)) for name, cls in SECTIONS.items()],
    bases=(KDRunConfig,),
    frozen=True,
)
KDConfig.__module__ = __name__  # make_dataclass's ``module`` argument is Python >= 3.12
KDConfig.__doc__ = (
    "One KD run: the fields of :class:`KDRunConfig` and a section per method "
    f"({', '.join(SECTIONS)}; see ``scoredistill.kd.methods``)."
)


def resolve(preset: str | None, sets: list[str]) -> KDConfig:
    """Preset + ``key=value`` overrides -> a validated ``KDConfig``."""
    cfg, _ = resolve_config(KDConfig(), PRESETS, preset, sets)
    for key in ("method", "reference"):
        name = getattr(cfg, key)
        if name not in METHODS and not (key == "reference" and name == ""):
            raise ConfigError(f"unknown {key} {name!r}; valid: {', '.join(METHODS)}")
    if cfg.task not in TASKS and cfg.task != RETRIEVAL:
        raise ConfigError(f"unknown task {cfg.task!r}; valid: {', '.join([*TASKS, RETRIEVAL])}")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ConfigError(f"config key 'alpha' must be in [0, 1], got {cfg.alpha}")
    if cfg.temperature <= 0:
        raise ConfigError(f"config key 'temperature' must be > 0, got {cfg.temperature}")
    return cfg


# ----------------------------------------------------------------------------- teacher
def _teacher_data(cfg: KDConfig, task: Task) -> tuple[Tensor, Tensor, Any]:
    """Training inputs, targets and loss of the teacher."""
    if task.relevance_teacher is not None:  # graded relevance in [0, 1] per pair
        top = float(task.relevance_teacher.max())

        def bce(b: KDBatch) -> Tensor:
            return F.binary_cross_entropy_with_logits(b.student_logits, b.labels / top)

        return task.x_teacher, task.relevance_teacher, bce

    def loss(b: KDBatch) -> Tensor:
        return ce(b.student_logits, b.labels)

    if cfg.teacher.clean_labels:
        return task.x_train, task.y_clean, loss
    return task.x_train[task.labelled], task.y_train[task.labelled], loss


def _loop_cfg(cfg: KDConfig, steps: int, batch: int, lr: float) -> KDTrainConfig:
    return dataclasses.replace(
        cfg.train,
        steps=steps,
        batch_size=batch,
        lr=lr,
        eval_every=0,
        checkpoint_every=min(cfg.train.checkpoint_every, steps),
    )


def _teacher(
    cfg: KDConfig, task: Task, out: Path, resume: bool, cache: Path | None = None
) -> tuple[nn.Module, dict]:
    """Train the teacher on the task, or reload ``out/teacher`` if it matches ``cfg``.

    ``cache``: a folder of teachers shared between runs (the benchmark), keyed by a hash of
    the teacher's settings; a match is copied into ``out/teacher`` instead of retraining.
    """
    folder = out / "teacher"
    key = {"task": cfg.task, "data_seed": cfg.data_seed, "seed": cfg.train.seed}
    key |= {"teacher": to_dict(cfg.teacher)}
    if not cfg.teacher.clean_labels:
        key |= {"n_labels": cfg.n_labels, "label_noise": cfg.label_noise}
    teacher = teacher_net(cfg, task)
    shared = None
    if cache is not None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        shared = cache / digest
        if (shared / "teacher.json").exists() and not (folder / "teacher.json").exists():
            shutil.copytree(shared, folder, dirs_exist_ok=True)
    info_path = folder / "teacher.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info["key"] != key:
            raise ConfigError(
                f"{folder} holds a teacher trained with {info['key']}; use a new --out"
            )
        teacher.load_state_dict(load_safetensors(folder / "model.safetensors"))
    else:
        x, y, loss = _teacher_data(cfg, task)
        t = cfg.teacher
        folder.mkdir(parents=True, exist_ok=True)
        loop = _loop_cfg(cfg, t.steps, t.batch_size, t.lr)
        result = train_kd(
            loop, student=teacher, loss_fn=loss, x=x, labels=y, out_dir=folder, resume=resume,
            desc="teacher",
        )  # fmt: skip
        info = {"key": key, "wall_s": result["wall_s"], **scores(teacher, task, None)}
        if result["is_main_process"]:
            save_safetensors_atomic(teacher.state_dict(), folder / "model.safetensors")
            atomic_write_json(info_path, info)
            if shared is not None and not shared.exists():
                tmp = shared.with_name(f"{shared.name}.tmp{os.getpid()}")
                shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("checkpoints"))
                try:  # atomic publish; a concurrent run may have published the same teacher
                    tmp.rename(shared)
                except OSError:
                    shutil.rmtree(tmp, ignore_errors=True)
    if task.relevance_test is not None:
        rc = cfg.retrieval
        teacher = TeacherScores(teacher, squash=rc.squash, offset_std=rc.offset_std)
    return teacher.eval(), info


def _student_labels(task: Task) -> Tensor:
    """Training labels the student may use, ``-1`` elsewhere."""
    return torch.where(task.labelled, task.y_train, torch.full_like(task.y_train, -1))


def _train_arm(
    cfg: KDConfig, task: Task, teacher: nn.Module | None, out: Path, resume: bool, **kw: Any
) -> tuple[Plan, dict[str, Any]]:
    """Train one arm (method, reference or baseline) of the run into ``out``."""
    plan = build_plan(cfg, task, teacher, kw.pop("reference", None))
    labels = _student_labels(task)
    x = task.x_train
    if teacher is None:  # the baseline trains on the labelled rows only
        x, labels = x[labels >= 0], labels[labels >= 0]
    loop = _loop_cfg(cfg, cfg.train.steps, cfg.train.batch_size, cfg.train.lr)
    loop = dataclasses.replace(loop, eval_every=kw.pop("eval_every", 0))
    result = train_kd(
        loop,
        student=plan.student,
        loss_fn=plan.loss,
        x=x,
        labels=labels,
        teacher=teacher,
        student_features=plan.student_features,
        teacher_features=plan.teacher_features,
        out_dir=out,
        resume=resume,
        desc=cfg.method,
        **kw,
    )
    return plan, result


# ----------------------------------------------------------------------------- the run
def run_kd(
    cfg: KDConfig, out: Path, resume: bool = False, teacher_cache: Path | None = None
) -> dict[str, Any]:
    """Teacher, reference (optional), student with ``cfg.method``, no-teacher baseline.

    ``teacher_cache``: see :func:`_teacher` (the benchmark shares teachers across presets).
    """
    task = load_task(
        cfg.task, seed=cfg.data_seed, n_labels=cfg.n_labels, label_noise=cfg.label_noise
    )
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(out / "config.json", to_dict(cfg))
    start = time.perf_counter()
    teacher, t_info = _teacher(cfg, task, out, resume, teacher_cache)
    t_pred = predict(teacher, task.x_test).argmax(-1)
    extra: dict[str, Any] = {}
    ref = None
    if cfg.reference:
        ref_cfg = dataclasses.replace(cfg, method=cfg.reference, reference="")
        ref_plan, _ = _train_arm(ref_cfg, task, teacher, out / "reference", resume)
        ref = ref_plan.student
        extra |= {f"reference_{k}": v for k, v in scores(ref, task, t_pred).items()}
    plan, result = _train_arm(
        cfg,
        task,
        teacher,
        out,
        resume,
        reference=ref,
        eval_every=cfg.train.eval_every,
        evaluate=lambda m: scores(m, task, t_pred),
    )
    base_cfg = dataclasses.replace(cfg, method="ce", reference="")
    base_plan, _ = _train_arm(base_cfg, task, None, out / "baseline", resume)
    if not result["is_main_process"]:
        return {}
    metrics = _metrics(task, plan.student, base_plan.student, t_pred, t_info, result)
    metrics |= extra | plan.metrics
    if plan.finalize is not None:
        metrics |= plan.finalize(plan.student)
    metrics["wall_s"] = time.perf_counter() - start
    atomic_write_json(out / "metrics.json", metrics)
    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    _report(out, cfg, task, metrics, result["history"])
    return metrics


def _metrics(
    task: Task,
    student: nn.Module,
    baseline: nn.Module,
    t_pred: Tensor,
    t_info: dict[str, Any],
    result: dict[str, Any],
) -> dict[str, Any]:
    """Final test-split scores of the student, the baseline and the teacher."""
    mine = scores(student, task, t_pred)
    base = scores(baseline, task, t_pred)
    teacher = {f"teacher_{k}": v for k, v in t_info.items() if k in mine and k != "agreement"}
    metrics: dict[str, Any] = {**mine, **{f"baseline_{k}": v for k, v in base.items()}, **teacher}
    lead = "ndcg@10" if "ndcg@10" in mine else "accuracy"
    metrics["gain"] = metrics[lead] - metrics[f"baseline_{lead}"]
    if result["history"]:  # best-of-evaluations is optimistic (test-set selection): labelled so
        metrics[f"best_eval_{lead}"] = max(r[lead] for r in result["history"])
    net = getattr(student, "net", student)  # extras (projectors, fusion) are training-only
    metrics["student_params"] = sum(p.numel() for p in net.parameters())
    metrics["world_size"] = result["world_size"]
    return metrics


def _report(
    out: Path, cfg: Any, task: Task, m: dict[str, Any], history: list[dict[str, Any]]
) -> None:
    """Write ``out/report.md``: teacher, student, reference, baseline, and the eval history."""
    keys = [*headline(task), "agreement"]
    rows = [("teacher", "teacher_"), (f"**student ({cfg.method})**", "")]
    if cfg.reference:
        rows.append((f"reference ({cfg.reference})", "reference_"))
    rows.append(("baseline (no teacher, same budget)", "baseline_"))
    lines = [
        f"# {cfg.method} on {cfg.task}",
        "",
        f"Student {cfg.model} {list(cfg.student_widths)} ({m['student_params']} parameters), "
        f"teacher {cfg.teacher.kind}; T = {cfg.temperature}, alpha = {cfg.alpha}, "
        f"{cfg.train.steps} steps of {cfg.train.batch_size}, seed {cfg.train.seed}; labels: "
        f"{cfg.n_labels or 'all'}, noise {cfg.label_noise}.",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, p in rows:
        cells = [m.get(p + k) for k in keys]
        lines.append(
            f"| {name} | " + " | ".join("—" if v is None else f"{v:.4f}" for v in cells) + " |"
        )
    lines += ["", f"Gain over the baseline: {m['gain']:+.4f}. Wall time {m['wall_s']:.1f} s.", ""]
    if history:
        lines += ["| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
        lines += [
            f"| {r['step']} | " + " | ".join(f"{r.get(k, float('nan')):.4f}" for k in keys) + " |"
            for r in history
        ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


FAMILY = Family(
    name="kd",
    help="knowledge distillation: teacher, student with a KD method, no-teacher baseline",
    presets=PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=lambda preset, sets: Resolved(resolve(preset, sets), None, preset),
    run=lambda r, out, resume: run_kd(r.config, out, resume=resume),
    quick=lambda name: list(QUICK),
    steps_help="student optimizer steps",
    dry_run=lambda r: {"networks": param_report(r.config)},
)
