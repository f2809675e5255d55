"""What every KD method file provides, and the few pieces the methods share.

A method is a :class:`Method`: ``build(cfg, task, teacher, make_net, reference) -> Plan`` and,
when it has hyperparameters of its own, ``section = (name, Config)``: a frozen dataclass that the
run's config holds as the section ``name`` (``--set lelp.subclasses=3``). ``cfg`` is the run's
config (``runs.kd.KDConfig``: ``temperature``, ``alpha``, ``beta``, ``train``, ``retrieval`` and
every method's section); ``make_net(out_dim)`` builds the run's student network from the run's
seed, so the method, its reference and the no-teacher baseline start from the same weights;
``reference`` is the already trained reference student (KD-AIF takes influence at it).

A *logit method* is a plain ``loss(student_logits, teacher_logits, labels, cfg) -> scalar``
made into a method by :func:`logit_method`. For a classifier the logits are ``(B, C)``; for the
retrieval task they are the scores of a query's ``N`` candidates ``(B, N)`` and the label is the
index of its positive, so the cross-entropy is in-list ITC. Divergence terms carry ``T²``
(Hinton)::

    L = alpha · CE(y, p_s) + (1 − alpha) · T² · D(p_t^T, p_s^T)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import Task

if TYPE_CHECKING:
    from ...train.kd import KDBatch

__all__ = [
    "Builder",
    "LossFn",
    "Method",
    "Plan",
    "RetrievalConfig",
    "ce",
    "logit_method",
    "mix",
    "positive",
]


@dataclass
class Plan:
    """What a method adds to the run: its student, loss, hooked features and extra metrics."""

    student: nn.Module
    loss: Callable[[KDBatch], Tensor]
    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)  # known before training
    finalize: Callable[[nn.Module], dict[str, float]] | None = None  # after training


Builder = Callable[[Any, Task, "nn.Module | None", Callable[[int], nn.Module], Any], Plan]
LossFn = Callable[[Tensor, Any, Tensor, Any], Tensor]


@dataclass(frozen=True)
class Method:
    """A registered KD method: its plan builder and its own config section (None: none)."""

    build: Builder
    section: tuple[str, type] | None = None


@dataclass(frozen=True)
class RetrievalConfig:
    """Synthetic retrieval (note d.2 items 5 and 9): the student, teacher score transforms and
    CPRD's fields (they stay here so that ``retrieval.cprd_*`` keys keep their names)."""

    embed_dim: int = 16  # bi-encoder embedding size
    student_bias: bool = True  # biases in the bi-encoder towers (False: note d.2.5 (b))
    offset_std: float = 0.0  # per-query offset added to teacher scores (d.2.5 (b))
    squash: bool = False  # sigmoid on teacher scores: concentrated scores (d.2.9)
    cprd_k: int = 8  # K hard negatives, mined by the student [R]
    cprd_tau: float = 1.0  # τ dividing student scores in the chain [R]
    cprd_weight: float = 1.0  # λ: L = ITC + λ·CPRD [R]
    cprd_margin_weighting: bool = False  # weight chain terms by teacher margins [R]


def ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over the labelled rows (``labels >= 0``); 0 when there are none."""
    count = int((labels >= 0).sum())
    return F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / max(count, 1)


def mix(cfg: Any, logits: Tensor, labels: Tensor, divergence: Tensor) -> Tensor:
    """``alpha · CE + (1 − alpha) · divergence`` (the divergence alone when ``alpha = 0``)."""
    if cfg.alpha == 0:
        return divergence
    return cfg.alpha * ce(logits, labels) + (1.0 - cfg.alpha) * divergence


def positive(x: Tensor, y: Tensor) -> Tensor:
    """The positive candidate's score ``(B, 1)`` of each list ``x (B, N)``."""
    return x.gather(-1, y.clamp_min(0).unsqueeze(-1))


def logit_method(loss: LossFn) -> Method:
    """A plain student trained with ``loss(student_logits, teacher_logits, labels, cfg)``."""

    def build(cfg: Any, task: Task, teacher: Any, make_net: Any, reference: Any) -> Plan:
        def batch_loss(b: KDBatch) -> Tensor:
            return loss(b.student_logits, b.teacher_logits, b.labels, cfg)

        return Plan(student=make_net(task.num_classes), loss=batch_loss)

    return Method(build)
