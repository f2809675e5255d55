"""Ranking distillation: Plackett–Luce (PLD, ListMLE), Margin-MSE, CPRD, and the nDCG metric.

Shapes: one row per query/sample, one column per item/class: ``scores (B, N)``. The teacher is
frozen: every loss detaches the teacher's scores, so no gradient reaches it. ``reduction`` is
``"batchmean"`` (mean over rows) | ``"sum"`` | ``"none"`` (one value per row), as in
:mod:`scoredistill.kd.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import reduce

__all__ = [
    "cprd_loss",
    "listmle",
    "margin_mse",
    "mine_hard_negatives",
    "ndcg",
    "plackett_luce_nll",
    "pld_loss",
    "pld_weights",
    "suffix_logsumexp",
]


def suffix_logsumexp(x: Tensor, dim: int = -1) -> Tensor:
    """``out[..., k] = logsumexp(x[..., k:])`` along ``dim`` (same shape as ``x``).

    Computed as ``flip(logcumsumexp(flip(x)))``, stable for large logits.
    """
    return torch.logcumsumexp(x.flip(dim), dim=dim).flip(dim)


def plackett_luce_nll(scores: Tensor, perm: Tensor, weights: Tensor | None = None) -> Tensor:
    """Per-row weighted Plackett–Luce negative log-likelihood of a ranking.

    ``Σ_k w_k · (logsumexp_{j≥k} s_{π_j} − s_{π_k})``; with ``w ≡ 1`` this is ListMLE
    (Xia et al., ICML 2008).

    Args:
        scores: ``(B, N)`` student scores.
        perm: ``(B, N)`` (or ``(B, K)``, a partial chain over ``K`` items) indices, best first.
        weights: ``(B, K)`` position weights ``w_k`` in ``perm`` order; ``None`` means all ones.

    Returns:
        ``(B,)``.
    """
    s_perm = scores.gather(-1, perm)
    terms = suffix_logsumexp(s_perm) - s_perm
    if weights is not None:
        terms = terms * weights
    return terms.sum(-1)


def listmle(scores: Tensor, perm: Tensor, reduction: str = "batchmean") -> Tensor:
    """ListMLE (Xia et al., ICML 2008): ``−log P_PL(π | s)``; ``scores (B, N)``, ``perm (B, N)``."""
    return reduce(plackett_luce_nll(scores, perm), reduction)


def pld_weights(
    teacher_logits: Tensor, labels: Tensor | None = None, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """PLD's teacher-optimal permutation ``π*`` and weights ``α`` (Bassam et al. 2025, arXiv 2506.12542).

    ``π* = [y, the other classes by teacher logit, descending]`` (ties: lower index first) and
    ``α_k = softmax(t/τ)[π*_k]``. Without labels, ``π*`` is the teacher's own order.
    A mean ``α_1`` near 1 (saturated teacher) makes PLD equal CE: raise ``τ``.

    Args:
        teacher_logits: ``(B, C)``; detached.
        labels: ``(B,)`` integer labels or ``None``.
        temperature: ``τ`` on the teacher side only.

    Returns:
        ``(perm, alpha)``, both ``(B, C)``.
    """
    t = teacher_logits.detach()
    key = t.clone()
    if labels is not None:
        key.scatter_(-1, labels.long().unsqueeze(-1), float("inf"))
    perm = torch.sort(key, dim=-1, descending=True, stable=True).indices
    alpha = F.softmax(t / temperature, dim=-1).gather(-1, perm)
    return perm, alpha


def pld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> Tensor:
    """Plackett–Luce distillation (Bassam, Zhu, Bian 2025, arXiv 2506.12542, the PLD loss and App. C code)::

        L = mean_batch Σ_k α_k · ( logsumexp_{j≥k} s_{π*_j} − s_{π*_k} )

    on unsoftened student logits ``s``, with ``(π*, α)`` from :func:`pld_weights`. No separate CE
    and no mixing weight: the ``k = 1`` term is CE weighted by ``p_t(y)``. Convex and invariant to
    adding a constant to ``s``. ``α = (1, 0, …)`` gives CE, uniform ``α = 1/C`` gives ListMLE / C.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``; detached.
        labels: ``(B,)`` or ``None`` (teacher order only).
        temperature: ``τ`` applied to the teacher (paper: 1 on ImageNet, 4 on CIFAR-100).
        reduction: ``"batchmean"`` | ``"sum"`` | ``"none"``.
    """
    perm, alpha = pld_weights(teacher_logits, labels, temperature)
    return reduce(plackett_luce_nll(student_logits, perm, alpha), reduction)


def margin_mse(
    student_pos: Tensor,
    student_neg: Tensor,
    teacher_pos: Tensor,
    teacher_neg: Tensor,
    reduction: str = "batchmean",
) -> Tensor:
    """Margin-MSE (Hofstätter et al. 2020, arXiv 2010.02666)::

        L = mean_batch ( (s_S(q,p⁺) − s_S(q,p⁻)) − (s_T(q,p⁺) − s_T(q,p⁻)) )²

    Only margins enter, so a per-query offset on either model's scores cancels (loss and
    gradients). Scale still matters; standardising teacher margins is left to the caller.

    Args:
        student_pos, teacher_pos: ``(B,)`` (or ``(B, 1)`` against several negatives).
        student_neg, teacher_neg: ``(B,)`` or ``(B, N)``; teacher scores are detached.
        reduction: ``"batchmean"`` (mean over triples) | ``"sum"`` | ``"none"``.
    """
    diff = (student_pos - student_neg) - (teacher_pos - teacher_neg).detach()
    return reduce(diff.square(), reduction)


def mine_hard_negatives(scores: Tensor, num_hard: int, exclude: Tensor | None = None) -> Tensor:
    """Indices ``(B, K)`` of the ``K = num_hard`` highest-scoring candidates per row.

    ``scores (B, N)`` are detached (mining is not differentiable); ``exclude (B, N)`` bool marks
    positives (e.g. the diagonal of in-batch similarities) that must not be mined.
    """
    s = scores.detach()
    if exclude is not None:
        s = s.masked_fill(exclude, float("-inf"))
    if not 1 <= num_hard <= s.shape[-1]:
        raise ValueError(f"num_hard must be in [1, {s.shape[-1]}], got {num_hard}")
    return s.topk(num_hard, dim=-1).indices


def cprd_loss(
    student_scores: Tensor,
    teacher_scores: Tensor,
    *,
    num_hard: int | None = 8,
    temperature: float = 1.0,
    exclude: Tensor | None = None,
    margin_weighting: bool = False,
    reduction: str = "batchmean",
) -> Tensor:
    """Contrastive partial ranking distillation (Chen et al., CVPR 2024, arXiv 2407.07479) [R].

    For each query: mine the ``K`` hard negatives by **student** (dual-encoder) score, re-rank them
    by **teacher** (cross-encoder) score into ``π``, and fit the student to that partial ranking::

        L(q) = − Σ_{k=1..K−1} log[ exp(s_{π_k}/τ) / Σ_{j≥k} exp(s_{π_j}/τ) ]

    The positive is not in the chain (ITC handles it; add ``L_ITC + λ·L`` in the caller), and the
    easy negatives (outside the top ``K``) are ignored, so their order and teacher scores do not
    matter. The paper's exact form was not verified; every detail is a keyword argument [R]:

    Args:
        student_scores: ``(B, N)`` dual-encoder similarities of each query to ``N`` candidates.
        teacher_scores: ``(B, N)`` cross-encoder scores of the same pairs; detached. Only the
            mined entries are read, so unscored candidates may hold any finite value.
        num_hard: ``K`` [R: default 8]; ``None`` uses all ``N`` columns (already mined by the
            caller, e.g. to score only ``K`` pairs with the expensive cross-encoder).
        temperature: ``τ`` dividing the student scores [R: default 1, pass the ITC temperature].
        exclude: ``(B, N)`` bool, candidates that are positives (never mined).
        margin_weighting: [R] weight term ``k`` by the teacher margin ``t_{π_k} − t_{π_{k+1}}``,
            normalised to mean 1 per query.
        reduction: ``"batchmean"`` (mean over queries) | ``"sum"`` | ``"none"``.
    """
    if num_hard is None:
        idx = torch.arange(student_scores.shape[-1], device=student_scores.device)
        idx = idx.expand_as(student_scores)
    else:
        idx = mine_hard_negatives(student_scores, num_hard, exclude)
    t_hard = teacher_scores.detach().gather(-1, idx)
    order = torch.sort(t_hard, dim=-1, descending=True, stable=True).indices
    perm = idx.gather(-1, order)
    weights = torch.ones_like(t_hard)
    weights[..., -1] = 0.0  # the last term is log 1 = 0; dropped as in the sum to K−1
    if margin_weighting:
        t_sorted = t_hard.gather(-1, order)
        gaps = t_sorted[..., :-1] - t_sorted[..., 1:]
        gaps = gaps / gaps.mean(-1, keepdim=True).clamp_min(torch.finfo(gaps.dtype).tiny)
        weights = F.pad(gaps, (0, 1))
    return reduce(plackett_luce_nll(student_scores / temperature, perm, weights), reduction)


def ndcg(
    scores: Tensor,
    relevance: Tensor,
    k: int | None = None,
    reduction: str = "batchmean",
) -> Tensor:
    """Normalised discounted cumulative gain with linear gains (Järvelin & Kekäläinen 2002).

    ``DCG@k = Σ_{i≤k} rel_{(i)} / log2(i + 1)`` in the order of decreasing ``scores``, divided by
    the DCG of the ideal order. Ties in ``scores`` are broken by index (sklearn's
    ``ndcg_score(..., ignore_ties=True)``); a row with no relevant item scores 0, as in sklearn.

    Args:
        scores: ``(B, N)`` predicted scores.
        relevance: ``(B, N)`` non-negative graded relevance.
        k: cut-off, ``None`` for all ``N``.
        reduction: ``"batchmean"`` (mean over queries) | ``"sum"`` | ``"none"`` ``(B,)``.
    """
    n = scores.shape[-1] if k is None else min(k, scores.shape[-1])
    rel = relevance.detach().to(torch.promote_types(relevance.dtype, torch.float32))
    discount = 1.0 / torch.log2(torch.arange(2, n + 2, dtype=rel.dtype, device=rel.device))
    order = torch.sort(scores.detach(), dim=-1, descending=True, stable=True).indices[..., :n]
    dcg = (rel.gather(-1, order) * discount).sum(-1)
    idcg = (torch.sort(rel, dim=-1, descending=True).values[..., :n] * discount).sum(-1)
    out = torch.where(idcg > 0, dcg / idcg.clamp_min(torch.finfo(rel.dtype).tiny), 0.0)
    return reduce(out, reduction)
