"""ACAM-KD (Lan & Tian, ICCV 2025, arXiv 2503.06307) [S/R]: student-teacher cross-attention
fusion (STCA-FF) and adaptive spatial-channel masks (ASCM) on a feature map::

    L = CE + λ_mask · L_mask(F_t, φ(F_s); M_s, M_c) + λ_div · L_div(M_s, M_c)

with :class:`~..feature.ACAMFusion` producing ``(φ(F_s), M_s, M_c)``. After training the run
reports the masks' diversity, collapse and change on the test split (note d.2.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...train.kd import FeatureHooks, KDBatch, teacher_outputs
from ..feature import ACAMFusion, acam_loss, acam_mask_loss, mask_diversity
from ..models import KDStudent
from ..tasks import Task
from .base import Method, Plan, ce

__all__ = ["METHOD", "ACAMConfig", "build", "feature_channels", "mask_metrics"]


@dataclass(frozen=True)
class ACAMConfig:
    """ACAM-KD's fields: the run's ``acam`` section (FitNet, its comparison, reads it too)."""

    num_masks: int = 2  # N mask generators [R]
    mask_weight: float = 1.0  # λ_mask [R] (FitNet's MSE weight too, for a like comparison)
    div_weight: float = 1.0  # λ_div [R]
    attn_dim: int = 0  # d of Q/K [R]; 0 = the teacher's channels
    residual: bool = True  # F_f = norm(φ(F_s) + attention) [R]
    # L_mask's gradient reaches the mask generators [R]; True collapses them (docs/kd.md)
    mask_grad: bool = False
    student_feature: str = "body"  # student map (B, C_s, H, W)
    teacher_feature: str = "body"  # teacher map (B, C_t, H, W)


def feature_channels(cfg: Any, task: Task, teacher: nn.Module, net: nn.Module) -> tuple[int, int]:
    """Channels ``(C_s, C_t)`` of the student and teacher maps named in ``cfg.acam``."""
    ac = cfg.acam
    with torch.no_grad(), FeatureHooks(net, [ac.student_feature]) as hs:
        net(task.x_train[:2])
    _, t_feats = teacher_outputs(teacher, task.x_train[:2], [ac.teacher_feature])
    return hs[ac.student_feature].shape[1], t_feats[ac.teacher_feature].shape[1]


def build(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
    """The student with an :class:`ACAMFusion` extra; ``finalize`` gives :func:`mask_metrics`."""
    ac = cfg.acam
    net = make_net(task.num_classes)
    c_s, c_t = feature_channels(cfg, task, teacher, net)
    fusion = ACAMFusion(c_s, c_t, ac.num_masks, ac.attn_dim or None, residual=ac.residual)
    student = KDStudent(net, {"fusion": fusion})
    s_path = f"net.{ac.student_feature}"
    _, t_feats = teacher_outputs(teacher, task.x_test, [ac.teacher_feature])
    f_t_probe = t_feats[ac.teacher_feature]  # the test split: a fixed probe batch
    # snapshots on the probe: before the first update and after the first 10% of the steps
    snap_step = max(cfg.train.steps // 10, 1)
    calls, snaps = [0], {}

    @torch.no_grad()
    def probe(model: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        with FeatureHooks(model, [s_path]) as hooks:
            model(task.x_test.to(device))
        out = model.extras["fusion"](hooks[s_path], f_t_probe.to(device))
        model.train(was)
        return out

    def loss(b: KDBatch) -> Tensor:
        if calls[0] in (0, snap_step):  # the parameters after `calls` updates
            snaps[calls[0]] = probe(student)
        calls[0] += 1
        f_t = b.teacher_features[ac.teacher_feature]
        f_s, m_s, m_c = student.extras["fusion"](b.student_features[s_path], f_t)
        div_weight = ac.div_weight / ac.mask_weight
        distil = acam_loss(f_s, f_t, m_s, m_c, div_weight=div_weight, mask_grad=ac.mask_grad)
        return ce(b.student_logits, b.labels) + ac.mask_weight * distil

    def finalize(model: nn.Module) -> dict[str, float]:
        """Mask diversity, collapse and change on the test split (ASCM, d.2.8)."""
        f_t = f_t_probe.to(next(model.parameters()).device)
        return mask_metrics(probe(model), snaps, f_t, ac.num_masks, snap_step)

    return Plan(
        student=student,
        loss=loss,
        student_features=(s_path,),
        teacher_features=(ac.teacher_feature,),
        finalize=finalize,
    )


def mask_metrics(
    end: tuple[Tensor, Tensor, Tensor],
    snaps: dict[int, tuple[Tensor, Tensor, Tensor]],
    f_t: Tensor,
    num_masks: int,
    snap_step: int,
) -> dict[str, float]:
    """ACAM-KD's mask metrics from ``(φ(F_s), M_s, M_c)`` on the probe at the end and snapshots.

    - ``acam_mask_cosine``: mean pairwise cosine of the ``N`` masks ``M_s^n ⊗ M_c^n``; its
      factors ``acam_spatial_mask_cosine`` (of the ``M_s^n``) and ``acam_channel_mask_cosine``.
    - ``acam_mask_std``: the smallest, over masks, mean spatial std of ``M_s^n`` (≈ 0: a mask
      is constant over positions, e.g. all 0 or all 1; the cosine is then vacuous).
    - ``acam_min_spatial_mask_mean``: the smallest mean of a spatial mask (≈ 0: switched off).
    - ``acam_mask_change``: mean ``|ΔM|`` between ``snap_step`` updates and the end.
    - ``acam_mask_loss_first``/``_last``, ``acam_feature_mse_first``/``_last``: ``L_mask`` and
      the unmasked ``mean (F_t − φ(F_s))²`` before training and at the end: a ``L_mask`` that
      falls while the feature MSE does not means the masks, not the student, moved.
    """
    f_s, m_s, m_c = end
    pairs = max(num_masks * (num_masks - 1), 1)
    ones_s, ones_c = torch.ones_like(m_s), torch.ones_like(m_c)
    out = {
        "acam_mask_cosine": float(mask_diversity(m_s, m_c)) / pairs,
        # the two factors of the cosine: which of the masks' parts differ
        "acam_spatial_mask_cosine": float(mask_diversity(m_s, ones_c)) / pairs,
        "acam_channel_mask_cosine": float(mask_diversity(ones_s, m_c)) / pairs,
        "acam_mask_std": float(m_s.flatten(2).std(-1).mean(0).min()),
        "acam_min_spatial_mask_mean": float(m_s.mean(dim=(0, 2, 3)).min()),
        "acam_mask_loss_last": float(acam_mask_loss(f_s, f_t, m_s, m_c)),
        "acam_feature_mse_last": float(F.mse_loss(f_s, f_t)),
    }
    if 0 in snaps:  # absent when the run resumed from a checkpoint
        f0, s0, c0 = snaps[0]
        out |= {
            "acam_mask_loss_first": float(acam_mask_loss(f0, f_t, s0, c0)),
            "acam_feature_mse_first": float(F.mse_loss(f0, f_t)),
        }
    change = float("nan")
    if snap_step in snaps:
        _, s1, c1 = snaps[snap_step]
        m1, m2 = (torch.einsum("bnhw,bnc->bnchw", s, c) for s, c in ((s1, c1), (m_s, m_c)))
        change = float((m2 - m1).abs().mean())
    return out | {"acam_mask_change": change}


METHOD = Method(build, section=("acam", ACAMConfig))
