"""``scoredistill kd``: supervised knowledge-distillation runs from presets.

A run trains (or reloads) a teacher MLP on the task, trains the student with the method, and
trains the *same* student (same initialisation, steps, batch and learning rate) without the
teacher: cross-entropy on the labels the student is allowed to see. The gap between the two is
what the teacher bought. Methods are a plain dict from name to
``loss(student_logits, teacher_logits, labels, cfg) -> scalar``; labels are ``-1`` where
unlabelled. Divergence terms carry ``T²`` (Hinton) so that ``alpha`` keeps its meaning at any T::

    L = alpha · CE(y, p_s) + (1 − alpha) · T² · D(p_t^T, p_s^T)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, apply_overrides, to_dict
from ..io import atomic_write_json, load_safetensors, save_safetensors_atomic
from ..train.common import JsonlLogger
from ..train.kd import KDBatch, KDTrainConfig, train_kd
from .losses import bdkd_loss, ece, jsd, kd_loss, reverse_kl
from .models import MLP
from .tasks import TASKS, Task, load_task

__all__ = ["METHODS", "PRESETS", "QUICK", "KDConfig", "TeacherConfig", "resolve", "run_kd"]


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher MLP and its cross-entropy training budget."""

    widths: tuple[int, ...] = (256, 256)
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3  # Adam; 1e-2 left the 256-wide teacher at 0.970-0.976 (1e-3: 0.980-0.983)
    # True: every clean training label (it stands for a pre-trained model); False: the student's
    clean_labels: bool = True


@dataclass(frozen=True)
class KDConfig:
    """One KD run: method, task, student, loss fields, label access, loop and teacher."""

    method: str = "kd"
    task: str = "digits"
    student_widths: tuple[int, ...] = (32,)
    temperature: float = 4.0  # T, on both sides
    alpha: float = 0.5  # weight of the label CE; the divergence gets 1 - alpha
    beta: float = 0.5  # jsd: JSD(beta) (0 forward KL, 1 reverse KL)
    bdkd_mode: Literal["hard", "soft"] = "hard"  # bdkd: entropy-gap switch, "hard" | "soft"
    bdkd_delta: float = 2.0  # bdkd: weight of the emphasised direction [R]
    n_labels: int = 0  # training labels the student may use (stratified); 0 = all
    label_noise: float = 0.0  # fraction of training labels replaced by another class
    data_seed: int = 0  # split, label subset and noise
    train: KDTrainConfig = field(default_factory=KDTrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


LossFn = Callable[[Tensor, "Tensor | None", Tensor, KDConfig], Tensor]


def _ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over the labelled rows (``labels >= 0``); 0 when there are none."""
    count = int((labels >= 0).sum())
    return F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / max(count, 1)


def _mix(cfg: KDConfig, logits: Tensor, labels: Tensor, divergence: Tensor) -> Tensor:
    if cfg.alpha == 0:
        return divergence
    return cfg.alpha * _ce(logits, labels) + (1.0 - cfg.alpha) * divergence


def _loss_ce(s: Tensor, t: Tensor | None, y: Tensor, cfg: KDConfig) -> Tensor:
    return _ce(s, y)


def _loss_kd(s: Tensor, t: Tensor | None, y: Tensor, cfg: KDConfig) -> Tensor:
    return _mix(cfg, s, y, kd_loss(s, t, cfg.temperature))


def _loss_reverse_kl(s: Tensor, t: Tensor | None, y: Tensor, cfg: KDConfig) -> Tensor:
    return _mix(cfg, s, y, cfg.temperature**2 * reverse_kl(s, t, cfg.temperature))


def _loss_jsd(s: Tensor, t: Tensor | None, y: Tensor, cfg: KDConfig) -> Tensor:
    return _mix(cfg, s, y, cfg.temperature**2 * jsd(s, t, cfg.beta, cfg.temperature))


def _loss_bdkd(s: Tensor, t: Tensor | None, y: Tensor, cfg: KDConfig) -> Tensor:
    div = bdkd_loss(s, t, cfg.temperature, mode=cfg.bdkd_mode, delta=cfg.bdkd_delta)
    return _mix(cfg, s, y, div)


METHODS: dict[str, LossFn] = {
    "ce": _loss_ce,  # no teacher: the baseline
    "kd": _loss_kd,  # Hinton et al. 2015
    "reverse_kl": _loss_reverse_kl,  # mode-seeking KL(p_s || p_t)
    "jsd": _loss_jsd,  # GKD's JSD(beta)
    "bdkd": _loss_bdkd,  # BD-KD's student term against a frozen teacher (offline)
}

# CPU presets (2 cores): teacher MLP(256,256), student MLP(32), Adam 1e-2, 1000 steps of 128.
PRESETS: dict[str, dict[str, Any]] = {
    "kd-digits": {"method": "kd", "task": "digits", "alpha": 0.5, "temperature": 4.0},
    # KD on every training input without labels vs CE on 50 labels (note d.2.1 (i))
    "kd-digits-unlabelled": {"method": "kd", "task": "digits", "alpha": 0.0, "n_labels": 50},
    # 40% symmetric label noise; 0.1·CE(noisy) + 0.9·KD (note d.1); the teacher saw clean labels
    "kd-digits-noisy": {"method": "kd", "task": "digits", "alpha": 0.1, "label_noise": 0.4},
    # offline stand-in: BD-KD's student loss against a frozen teacher (online mode: not yet)
    "bdkd-classification": {"method": "bdkd", "task": "classification", "alpha": 0.5},
}

# smoke budget: every preset finishes in a few seconds (checks the run, not the numbers)
QUICK: list[str] = [
    "train.steps=30",
    "teacher.steps=30",
    "train.log_every=10",
    "train.eval_every=10",
]


def resolve(preset: str | None, sets: list[str]) -> KDConfig:
    """Preset + ``key=value`` overrides -> a validated ``KDConfig``."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    items = [
        f"{k}={v if isinstance(v, str) else json.dumps(v)}"
        for k, v in PRESETS.get(preset, {}).items()
    ]
    cfg = apply_overrides(KDConfig(), [*items, *sets])
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; valid: {', '.join(METHODS)}")
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; valid: {', '.join(TASKS)}")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ConfigError(f"config key 'alpha' must be in [0, 1], got {cfg.alpha}")
    if cfg.temperature <= 0:
        raise ConfigError(f"config key 'temperature' must be > 0, got {cfg.temperature}")
    return cfg


# ----------------------------------------------------------------------------- pieces
def _student_labels(task: Task) -> Tensor:
    """Training labels the student may use, ``-1`` elsewhere."""
    return torch.where(task.labelled, task.y_train, torch.full_like(task.y_train, -1))


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` in eval mode on the model's device, returned on the CPU."""
    model.eval()
    return model(x.to(next(model.parameters()).device)).cpu()


@torch.no_grad()
def _scores(model: nn.Module, task: Task, teacher_pred: Tensor | None) -> dict[str, float]:
    """Test-set accuracy, ECE (15 bins), NLL and top-1 agreement with the teacher."""
    logits = _logits(model, task.x_test)
    pred = logits.argmax(-1)
    out = {
        "accuracy": float((pred == task.y_test).float().mean()),
        "ece": float(ece(logits.softmax(-1), task.y_test)),
        "nll": float(F.cross_entropy(logits, task.y_test)),
    }
    if teacher_pred is not None:
        out["agreement"] = float((pred == teacher_pred).float().mean())
    return out


def _loop_cfg(cfg: KDConfig, steps: int, batch: int, lr: float) -> KDTrainConfig:
    t = cfg.train
    return KDTrainConfig(
        steps=steps,
        batch_size=batch,
        lr=lr,
        weight_decay=t.weight_decay,
        grad_clip=t.grad_clip,
        cache_teacher=t.cache_teacher,
        eval_every=0,
        checkpoint_every=min(t.checkpoint_every, steps),
        log_every=t.log_every,
        seed=t.seed,
    )


def _teacher(cfg: KDConfig, task: Task, out: Path, resume: bool) -> tuple[MLP, dict]:
    """Train the teacher on the task, or reload ``out/teacher`` if it matches ``cfg``."""
    folder = out / "teacher"
    key = {"task": cfg.task, "data_seed": cfg.data_seed, "seed": cfg.train.seed}
    key |= {"teacher": to_dict(cfg.teacher)}
    if not cfg.teacher.clean_labels:
        key |= {"n_labels": cfg.n_labels, "label_noise": cfg.label_noise}
    torch.manual_seed(cfg.train.seed + 10_000)
    teacher = MLP(task.dim, cfg.teacher.widths, task.num_classes)
    info_path = folder / "teacher.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info["key"] != key:
            raise ConfigError(
                f"{folder} holds a teacher trained with {info['key']}; use a new --out"
            )
        teacher.load_state_dict(load_safetensors(folder / "model.safetensors"))
        return teacher.eval(), info
    if cfg.teacher.clean_labels:
        x, y = task.x_train, task.y_clean
    else:
        x, y = task.x_train[task.labelled], task.y_train[task.labelled]
    t = cfg.teacher
    folder.mkdir(parents=True, exist_ok=True)
    loop = _loop_cfg(cfg, t.steps, t.batch_size, t.lr)
    loss = _loss_fn(KDConfig(method="ce"))
    result = train_kd(
        loop,
        student=teacher,
        loss_fn=loss,
        x=x,
        labels=y,
        out_dir=folder,
        resume=resume,
        desc="teacher",
    )
    info = {"key": key, "wall_s": result["wall_s"], **_scores(teacher, task, None)}
    if result["is_main_process"]:
        save_safetensors_atomic(teacher.state_dict(), folder / "model.safetensors")
        atomic_write_json(info_path, info)
    return teacher.eval(), info


def _loss_fn(cfg: KDConfig) -> Callable[[KDBatch], Tensor]:
    method = METHODS[cfg.method]
    return lambda b: method(b.student_logits, b.teacher_logits, b.labels, cfg)


def _student(cfg: KDConfig, task: Task) -> MLP:
    torch.manual_seed(cfg.train.seed)  # the method and its baseline start from the same weights
    return MLP(task.dim, cfg.student_widths, task.num_classes)


# ----------------------------------------------------------------------------- the run
def run_kd(cfg: KDConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """Teacher, student with ``cfg.method``, no-teacher baseline; writes the run folder."""
    task = load_task(
        cfg.task, seed=cfg.data_seed, n_labels=cfg.n_labels, label_noise=cfg.label_noise
    )
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(out / "config.json", to_dict(cfg))
    start = time.perf_counter()
    teacher, t_info = _teacher(cfg, task, out, resume)
    t_pred = _logits(teacher, task.x_test).argmax(-1)
    labels = _student_labels(task)
    loop = _loop_cfg(cfg, cfg.train.steps, cfg.train.batch_size, cfg.train.lr)
    loop = dataclasses.replace(loop, eval_every=cfg.train.eval_every)
    student = _student(cfg, task)
    result = train_kd(
        loop,
        student=student,
        loss_fn=_loss_fn(cfg),
        x=task.x_train,
        labels=labels,
        teacher=teacher,
        evaluate=lambda m: _scores(m, task, t_pred),
        out_dir=out,
        resume=resume,
        desc=cfg.method,
    )
    baseline = _student(cfg, task)
    keep = labels >= 0  # the baseline trains on the labelled rows only
    base_cfg = KDConfig(method="ce", train=cfg.train)
    train_kd(
        loop,
        student=baseline,
        loss_fn=_loss_fn(base_cfg),
        x=task.x_train[keep],
        labels=labels[keep],
        out_dir=out / "baseline",
        resume=resume,
        desc="baseline",
    )
    if not result["is_main_process"]:
        return {}
    metrics = _metrics(task, student, baseline, t_pred, t_info, result)
    metrics["wall_s"] = time.perf_counter() - start
    atomic_write_json(out / "metrics.json", metrics)
    JsonlLogger(out / "metrics.jsonl").log({"step": cfg.train.steps, "eval": True, **metrics})
    _write_report(out, cfg, metrics, result["history"])
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
    base = _scores(baseline, task, t_pred)
    metrics: dict[str, Any] = {
        **_scores(student, task, t_pred),
        **{f"baseline_{k}": v for k, v in base.items()},
        **{f"teacher_{k}": t_info[k] for k in ("accuracy", "ece", "nll")},
    }
    metrics["gain"] = metrics["accuracy"] - metrics["baseline_accuracy"]
    if result["history"]:  # best-of-evaluations is optimistic (test-set selection): labelled so
        metrics["best_eval_accuracy"] = max(r["accuracy"] for r in result["history"])
    metrics["student_params"] = sum(p.numel() for p in student.parameters())
    metrics["world_size"] = result["world_size"]
    return metrics


def _write_report(out: Path, cfg: KDConfig, m: dict[str, Any], history: list[dict]) -> None:
    rows = [
        ("teacher", "teacher_"),
        (f"**student ({cfg.method})**", ""),
        ("baseline (CE, same budget)", "baseline_"),
    ]
    lines = [
        f"# {cfg.method} on {cfg.task}",
        "",
        f"Student MLP{list(cfg.student_widths)} ({m['student_params']} parameters), teacher "
        f"MLP{list(cfg.teacher.widths)}; T = {cfg.temperature}, alpha = {cfg.alpha}, "
        f"{cfg.train.steps} steps of {cfg.train.batch_size}, seed {cfg.train.seed}; labels: "
        f"{cfg.n_labels or 'all'}, noise {cfg.label_noise}.",
        "",
        "| model | accuracy | ECE | NLL | agreement |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, p in rows:
        agree = m.get(f"{p}agreement")
        lines.append(
            f"| {name} | {m[p + 'accuracy']:.4f} | {m[p + 'ece']:.4f} | {m[p + 'nll']:.4f} | "
            + (f"{agree:.4f} |" if agree is not None else "— |")
        )
    lines += ["", f"Gain over the baseline: {m['gain']:+.4f}. Wall time {m['wall_s']:.1f} s.", ""]
    if history:
        lines += ["| step | accuracy | ECE | agreement |", "|---:|---:|---:|---:|"]
        lines += [
            f"| {r['step']} | {r['accuracy']:.4f} | {r['ece']:.4f} | {r['agreement']:.4f} |"
            for r in history
        ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
