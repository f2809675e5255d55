"""OFA-KD (Hao et al., NeurIPS 2023; ``Hao840/OFAKD/distillers/ofa.py``): projector heads map
intermediate student features to logit space, each distilled with the OFA loss (adaptive target
enhancement ``ε``)::

    L = w_gt · CE + w_kd · ofa(z_s) + w_ofa · Σ_i ofa(head_i(f_i))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...train.kd import FeatureHooks, KDBatch
from ..feature import OFAProjector, ofa_loss
from ..models import KDStudent
from ..tasks import Task
from .base import Method, Plan, ce

__all__ = ["METHOD", "OFAConfig", "build"]


@dataclass(frozen=True)
class OFAConfig:
    """OFA-KD's fields: the run's ``ofa`` section."""

    eps: float = 1.5  # ε, adaptive target enhancement (README: 1.5 for a confident teacher)
    temperature: float = 1.0  # T of the OFA loss (official default 1, no T²)
    stages: tuple[str, ...] = ("body.1",)  # student modules with a projector head to logits
    hidden: int = 64  # projector width [R: official max(d_s, d_t) conv/transformer branch]
    weight_gt: float = 1.0  # w_gt · CE
    weight_kd: float = 1.0  # w_kd · ofa(final logits)
    weight_ofa: float = 1.0  # w_ofa · Σ_i ofa(head_i(f_i))


def build(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
    """The student with one :class:`OFAProjector` per stage and the total loss above."""
    oc = cfg.ofa
    net = make_net(task.num_classes)
    with torch.no_grad(), FeatureHooks(net, oc.stages) as hooks:
        net(task.x_train[:2])  # feature shapes for the projector heads
    probe = hooks.outputs
    heads = {
        p.replace(".", "_"): OFAProjector(
            probe[p].shape[1], task.num_classes, oc.hidden, spatial=probe[p].ndim == 4
        )
        for p in oc.stages
    }
    student = KDStudent(net, heads)
    paths = tuple(f"net.{p}" for p in oc.stages)

    def loss(b: KDBatch) -> Tensor:
        t, y = b.teacher_logits, b.labels
        total = oc.weight_gt * ce(b.student_logits, y)
        total = total + oc.weight_kd * ofa_loss(b.student_logits, t, y, oc.eps, oc.temperature)
        for p in oc.stages:
            z = student.extras[p.replace(".", "_")](b.student_features[f"net.{p}"])
            total = total + oc.weight_ofa * ofa_loss(z, t, y, oc.eps, oc.temperature)
        return total

    return Plan(student=student, loss=loss, student_features=paths)


METHOD = Method(build, section=("ofa", OFAConfig))
