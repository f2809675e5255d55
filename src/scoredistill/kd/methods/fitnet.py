"""FitNet hints (Romero et al. 2015, §2.2), the feature-hint comparison for ACAM-KD::

    L = CE + λ · mean (F_t − conv1×1(F_s))²

It reads the maps and ``λ = acam.mask_weight`` from the ``acam`` section, so the two methods
compare like for like.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ...train.kd import KDBatch
from ..models import KDStudent
from ..tasks import Task
from .acam import ACAMConfig, feature_channels
from .base import Method, Plan, ce

__all__ = ["METHOD", "build"]


def build(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
    """The student with a 1×1 conv adapter from its map to the teacher's channels."""
    ac = cfg.acam
    net = make_net(task.num_classes)
    c_s, c_t = feature_channels(cfg, task, teacher, net)
    student = KDStudent(net, {"adapter": nn.Conv2d(c_s, c_t, 1)})
    s_path = f"net.{ac.student_feature}"

    def loss(b: KDBatch) -> Tensor:
        f_s = student.extras["adapter"](b.student_features[s_path])
        hint = F.mse_loss(f_s, b.teacher_features[ac.teacher_feature])
        return ce(b.student_logits, b.labels) + ac.mask_weight * hint

    return Plan(
        student=student,
        loss=loss,
        student_features=(s_path,),
        teacher_features=(ac.teacher_feature,),
    )


METHOD = Method(build, section=("acam", ACAMConfig))
