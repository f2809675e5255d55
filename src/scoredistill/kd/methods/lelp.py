"""LELP (Loo et al. 2024, arXiv 2409.20449): pseudo-subclass targets from the teacher's
penultimate embeddings [S steps / R exact forms].

Steps 1–5: the teacher's embeddings ``h`` (optionally projected to the null space of its output
layer, ``h ← h(I − W⁺W)``), a per-class PCA of the centred embeddings on the teacher's clean
labels, a random rotation of each class's directions, and the subclass logits
``ℓ_{c,s} = t_c + log_softmax_s(u_{c,s} / β)``. The student has ``C·S`` outputs::

    L = alpha · CE(y, aggregate(z)) + (1 − alpha) · T² · KL(softmax(ℓ/T) ‖ softmax(z/T))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...train.kd import KDBatch, teacher_outputs
from ..losses import kd_loss
from ..models import KDStudent
from ..subclass import fit_lelp, lelp_aggregate, lelp_targets
from ..tasks import Task
from .base import Method, Plan, ce

__all__ = ["METHOD", "LELPConfig", "build", "lelp_teacher_targets"]


@dataclass(frozen=True)
class LELPConfig:
    """LELP's fields: the run's ``lelp`` section."""

    subclasses: int = 5  # S pseudo-subclasses per class (note d.1: 5)
    beta: float = 0.5  # subclass temperature β [R]
    null_space: bool = True  # h ← h(I − W⁺W) before the PCA; the ablation flag
    rotate: bool = True  # random rotation R_c ∈ O(S) of each class's directions
    seed: int = 0  # rotations
    oracle: bool = False  # subclasses = the true digit (binary-digits, S = 5): the upper bound


@torch.no_grad()
def lelp_teacher_targets(cfg: Any, task: Task, teacher: nn.Module) -> tuple[Tensor, Tensor]:
    """LELP's teacher subclass logits ``(N, C·S)`` on the training set and the teacher logits.

    Penultimate embeddings (``teacher.body``), optional null-space projection with
    ``W = teacher.head.weight``, per-class PCA of the centred embeddings on the teacher's own
    (clean) training labels, random rotations.
    """
    lc = cfg.lelp
    logits, feats = teacher_outputs(teacher, task.x_train, ["body"])
    if lc.oracle:  # note d.1's sanity upper bound: the true digit as the subclass
        return _oracle_targets(logits, task, lc.subclasses, lc.beta), logits
    emb = feats["body"].flatten(1)
    proj = fit_lelp(
        emb,
        task.y_clean,
        task.num_classes,
        lc.subclasses,
        output_weight=teacher.head.weight if lc.null_space else None,
        rotate=lc.rotate,
        rng=torch.Generator().manual_seed(lc.seed),
    )
    return lelp_targets(logits, emb, proj, lc.beta), logits


def _oracle_targets(logits: Tensor, task: Task, s: int, beta: float) -> Tensor:
    """``ℓ_{c,s} = t_c + log_softmax_s(2·1[s = digit mod S] / β)`` [R: the scale 2 stands for
    the unit-std projections of real LELP]; needs ``task.fine_train``."""
    if task.fine_train is None or int(task.fine_train.max()) + 1 != task.num_classes * s:
        raise ValueError(f"lelp.oracle needs binary-digits with lelp.subclasses=5, got {task.name}")
    u = 2.0 * F.one_hot(task.fine_train % s, s).float() / beta  # (N, S)
    ell = logits.unsqueeze(-1) + F.log_softmax(u, dim=-1).unsqueeze(1)
    return ell.flatten(1)


def build(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
    """Student with ``C·S`` outputs, ``α·CE(aggregate) + (1 − α)·KD(T)`` on the subclass targets."""
    targets, _ = lelp_teacher_targets(cfg, task, teacher)
    s = cfg.lelp.subclasses
    student = KDStudent(make_net(task.num_classes * s), num_subclasses=s)

    def loss(b: KDBatch) -> Tensor:
        div = kd_loss(b.student_logits, targets[b.index.cpu()].to(b.x.device), cfg.temperature)
        if cfg.alpha == 0:  # the paper's pure distillation
            return div
        agg = lelp_aggregate(b.student_logits, s)
        return cfg.alpha * ce(agg, b.labels) + (1 - cfg.alpha) * div

    return Plan(student=student, loss=loss)


METHOD = Method(build, section=("lelp", LELPConfig))
