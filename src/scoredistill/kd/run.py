"""``scoredistill kd``: supervised knowledge-distillation runs from presets.

A run trains (or reloads) a teacher on the task, trains the student with the method, optionally
a *reference* student with another method (the comparison the reference note's claim is about:
PLD vs KD, LELP vs KD, ACAM-KD vs FitNet, …), and the *same* student (same initialisation,
steps, batch and learning rate) without the teacher: cross-entropy on the labels the student is
allowed to see. The gap to the baseline is what the teacher bought. Losses live in
:mod:`.methods` (``METHODS``, logit losses) and :mod:`.plans` (``PLANS``, methods with extras).
"""

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

from ..config import ConfigError, apply_overrides, to_dict
from ..io import atomic_write_json, load_safetensors, save_safetensors_atomic
from ..train.common import JsonlLogger
from ..train.kd import KDBatch, KDTrainConfig, train_kd
from .methods import (
    METHODS,
    ACAMConfig,
    AIFConfig,
    LELPConfig,
    OFAConfig,
    Plan,
    RetrievalConfig,
    ce,
    logit_plan,
)
from .models import MLP, BiEncoder, CrossEncoder, SmallCNN
from .plans import PLANS
from .presets import PRESETS, QUICK
from .scoring import predict, report, scores
from .tasks import RETRIEVAL, TASKS, Task, load_task

__all__ = ["METHODS", "PRESETS", "QUICK", "KDConfig", "TeacherConfig", "resolve", "run_kd"]


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher network and its training budget (CE; BCE on graded relevance for retrieval)."""

    kind: Literal["mlp", "cnn"] = "mlp"  # retrieval always uses a cross-encoder MLP
    widths: tuple[int, ...] = (256, 256)  # mlp / cross-encoder hidden widths
    channels: tuple[int, ...] = (32, 32)  # cnn conv channels (8x8 maps)
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3  # Adam; 1e-2 left the 256-wide teacher at 0.970-0.976 (1e-3: 0.980-0.983)
    # True: every clean training label (it stands for a pre-trained model); False: the student's
    clean_labels: bool = True


@dataclass(frozen=True)
class KDConfig:
    """One KD run: method, task, student, loss fields, label access, loop and teacher."""

    method: str = "kd"
    reference: str = ""  # a second method trained from the same init ("" = none)
    task: str = "digits"
    model: Literal["mlp", "cnn"] = "mlp"  # the student (retrieval: a bi-encoder of MLP towers)
    student_widths: tuple[int, ...] = (32,)
    student_channels: tuple[int, ...] = (8,)  # cnn student
    temperature: float = 4.0  # T, on both sides (PLD: tau on the teacher)
    alpha: float = 0.5  # weight of the label CE; the divergence gets 1 - alpha
    beta: float = 0.5  # jsd: JSD(beta) (0 forward KL, 1 reverse KL)
    bdkd_mode: Literal["hard", "soft"] = "hard"  # bdkd: entropy-gap switch, "hard" | "soft"
    bdkd_delta: float = 2.0  # bdkd: weight of the emphasised direction [R]
    n_labels: int = 0  # training labels the student may use (stratified); 0 = all
    label_noise: float = 0.0  # fraction of training labels replaced by another class
    data_seed: int = 0  # split, label subset and noise
    lelp: LELPConfig = field(default_factory=LELPConfig)
    ofa: OFAConfig = field(default_factory=OFAConfig)
    acam: ACAMConfig = field(default_factory=ACAMConfig)
    aif: AIFConfig = field(default_factory=AIFConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    train: KDTrainConfig = field(default_factory=KDTrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


def _known(name: str) -> bool:
    return name in METHODS or name in PLANS


def resolve(preset: str | None, sets: list[str]) -> KDConfig:
    """Preset + ``key=value`` overrides -> a validated ``KDConfig``."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    items = [
        f"{k}={v if isinstance(v, str) else json.dumps(v)}"
        for k, v in PRESETS.get(preset, {}).items()
    ]
    cfg = apply_overrides(KDConfig(), [*items, *sets])
    valid = ", ".join([*METHODS, *PLANS])
    for key in ("method", "reference"):
        name = getattr(cfg, key)
        if not _known(name) and not (key == "reference" and name == ""):
            raise ConfigError(f"unknown {key} {name!r}; valid: {valid}")
    if cfg.task not in TASKS and cfg.task != RETRIEVAL:
        raise ConfigError(f"unknown task {cfg.task!r}; valid: {', '.join([*TASKS, RETRIEVAL])}")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ConfigError(f"config key 'alpha' must be in [0, 1], got {cfg.alpha}")
    if cfg.temperature <= 0:
        raise ConfigError(f"config key 'temperature' must be > 0, got {cfg.temperature}")
    return cfg


# ----------------------------------------------------------------------------- networks
def make_net(cfg: KDConfig, task: Task, out_dim: int) -> nn.Module:
    """The run's student network, initialised from ``cfg.train.seed`` (same for every arm)."""
    torch.manual_seed(cfg.train.seed)
    if task.relevance_test is not None:
        q = task.query_dim
        rc = cfg.retrieval
        return BiEncoder(q, q, cfg.student_widths, rc.embed_dim, bias=rc.student_bias)
    if cfg.model == "cnn":
        return SmallCNN((1, 8, 8), cfg.student_channels, out_dim)
    return MLP(task.dim, cfg.student_widths, out_dim)


class TeacherScores(nn.Module):
    """Retrieval teacher as the student sees it: optional sigmoid squash and per-query offset.

    The offset ``offset_std · ⟨x_q, u⟩`` (``u`` a fixed random unit vector) is one constant per
    query: it changes no ranking, only the scores' level (Margin-MSE's setting, note d.2.5 (b)).
    """

    def __init__(self, net: CrossEncoder, rc: RetrievalConfig) -> None:
        super().__init__()
        self.net, self.rc = net, rc
        u = torch.randn(net.query_dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer("u", u / u.norm())

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(B, N)``."""
        s = self.net(x)
        if self.rc.squash:
            s = torch.sigmoid(s)
        return s + self.rc.offset_std * (x[:, : self.net.query_dim] @ self.u).unsqueeze(-1)


def _teacher_net(cfg: KDConfig, task: Task) -> nn.Module:
    torch.manual_seed(cfg.train.seed + 10_000)
    t = cfg.teacher
    if task.relevance_test is not None:
        return CrossEncoder(task.query_dim, task.query_dim, t.widths)
    if t.kind == "cnn":
        return SmallCNN((1, 8, 8), t.channels, task.num_classes)
    return MLP(task.dim, t.widths, task.num_classes)


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
    teacher = _teacher_net(cfg, task)
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
            loop,
            student=teacher,
            loss_fn=loss,
            x=x,
            labels=y,
            out_dir=folder,
            resume=resume,
            desc="teacher",
        )
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
        teacher = TeacherScores(teacher, cfg.retrieval)
    return teacher.eval(), info


def _student_labels(task: Task) -> Tensor:
    """Training labels the student may use, ``-1`` elsewhere."""
    return torch.where(task.labelled, task.y_train, torch.full_like(task.y_train, -1))


def build_plan(
    cfg: KDConfig, task: Task, teacher: nn.Module, reference: nn.Module | None = None
) -> Plan:
    """The method's student, loss and hooks (``PLANS`` entry, else a logit method)."""
    nets = lambda k: make_net(cfg, task, k)  # noqa: E731
    if cfg.method in PLANS:
        return PLANS[cfg.method](cfg, task, teacher, nets, reference)
    return logit_plan(cfg, nets, task.num_classes)


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
    report(out, cfg, task, metrics, result["history"])
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
