"""Method plumbing for ``scoredistill kd``: logit losses, and plans for methods with extra parts.

A *logit method* is a plain ``loss(student_logits, teacher_logits, labels, cfg) -> scalar``
(``METHODS``). For a classifier the logits are ``(B, C)``; for the retrieval task they are the
scores of a query's ``N`` candidates ``(B, N)`` and the label is the index of its positive, so
the cross-entropy is in-list ITC. Divergence terms carry ``T²`` (Hinton)::

    L = alpha · CE(y, p_s) + (1 − alpha) · T² · D(p_t^T, p_s^T)

A *planned method* (``PLANS``: LELP, OFA-KD, ACAM-KD, FitNet, KD-AIF) needs more than logits:
its own student outputs, trainable extras (projector heads, fusion modules) or per-sample
weights; ``build_plan`` returns a :class:`Plan` (the student, the loss on a ``KDBatch``, the
feature paths to hook, post-training metrics). Its builders live in :mod:`.plans`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import bdkd_loss, jsd, kd_loss, reverse_kl
from .ranking import cprd_loss, margin_mse, pld_loss

if TYPE_CHECKING:
    from ..train.kd import KDBatch

__all__ = [
    "METHODS",
    "ACAMConfig",
    "AIFConfig",
    "LELPConfig",
    "OFAConfig",
    "Plan",
    "RetrievalConfig",
    "ce",
]


# ----------------------------------------------------------------------------- method fields
@dataclass(frozen=True)
class LELPConfig:
    """LELP (Loo et al. 2024, arXiv 2409.20449, method) [S steps / R exact forms]."""

    subclasses: int = 5  # S pseudo-subclasses per class (note d.1: 5)
    beta: float = 0.5  # subclass temperature β [R]
    null_space: bool = True  # h ← h(I − W⁺W) before the PCA; the ablation flag
    rotate: bool = True  # random rotation R_c ∈ O(S) of each class's directions
    seed: int = 0  # rotations
    oracle: bool = False  # subclasses = the true digit (binary-digits, S = 5): the upper bound


@dataclass(frozen=True)
class OFAConfig:
    """OFA-KD (Hao et al., NeurIPS 2023; ``Hao840/OFAKD/distillers/ofa.py``)."""

    eps: float = 1.5  # ε, adaptive target enhancement (README: 1.5 for a confident teacher)
    temperature: float = 1.0  # T of the OFA loss (official default 1, no T²)
    stages: tuple[str, ...] = ("body.1",)  # student modules with a projector head to logits
    hidden: int = 64  # projector width [R: official max(d_s, d_t) conv/transformer branch]
    weight_gt: float = 1.0  # w_gt · CE
    weight_kd: float = 1.0  # w_kd · ofa(final logits)
    weight_ofa: float = 1.0  # w_ofa · Σ_i ofa(head_i(f_i))


@dataclass(frozen=True)
class ACAMConfig:
    """ACAM-KD (Lan & Tian, ICCV 2025, arXiv 2503.06307, STCA-FF + ASCM) [S/R]."""

    num_masks: int = 2  # N mask generators [R]
    mask_weight: float = 1.0  # λ_mask [R] (FitNet's MSE weight too, for a like comparison)
    div_weight: float = 1.0  # λ_div [R]
    attn_dim: int = 0  # d of Q/K [R]; 0 = the teacher's channels
    residual: bool = True  # F_f = norm(φ(F_s) + attention) [R]
    # L_mask's gradient reaches the mask generators [R]; True collapses them (docs/kd.md)
    mask_grad: bool = False
    student_feature: str = "body"  # student map (B, C_s, H, W)
    teacher_feature: str = "body"  # teacher map (B, C_t, H, W)


@dataclass(frozen=True)
class AIFConfig:
    """KD-AIF (Wu et al. 2025, arXiv 2501.02705) influence weights [R]."""

    val_size: int = 100  # clean validation rows (held out of the training split, note d.2.7)
    hessian: Literal["exact", "identity"] = "exact"  # last-layer Hessian, or TracIn-like
    damping: float = 0.01  # λ added to the Hessian's diagonal [R]
    scale: float = 0.0  # s in σ(−I/s) [R]; 0 = std of I over the training set
    renormalize: bool = True  # weights rescaled to mean 1 [R]


@dataclass(frozen=True)
class RetrievalConfig:
    """Synthetic retrieval (note d.2 items 5 and 9): teacher score transforms and CPRD fields."""

    embed_dim: int = 16  # bi-encoder embedding size
    student_bias: bool = True  # biases in the bi-encoder towers (False: note d.2.5 (b))
    offset_std: float = 0.0  # per-query offset added to teacher scores (d.2.5 (b))
    squash: bool = False  # sigmoid on teacher scores: concentrated scores (d.2.9)
    cprd_k: int = 8  # K hard negatives, mined by the student [R]
    cprd_tau: float = 1.0  # τ dividing student scores in the chain [R]
    cprd_weight: float = 1.0  # λ: L = ITC + λ·CPRD [R]
    cprd_margin_weighting: bool = False  # weight chain terms by teacher margins [R]


# ----------------------------------------------------------------------------- logit losses
def ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over the labelled rows (``labels >= 0``); 0 when there are none."""
    count = int((labels >= 0).sum())
    return F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / max(count, 1)


def _mix(cfg: Any, logits: Tensor, labels: Tensor, divergence: Tensor) -> Tensor:
    if cfg.alpha == 0:
        return divergence
    return cfg.alpha * ce(logits, labels) + (1.0 - cfg.alpha) * divergence


def _loss_ce(s: Tensor, t: Tensor | None, y: Tensor, cfg: Any) -> Tensor:
    return ce(s, y)


def _loss_kd(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    return _mix(cfg, s, y, kd_loss(s, t, cfg.temperature))


def _loss_reverse_kl(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    return _mix(cfg, s, y, cfg.temperature**2 * reverse_kl(s, t, cfg.temperature))


def _loss_jsd(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    return _mix(cfg, s, y, cfg.temperature**2 * jsd(s, t, cfg.beta, cfg.temperature))


def _loss_bdkd(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    div = bdkd_loss(s, t, cfg.temperature, mode=cfg.bdkd_mode, delta=cfg.bdkd_delta)
    return _mix(cfg, s, y, div)


def _loss_pld(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """PLD (Bassam et al. 2025): no CE and no alpha; unlabelled rows use the teacher's order."""
    y = torch.where(y >= 0, y, t.argmax(-1))
    return pld_loss(s, t, y, cfg.temperature)


def _positive(x: Tensor, y: Tensor) -> Tensor:
    return x.gather(-1, y.clamp_min(0).unsqueeze(-1))  # (B, 1)


def _loss_pointwise(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """Pointwise score regression ``Σ_d (s − t)²`` per query (Margin-MSE's comparison)."""
    return _mix(cfg, s, y, (s - t.detach()).square().sum(-1).mean())


def _loss_margin_mse(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """Margin-MSE (Hofstätter et al. 2020) over every (positive, candidate) pair of the list."""
    div = margin_mse(_positive(s, y), s, _positive(t, y), t)
    return _mix(cfg, s, y, div)


def _loss_cprd(s: Tensor, t: Tensor, y: Tensor, cfg: Any) -> Tensor:
    """ITC + λ·CPRD (Chen et al., CVPR 2024) [R]; the positive is excluded from the chain."""
    r = cfg.retrieval
    exclude = F.one_hot(y.clamp_min(0), s.shape[-1]).bool()
    chain = cprd_loss(
        s,
        t,
        num_hard=r.cprd_k,
        temperature=r.cprd_tau,
        exclude=exclude,
        margin_weighting=r.cprd_margin_weighting,
    )
    return ce(s, y) + r.cprd_weight * chain


LossFn = Callable[[Tensor, Any, Tensor, Any], Tensor]

METHODS: dict[str, LossFn] = {
    "ce": _loss_ce,  # no teacher: the baseline (on retrieval: in-list ITC)
    "kd": _loss_kd,  # Hinton et al. 2015 (on retrieval: logit/score KD)
    "reverse_kl": _loss_reverse_kl,  # mode-seeking KL(p_s || p_t)
    "jsd": _loss_jsd,  # GKD's JSD(beta), token-free
    "bdkd": _loss_bdkd,  # BD-KD's student term against a frozen teacher (offline)
    "pld": _loss_pld,  # Plackett-Luce distillation, tau = temperature
    "pointwise": _loss_pointwise,  # retrieval: MSE on scores
    "margin_mse": _loss_margin_mse,  # retrieval: Hofstaetter et al. 2020
    "cprd": _loss_cprd,  # retrieval: ITC + contrastive partial ranking
}


# ----------------------------------------------------------------------------- plans
@dataclass
class Plan:
    """What a method adds to the run: its student, loss, hooked features and extra metrics."""

    student: nn.Module
    loss: Callable[[KDBatch], Tensor]
    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)  # known before training
    finalize: Callable[[nn.Module], dict[str, float]] | None = None  # after training


def logit_plan(cfg: Any, make_net: Callable[[int], nn.Module], num_classes: int) -> Plan:
    """A plain student trained with ``METHODS[cfg.method]`` on its logits."""
    method = METHODS[cfg.method]

    def loss(b: KDBatch) -> Tensor:
        return method(b.student_logits, b.teacher_logits, b.labels, cfg)

    return Plan(student=make_net(num_classes), loss=loss)
