"""KD-AIF (Wu et al. 2025, arXiv 2501.02705) [R]: KD+CE with per-sample weights from the
influence of each training row on a clean validation loss (Koh & Liang 2017, §2.1)::

    I_i = −∇ℓ_val(θ)ᵀ (H + λI)⁻¹ ∇ℓ_i(θ),   w_i = σ(−I_i / s),   L = Σ_i w_i ℓ_i / Σ_i w_i

taken at the last layer of the trained unweighted (reference) student, once [R: the paper
refreshes every k steps]; ``ℓ_i = α·CE(y_i) + (1 − α)·T²·KL(p_t ‖ p_s)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ...train.kd import KDBatch
from ..influence import influence_weights, per_sample_grads
from ..losses import kd_loss
from ..tasks import Task
from .base import Method, Plan

__all__ = ["METHOD", "AIFConfig", "aif_split", "aif_weights", "build"]


@dataclass(frozen=True)
class AIFConfig:
    """KD-AIF's fields: the run's ``aif`` section."""

    val_size: int = 100  # clean validation rows (held out of the training split, note d.2.7)
    hessian: Literal["exact", "identity"] = "exact"  # last-layer Hessian, or TracIn-like
    damping: float = 0.01  # λ added to the Hessian's diagonal [R]
    scale: float = 0.0  # s in σ(−I/s) [R]; 0 = std of I over the training set
    renormalize: bool = True  # weights rescaled to mean 1 [R]


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
    """KD-AIF weights ``(N,)`` at ``model``: last-layer influence of every training row's KD+CE
    loss on the clean validation CE."""
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


def build(cfg: Any, task: Task, teacher: nn.Module, make_net: Any, reference: Any) -> Plan:
    """Influence-weighted KD+CE; the weights' means on clean and noisy rows (and their AUROC at
    telling them apart) are the plan's metrics."""
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


METHOD = Method(build, section=("aif", AIFConfig))
