"""Online KD: a larger "teacher" and a compact student learn together from scratch.

Two methods, one loop (reference/knowledge_distillation.md, method 2 and d.2 item 2):

- **DML** (Zhang et al., CVPR 2018, "Deep Mutual Learning", §3.1): each network adds the forward
  KL towards the other's (detached) prediction::

      L_s = CE(y, p_s) + λ_s·T²·KL(p_t ‖ p_s)        L_t = CE(y, p_t) + λ_t·T²·KL(p_s ‖ p_t)

- **BD-KD** (Amara et al., arXiv 2212.12965) [S]/[R]: the student balances forward and reverse
  KL per sample by the entropy gap (:func:`~scoredistill.kd.losses.bdkd_loss`); the teacher's
  term is the reverse direction ``T²·KL(p_t ‖ p_s)``
  (:func:`~scoredistill.kd.losses.bdkd_teacher_loss`)::

      L_s = CE(y, p_s) + λ_s·T²·[w_fwd·KL(p_t‖p_s) + w_rev·KL(p_s‖p_t)]
      L_t = CE(y, p_t) + λ_t·T²·KL(p_t ‖ p_s)

- **ce**: both networks trained alone (λ = 0), the no-teacher baseline.

Each step forwards both networks on the same batch; the student's loss sees the teacher's
logits detached and vice versa, so each loss reaches only its own network, and both optimizers
step (simultaneous updates; DML alternates, which the paper reports as equivalent [R]).
Batches come from :func:`~scoredistill.train.kd.batch_indices`, so resuming from
``out/checkpoints`` replays the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import LearningRate, NonNegativeFloat, PositiveFloat, PositiveInt, Seed
from ...kd.losses import bdkd_loss, bdkd_teacher_loss, kd_loss
from ...kd.models import MLP
from ...kd.tasks import load_task
from ...train.common import latest_checkpoint, load_checkpoint, save_checkpoint
from ...train.kd import batch_indices
from .proc_common import class_scores, seeded

__all__ = [
    "OnlineConfig",
    "online_step",
    "procedure",
    "report",
    "run_online",
    "student_loss",
    "teacher_loss",
]


@dataclass(frozen=True)
class OnlineConfig:
    """One online-KD run (note d.2 item 2: MLP(256) + MLP(32) from scratch, ~30 epochs)."""

    method: Literal["dml", "bdkd", "ce"] = "bdkd"
    task: str = "classification"
    teacher_widths: tuple[int, ...] = (256,)
    student_widths: tuple[int, ...] = (32,)
    # T of the KL terms (DML uses 1; BD-KD's default unverified [R])
    temperature: PositiveFloat = 1.0
    lambda_s: NonNegativeFloat = 1.0  # weight of the student's KL term
    lambda_t: NonNegativeFloat = 1.0  # weight of the teacher's KL term
    bdkd_mode: Literal["hard", "soft"] = "hard"  # entropy-gap switch [R]
    bdkd_delta: NonNegativeFloat = 2.0  # weight of the emphasised direction [R]
    # ~30 epochs of the 2100-sample classification train split at batch 128
    steps: PositiveInt = 500
    batch_size: PositiveInt = 128
    lr: LearningRate = 1e-3  # Adam, both networks
    checkpoint_every: PositiveInt = 250
    seed: Seed = 0  # initialisation and batches
    data_seed: Seed = 0  # split


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


def student_loss(s_logits: Tensor, t_logits: Tensor, y: Tensor, cfg: OnlineConfig) -> Tensor:
    """``L_s`` for logits ``(B, C)`` and labels ``(B,)``; the teacher's logits are detached."""
    t_logits = t_logits.detach()
    if cfg.method == "ce":
        return _ce(s_logits, y)
    if cfg.method == "dml":
        div = kd_loss(s_logits, t_logits, cfg.temperature)
    else:
        div = bdkd_loss(
            s_logits, t_logits, cfg.temperature, mode=cfg.bdkd_mode, delta=cfg.bdkd_delta
        )
    return _ce(s_logits, y) + cfg.lambda_s * div


def teacher_loss(t_logits: Tensor, s_logits: Tensor, y: Tensor, cfg: OnlineConfig) -> Tensor:
    """``L_t`` for logits ``(B, C)``; the student's logits are detached."""
    s_logits = s_logits.detach()
    if cfg.method == "ce":
        return _ce(t_logits, y)
    if cfg.method == "dml":  # KL(p_s ‖ p_t): the teacher is the one being fitted
        div = kd_loss(t_logits, s_logits, cfg.temperature)
    else:
        div = bdkd_teacher_loss(t_logits, s_logits, cfg.temperature)
    return _ce(t_logits, y) + cfg.lambda_t * div


def online_step(
    student: nn.Module,
    teacher: nn.Module,
    opts: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    x: Tensor,
    y: Tensor,
    cfg: OnlineConfig,
) -> dict[str, float]:
    """One simultaneous update of both networks on ``x (B, D)``, ``y (B,)``; returns losses."""
    s_logits, t_logits = student(x), teacher(x)
    loss_s = student_loss(s_logits, t_logits, y, cfg)
    loss_t = teacher_loss(t_logits, s_logits, y, cfg)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    (loss_s + loss_t).backward()  # disjoint graphs: each loss reaches its own network only
    for opt in opts:
        opt.step()
    if not (torch.isfinite(loss_s) and torch.isfinite(loss_t)):
        raise FloatingPointError(f"non-finite online loss: student {loss_s}, teacher {loss_t}")
    return {"loss_student": loss_s.item(), "loss_teacher": loss_t.item()}


def _models(cfg: OnlineConfig, dim: int, classes: int) -> tuple[MLP, MLP]:
    rng = torch.Generator().manual_seed(cfg.seed)
    with seeded(rng):
        student = MLP(dim, cfg.student_widths, classes)
    with seeded(rng):
        teacher = MLP(dim, cfg.teacher_widths, classes)
    return student, teacher


def networks(cfg: OnlineConfig) -> dict[str, Any]:
    """``--dry-run``: both networks train together (Adam each: 4 fp32 copies), built untrained."""
    from ..dry_run import network_report

    task = load_task(cfg.task, seed=cfg.data_seed)
    student, teacher = _models(cfg, task.dim, task.num_classes)
    return network_report(
        {"student": student, "teacher (trained online)": teacher}, exact_teacher=False
    )


def run_online(cfg: OnlineConfig, out: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Train the pair with ``cfg.method`` and return test metrics of both networks.

    Checkpoints (both networks, both optimizers) go to ``out/checkpoints`` every
    ``checkpoint_every`` steps; ``resume`` continues from the latest one.
    """
    task = load_task(cfg.task, seed=cfg.data_seed)
    student, teacher = _models(cfg, task.dim, task.num_classes)
    opts = (
        torch.optim.Adam(student.parameters(), cfg.lr),
        torch.optim.Adam(teacher.parameters(), cfg.lr),
    )
    modules = {"student": student, "teacher": teacher}
    named_opts = {"student": opts[0], "teacher": opts[1]}
    start, ckpt = 0, (out / "checkpoints") if out is not None else None
    found = latest_checkpoint(ckpt) if (resume and ckpt is not None) else None
    if found is not None:
        start = load_checkpoint(found, modules=modules, optimizers=named_opts, rngs={})["step"]
    t0, logs = time.perf_counter(), {}
    student.train(), teacher.train()
    for step in range(start, cfg.steps):
        idx = batch_indices(step, len(task.x_train), cfg.batch_size, cfg.seed)
        logs = online_step(student, teacher, opts, task.x_train[idx], task.y_train[idx], cfg)
        done = step + 1
        if ckpt is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            save_checkpoint(ckpt, done, modules=modules, optimizers=named_opts, rngs={})
    t = class_scores(teacher, task.x_test, task.y_test)
    with torch.no_grad():
        t_pred = teacher(task.x_test).argmax(-1)
    s = class_scores(student, task.x_test, task.y_test, t_pred)
    teacher_part = {f"teacher_{k}": v for k, v in t.items()}
    params = sum(p.numel() for p in student.parameters())
    return {
        **s,
        **teacher_part,
        **logs,
        "student_params": params,
        "train_s": time.perf_counter() - t0,
    }


def procedure(cfg: OnlineConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """``cfg.method`` and the no-teacher baseline (both networks alone, CE, same budget)."""
    metrics = run_online(cfg, out, resume)
    base_cfg = dataclasses.replace(cfg, method="ce")
    base = run_online(base_cfg, out / "baseline", resume)
    keep = ("accuracy", "ece", "nll", "agreement", "teacher_accuracy", "teacher_ece")
    metrics |= {f"baseline_{k}": base[k] for k in keep}
    metrics["gain"] = metrics["accuracy"] - metrics["baseline_accuracy"]
    return metrics


def report(cfg: OnlineConfig, m: dict[str, Any]) -> str:
    """Markdown summary of one online run."""
    rows = [
        (f"student ({cfg.method})", ""),
        (f"teacher ({cfg.method})", "teacher_"),
        ("student alone (CE)", "baseline_"),
        ("teacher alone (CE)", "baseline_teacher_"),
    ]
    lines = [
        f"# Online KD ({cfg.method}) on {cfg.task}",
        "",
        f"Student MLP{list(cfg.student_widths)}, teacher MLP{list(cfg.teacher_widths)}, both from "
        f"scratch; T = {cfg.temperature}, λ_s = {cfg.lambda_s}, λ_t = {cfg.lambda_t}, "
        f"{cfg.steps} steps of {cfg.batch_size}, seed {cfg.seed}.",
        "",
        "| network | accuracy | ECE (15 bins) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {n} | {m[p + 'accuracy']:.4f} | {m[p + 'ece']:.4f} |" for n, p in rows]
    return "\n".join(lines) + "\n"
