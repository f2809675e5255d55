"""Plans for KD methods that need more than logits: LELP, OFA-KD, ACAM-KD, FitNet, KD-AIF.

Each builder ``(cfg, task, teacher, make_net, reference) -> Plan`` creates the student (a
:class:`~.models.KDStudent` when it carries extras), its loss on a ``KDBatch`` and the feature
paths to hook. ``make_net(out_dim)`` builds the run's student network from the run's seed, so
the method, its reference and the no-teacher baseline start from the same weights.
``reference`` is the already trained reference student (KD-AIF computes influence at it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..train.kd import FeatureHooks, KDBatch, teacher_outputs
from .feature import (
    ACAMFusion,
    OFAProjector,
    acam_loss,
    acam_mask_loss,
    mask_diversity,
    ofa_loss,
)
from .influence import influence_weights, per_sample_grads
from .losses import kd_loss
from .methods import Plan, ce
from .models import KDStudent
from .subclass import fit_lelp, lelp_aggregate, lelp_targets
from .tasks import Task

__all__ = ["PLANS", "aif_split", "lelp_teacher_targets"]

Builder = Callable[[Any, Task, nn.Module, Callable[[int], nn.Module], "nn.Module | None"], Plan]


# ----------------------------------------------------------------------------- LELP
@torch.no_grad()
def lelp_teacher_targets(cfg: Any, task: Task, teacher: nn.Module) -> tuple[Tensor, Tensor]:
    """LELP's teacher subclass logits ``(N, C·S)`` on the training set and the teacher logits.

    Loo et al. 2024 (arXiv 2409.20449), steps 1–5: penultimate embeddings (``teacher.body``),
    optional null-space projection with ``W = teacher.head.weight``, per-class PCA of the
    centred embeddings on the teacher's own (clean) training labels, random rotations.
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


def _lelp(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
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


# ----------------------------------------------------------------------------- OFA-KD
def _ofa(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
    """``w_gt·CE + w_kd·ofa(z_s) + w_ofa·Σ_i ofa(head_i(f_i))`` (Hao et al. 2023, total loss)."""
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


# ----------------------------------------------------------------------------- ACAM-KD, FitNet
def _feature_shapes(cfg: Any, task: Task, teacher: nn.Module, net: nn.Module) -> tuple[int, int]:
    ac = cfg.acam
    with torch.no_grad(), FeatureHooks(net, [ac.student_feature]) as hs:
        net(task.x_train[:2])
    _, t_feats = teacher_outputs(teacher, task.x_train[:2], [ac.teacher_feature])
    c_s, c_t = hs[ac.student_feature].shape[1], t_feats[ac.teacher_feature].shape[1]
    return c_s, c_t


def _acam(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
    """``CE + λ_mask·L_mask + λ_div·L_div`` (Lan & Tian 2025, ASCM) with :class:`ACAMFusion`."""
    ac = cfg.acam
    net = make_net(task.num_classes)
    c_s, c_t = _feature_shapes(cfg, task, teacher, net)
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
        return _acam_mask_metrics(probe(model), snaps, f_t, ac.num_masks, snap_step)

    return Plan(
        student=student,
        loss=loss,
        student_features=(s_path,),
        teacher_features=(ac.teacher_feature,),
        finalize=finalize,
    )


def _acam_mask_metrics(
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


def _fitnet(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
    """FitNet-style hint loss ``CE + λ·mean (F_t − conv1×1(F_s))²`` (Romero et al. 2015, §2.2)."""
    ac = cfg.acam
    net = make_net(task.num_classes)
    c_s, c_t = _feature_shapes(cfg, task, teacher, net)
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


# ----------------------------------------------------------------------------- KD-AIF
def aif_split(task: Task, size: int, seed: int) -> Tensor:
    """Bool mask ``(N,)`` of ``size`` stratified training rows used as the clean validation set."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(task.y_clean))
    chosen, _ = train_test_split(
        rows, train_size=size, stratify=task.y_clean.numpy(), random_state=seed
    )
    mask = torch.zeros(len(rows), dtype=torch.bool)
    mask[torch.as_tensor(chosen)] = True
    return mask


def _row_losses(cfg: Any, z: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """Per-row ``α·CE(y) + (1 − α)·T²·KL(p_t ‖ p_s)`` ``(B,)``."""
    div = kd_loss(z, t, cfg.temperature, reduction="none")
    return cfg.alpha * F.cross_entropy(z, y, reduction="none") + (1 - cfg.alpha) * div


def aif_weights(cfg: Any, task: Task, teacher: nn.Module, model: nn.Module) -> Tensor:
    """KD-AIF weights ``(N,)`` at ``model`` (Wu et al. 2025) [R]: last-layer influence of every
    training row's KD+CE loss on the clean validation CE (Koh & Liang 2017, §2.1)."""
    ac = cfg.aif
    val = aif_split(task, ac.val_size, cfg.data_seed)
    with torch.no_grad():
        model.eval()
        feats = model.body(task.x_train)
        t_logits = teacher(task.x_train)
    head = model.head
    packed = torch.cat([t_logits, task.y_train.unsqueeze(-1).float()], dim=-1)

    def one(z: Tensor, tgt: Tensor) -> Tensor:
        return _row_losses(cfg, z, tgt[:, :-1], tgt[:, -1].long()).sum()

    grads = per_sample_grads(head, one, feats, packed)  # (N, P)
    names = [n for n, _ in head.named_parameters()]
    shapes = [p.shape for _, p in head.named_parameters()]
    flat = torch.cat([p.detach().flatten() for _, p in head.named_parameters()])

    def params(v: Tensor) -> dict[str, Tensor]:
        parts = torch.split(v, [int(np.prod(s)) for s in shapes])
        return {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}

    def train_loss(v: Tensor) -> Tensor:
        return _row_losses(
            cfg, functional_call(head, params(v), (feats,)), t_logits, task.y_train
        ).mean()

    def val_loss(v: Tensor) -> Tensor:
        z = functional_call(head, params(v), (feats[val],))
        return F.cross_entropy(z, task.y_clean[val])

    g_val = torch.func.grad(val_loss)(flat)
    hess = torch.func.hessian(train_loss)(flat) if ac.hessian == "exact" else None
    return influence_weights(
        grads,
        g_val,
        hess,
        damping=ac.damping,
        scale=ac.scale or None,
        renormalize=ac.renormalize,
    )


def _kdaif(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
    """Influence-weighted KD+CE: ``Σ_i w_i ℓ_i / Σ_i w_i`` with ``w`` computed once at the
    trained unweighted (reference) student [R: the paper refreshes every k steps]."""
    if reference is None:
        raise ValueError("method 'kdaif' needs reference='kd' (influence is taken at it)")
    w = aif_weights(cfg, task, teacher, reference)
    clean = (task.y_train == task.y_clean).numpy()
    metrics = {"aif_weight_noisy": float(w[~torch.as_tensor(clean)].mean())}
    metrics["aif_weight_clean"] = float(w[torch.as_tensor(clean)].mean())
    if 0 < clean.sum() < len(clean):
        from sklearn.metrics import roc_auc_score

        metrics["aif_auroc"] = float(roc_auc_score(clean, w.numpy()))

    def loss(b: KDBatch) -> Tensor:
        wb = w[b.index.cpu()].to(b.x.device)
        rows = _row_losses(cfg, b.student_logits, b.teacher_logits, b.labels)
        return (wb * rows).sum() / wb.sum()

    return Plan(student=make_net(task.num_classes), loss=loss, metrics=metrics)


PLANS: dict[str, Builder] = {
    "lelp": _lelp,  # Loo et al. 2024: pseudo-subclass targets
    "ofa": _ofa,  # Hao et al. 2023: projector heads to logit space
    "acam": _acam,  # Lan & Tian 2025: cross-attention fusion + masks
    "fitnet": _fitnet,  # Romero et al. 2015: the feature-hint comparison for ACAM
    "kdaif": _kdaif,  # Wu et al. 2025: influence-weighted KD
}
