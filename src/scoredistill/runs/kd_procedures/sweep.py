"""The generalization-vs-fidelity sweep: student size × temperature × teacher-logit noise.

After Ramesh, Sengupta and Chakraborty, "On the Generalization vs Fidelity Paradox in KD" (ACL
Findings 2025; reference/knowledge_distillation.md, method 16 and d.2 item 16). One teacher MLP
is trained on the task; every student MLP(w) is distilled with pure KD (the paper's
``kd_loss_weight = 1``: no label term unless ``alpha > 0``) from teacher logits perturbed by
fresh Gaussian noise each step::

    L = alpha·CE(y, p_s) + (1 − alpha)·T²·KL(softmax((z_t + σ·ε)/T) ‖ softmax(z_s/T)),  ε ~ N(0, I)

and compared with the same student trained by cross-entropy (same initialisation and budget).
Each cell reports test accuracy and top-1 agreement with the clean teacher; the question is
whether agreement (fidelity) tracks accuracy (generalization).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import LearningRate, PositiveFloat, PositiveInt, Seed, UnitFloat
from ...kd.losses import kd_loss
from ...kd.models import MLP
from ...kd.tasks import load_task
from ...train.kd import KDBatch
from .proc_common import class_scores, fit, mean_std, seeded, spearman

__all__ = ["SweepConfig", "noisy_kd_loss", "plot", "procedure", "report", "run_sweep"]


@dataclass(frozen=True)
class SweepConfig:
    """The grid of note d.2 item 16 on digits."""

    task: str = "digits"
    widths: tuple[int, ...] = (8, 32, 128)  # one-hidden-layer student widths
    temperatures: tuple[float, ...] = (1.0, 2.0, 5.0)
    noises: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0)  # σ of the teacher-logit noise
    headline_temperature: PositiveFloat = 2.0  # the paper's best τ; metrics.json's headline cells
    alpha: UnitFloat = 0.0  # label-CE weight (0: pure KD, as in the paper's runs)
    teacher_widths: tuple[int, ...] = (256, 256)
    teacher_steps: PositiveInt = 1000
    teacher_lr: LearningRate = 1e-3  # as runs.kd.TeacherConfig
    steps: PositiveInt = 200  # per student (KD and baseline alike); 36 cells + 3 baselines per run
    batch_size: PositiveInt = 128
    lr: LearningRate = 1e-2  # Adam (note d.1)
    seed: Seed = 0  # initialisation, batches and noise
    data_seed: Seed = 0  # split


def noisy_kd_loss(batch: KDBatch, temperature: float, sigma: float, alpha: float = 0.0) -> Tensor:
    """KD against ``z_t + σ·ε`` (fresh ε from ``batch.rng`` each call) for a :class:`KDBatch`."""
    t = batch.teacher_logits
    if sigma > 0:
        t = t + sigma * torch.randn(t.shape, generator=batch.rng)
    loss = (1 - alpha) * kd_loss(batch.student_logits, t, temperature)
    if alpha > 0:
        loss = loss + alpha * F.cross_entropy(batch.student_logits, batch.labels)
    return loss


def _student(dim: int, width: int, classes: int, seed: int) -> MLP:
    with seeded(torch.Generator().manual_seed(seed * 1009 + width)):
        return MLP(dim, (width,), classes)


def networks(cfg: SweepConfig) -> dict[str, Any]:
    """``--dry-run``: the teacher (trained first, then frozen: 1 fp32 copy) and the widest
    student (4 copies; the students train one at a time), built untrained as in :func:`run_sweep`."""
    from ..dry_run import network_report

    task = load_task(cfg.task, seed=cfg.data_seed)
    with seeded(torch.Generator().manual_seed(cfg.seed + 10_000)):
        teacher = MLP(task.dim, cfg.teacher_widths, task.num_classes)
    w = max(cfg.widths)
    student = _student(task.dim, w, task.num_classes, cfg.seed)
    frozen = {"teacher (frozen)": teacher}
    return network_report({f"student (widest, MLP({w}))": student}, frozen, exact_teacher=False)


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Teacher, then every (width, T, σ) KD student and one CE baseline per width."""
    task = load_task(cfg.task, seed=cfg.data_seed)
    x, y, xt, yt = task.x_train, task.y_train, task.x_test, task.y_test
    with seeded(torch.Generator().manual_seed(cfg.seed + 10_000)):
        teacher = MLP(task.dim, cfg.teacher_widths, task.num_classes)
    fit(teacher, x, y, steps=cfg.teacher_steps, lr=cfg.teacher_lr, seed=cfg.seed)
    with torch.no_grad():
        t_pred = teacher(xt).argmax(-1)
        logit_std = float(teacher(x).std(-1).mean())  # the scale σ is compared with
    cells, baselines = [], {}
    for w in cfg.widths:
        model = _student(task.dim, w, task.num_classes, cfg.seed)
        fit(model, x, y, steps=cfg.steps, lr=cfg.lr, seed=cfg.seed)
        baselines[w] = class_scores(model, xt, yt, t_pred)
    for w, temp, sigma in itertools.product(cfg.widths, cfg.temperatures, cfg.noises):
        model = _student(task.dim, w, task.num_classes, cfg.seed)

        def loss(b: KDBatch, temp: float = temp, sigma: float = sigma) -> Tensor:
            return noisy_kd_loss(b, temp, sigma, cfg.alpha)

        fit(model, x, y, steps=cfg.steps, lr=cfg.lr, seed=cfg.seed, loss_fn=loss, teacher=teacher)
        cells.append({"width": w, "temperature": temp, "sigma": sigma})
        cells[-1] |= class_scores(model, xt, yt, t_pred)
    return {
        "cells": cells,
        "baselines": {str(w): s for w, s in baselines.items()},
        "teacher": class_scores(teacher, xt, yt) | {"logit_std": logit_std},
    }


def _summary(cfg: SweepConfig, raw: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers: gains per width at (T_headline, σ=0), the noise drop, ρ(acc, agr)."""
    cells, base = raw["cells"], raw["baselines"]

    def cell(w: int, temp: float, sigma: float) -> dict[str, float]:
        return next(
            c for c in cells if (c["width"], c["temperature"], c["sigma"]) == (w, temp, sigma)
        )

    temp, lo, hi = cfg.headline_temperature, min(cfg.noises), max(cfg.noises)
    m: dict[str, Any] = {}
    for key in ("accuracy", "agreement", "ece"):
        m[key] = mean_std([cell(w, temp, lo)[key] for w in cfg.widths])[0]
        m[f"baseline_{key}"] = mean_std([base[str(w)][key] for w in cfg.widths])[0]
    for w in cfg.widths:
        m[f"gain_w{w}"] = cell(w, temp, lo)["accuracy"] - base[str(w)]["accuracy"]
    drops = [
        cell(w, t, hi)["accuracy"] - cell(w, t, lo)["accuracy"]
        for w in cfg.widths
        for t in cfg.temperatures
    ]
    m["noise_drop"] = mean_std(drops)[0]  # accuracy at σ_max minus σ=0, averaged
    m["spearman_accuracy_agreement"] = spearman(
        [c["accuracy"] for c in cells], [c["agreement"] for c in cells]
    )
    m["teacher_accuracy"] = raw["teacher"]["accuracy"]
    m["teacher_logit_std"] = raw["teacher"]["logit_std"]  # per-sample std over classes
    return m | raw


def plot(cfg: SweepConfig, m: dict[str, Any], path: Path) -> None:
    """Accuracy vs agreement for every cell, and accuracy vs σ per width at T_headline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    cells = m["cells"]
    sc = ax1.scatter(
        [c["agreement"] for c in cells],
        [c["accuracy"] for c in cells],
        c=[c["sigma"] for c in cells],
        s=[12 + 0.6 * c["width"] for c in cells],
        cmap="viridis",
    )
    fig.colorbar(sc, ax=ax1, label="teacher-logit noise σ")
    ax1.set(xlabel="top-1 agreement with teacher", ylabel="test accuracy", title="size ∝ width")
    for w in cfg.widths:
        rows = [
            c for c in cells if c["width"] == w and c["temperature"] == cfg.headline_temperature
        ]
        line = ax2.plot([c["sigma"] for c in rows], [c["accuracy"] for c in rows], "o-")
        ax2.axhline(m["baselines"][str(w)]["accuracy"], ls="--", color=line[0].get_color())
        line[0].set_label(f"MLP({w}) KD (dashed: CE)")
    ax2.set(xlabel="σ", ylabel="test accuracy", title=f"T = {cfg.headline_temperature}")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def procedure(cfg: SweepConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """Run the grid, summarise it and write ``sweep.png`` into ``out``."""
    del resume  # minutes-long grid of short runs: recomputed
    t0 = time.perf_counter()
    m = _summary(cfg, run_sweep(cfg))
    m["train_s"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    plot(cfg, m, out / "sweep.png")
    return m


def report(cfg: SweepConfig, m: dict[str, Any]) -> str:
    """Markdown table of the grid."""
    lines = [
        f"# Generalization vs fidelity on {cfg.task}",
        "",
        f"Teacher MLP{list(cfg.teacher_widths)}: accuracy {m['teacher_accuracy']:.4f}. Students "
        f"MLP(w), pure KD (alpha = {cfg.alpha}), {cfg.steps} steps, seed {cfg.seed}. "
        f"ρ(accuracy, agreement) over cells = {m['spearman_accuracy_agreement']:.3f}; "
        f"mean accuracy change σ = {max(cfg.noises)} vs 0: {m['noise_drop']:+.4f}.",
        "",
        "![sweep](sweep.png)",
        "",
        "| width | T | σ | accuracy | agreement | CE baseline accuracy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c in m["cells"]:
        base = m["baselines"][str(c["width"])]["accuracy"]
        lines.append(
            f"| {c['width']} | {c['temperature']} | {c['sigma']} | {c['accuracy']:.4f} | "
            f"{c['agreement']:.4f} | {base:.4f} |"
        )
    return "\n".join(lines) + "\n"
