"""Classification distillation divergences: Hinton KD, forward/reverse KL, GKD's JSD(β), BD-KD, ECE.

Conventions (reference/knowledge_distillation.md, "Shared conventions"):

- ``p^T = softmax(z / T)``; "forward KL" is ``KL(p_teacher ‖ p_student)`` (mass-covering), "reverse
  KL" is ``KL(p_student ‖ p_teacher)`` (mode-seeking).
- Logits are ``(B, C)`` (or ``(B, *, C)``: the last dim is the class dim, the rest are samples).
- ``reduction``: ``"batchmean"`` sums over classes and averages over samples, ``"sum"`` sums over
  everything, ``"none"`` returns one value per sample ``(B, *)``. ``reduction='mean'`` over ``B·C``
  is deliberately not offered (it divides by the number of classes).
- The teacher is frozen: every loss detaches the teacher's logits, so no gradient reaches it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bdkd_loss",
    "bdkd_teacher_loss",
    "bdkd_weights",
    "ece",
    "entropy",
    "forward_kl",
    "jsd",
    "kd_loss",
    "reduce",
    "reverse_kl",
]

_REDUCTIONS = ("batchmean", "sum", "none")


def reduce(
    per_sample: Tensor,
    reduction: str,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Reduce per-sample values ``(B, *)``: ``"batchmean"`` | ``"sum"`` | ``"none"``.

    ``weights`` (broadcastable to ``per_sample``) multiply each sample before reducing; with
    ``"batchmean"`` the division is still by the number of samples, not by the weights' sum.
    ``mask`` (bool, same shape, e.g. ``labels != -100`` for tokens) zeroes invalid samples and
    ``"batchmean"`` then divides by the number of valid ones. Under gradient accumulation or DDP,
    use ``"sum"`` and divide by the global count yourself.
    """
    if weights is not None:
        per_sample = per_sample * weights
    count = per_sample.numel()
    if mask is not None:
        per_sample = torch.where(mask, per_sample, torch.zeros_like(per_sample))
        count = int(mask.sum())
    if reduction == "batchmean":
        return per_sample.sum() / max(count, 1)
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction={reduction!r} is not valid; use one of {_REDUCTIONS}")


def _kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p ‖ q)`` per sample over the last dim; ``0·log 0 = 0`` where ``p`` underflows."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    scale_t2: bool = True,
) -> Tensor:
    """Hinton KD: ``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))`` (Hinton et al. 2015, §2).

    Both sides carry the temperature. The ``T²`` factor (``scale_t2=True``) keeps the gradient
    magnitude roughly independent of ``T``: ``∂L/∂z_s = T·(p_s^T − p_t^T)`` per sample.

    Args:
        student_logits: ``(B, C)`` or ``(B, *, C)``.
        teacher_logits: same shape; detached (frozen teacher).
        temperature: ``T > 0``.
        reduction: ``"batchmean"`` (sum over classes, mean over samples), ``"sum"``, ``"none"``.
        weights: optional per-sample weights ``(B,)``/``(B, *)`` (KD-AIF, BD-KD).
        mask: optional bool ``(B, *)`` of valid samples/tokens (see :func:`reduce`).
        scale_t2: multiply by ``T²`` (mdistiller, DistillKit) or not (TextBrewer, CV-DD).

    Returns:
        A scalar, or ``(B, *)`` for ``reduction="none"``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    per_sample = _kl_from_log_probs(log_p, log_q)
    if scale_t2:
        per_sample = per_sample * temperature**2
    return reduce(per_sample, reduction, weights, mask)


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Forward (mass-covering) ``KL(p_t ‖ p_s)`` at temperature ``T``, no ``T²`` factor.

    Shapes as :func:`kd_loss`: logits ``(B, C)`` or ``(B, *, C)``; the teacher is detached.
    ``kd_loss(..., scale_t2=False)`` is the same quantity; this name states the direction.
    """
    return kd_loss(
        student_logits, teacher_logits, temperature, reduction, mask=mask, scale_t2=False
    )


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Reverse (mode-seeking) ``KL(p_s ‖ p_t)`` at temperature ``T``, no ``T²`` factor.

    The MiniLLM per-step term (Gu et al., ICLR 2024, "single-step decomposition") and GKD's
    ``β = 1``. Logits ``(B, C)`` or ``(B, *, C)``; the teacher is detached.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return reduce(_kl_from_log_probs(log_q, log_p), reduction, mask=mask)


def jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """GKD's generalized Jensen–Shannon divergence ``JSD(β)`` (Agarwal et al., ICLR 2024, "Generalized KD").

    TRL convention (``GKDTrainer.generalized_jsd_loss``)::

        M      = β·P_T + (1−β)·P_S
        JSD(β) = β·KL(P_T ‖ M) + (1−β)·KL(P_S ‖ M)

    with the end points special-cased exactly as TRL does: ``β = 0`` returns the **forward**
    ``KL(P_T ‖ P_S)`` and ``β = 1`` the **reverse** ``KL(P_S ‖ P_T)``. (The formula itself tends
    to 0 at both ends; ``JSD(β)/β → KL(P_T‖P_S)`` as ``β → 0``, so the end points are the limits of
    the rescaled divergence, not of the formula.) ``log M`` is a stable ``logsumexp``.

    Args:
        student_logits: ``(B, C)`` or ``(B, *, C)`` (tokens: ``(B, L, V)`` with a ``mask``).
        teacher_logits: same shape; detached.
        beta: ``β ∈ [0, 1]``.
        temperature: divides both sides' logits (TRL uses 1 in the loss); no ``T²`` factor.
        reduction, mask: see :func:`reduce`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature, reduction, mask=mask)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature, reduction, mask=mask)
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    log_m = torch.logsumexp(
        torch.stack([log_s + math.log(1.0 - beta), log_t + math.log(beta)]), dim=0
    )
    per_sample = beta * _kl_from_log_probs(log_t, log_m) + (1.0 - beta) * _kl_from_log_probs(
        log_s, log_m
    )
    return reduce(per_sample, reduction, mask=mask)


def entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Shannon entropy (nats) of ``softmax(logits / T)`` over the last dim: ``(B, C) → (B,)``."""
    log_p = F.log_softmax(logits / temperature, dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


def bdkd_weights(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    *,
    mode: str = "hard",
    delta: float = 2.0,
    kappa: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """BD-KD per-sample weights ``(w_fwd, w_rev)``, each ``(B,)`` (Amara et al., arXiv 2212.12965) [R].

    Driven by the entropy gap ``g = H(p_s^T) − H(p_t^T)``:

    - ``g < 0`` (student over-confident): emphasise forward KL (mass-covering, softens);
    - ``g > 0`` (student under-confident): emphasise reverse KL (mode-seeking, sharpens).

    ``mode="hard"`` [R]: the emphasised term gets ``delta``, the other ``1`` (ties: both 1).
    ``mode="soft"`` [R]: ``s = sigmoid(kappa·g)``, ``w_rev = 1 + (delta−1)·s``,
    ``w_fwd = 1 + (delta−1)·(1−s)``; tends to the hard switch as ``kappa → ∞``.
    The weights are constants: both entropies are computed from detached logits.
    The paper's exact δ and switching rule were not verified ([R]); these are knobs.
    """
    gap = entropy(student_logits.detach(), temperature) - entropy(
        teacher_logits.detach(), temperature
    )
    if mode == "hard":
        one = torch.ones_like(gap)
        w_fwd = torch.where(gap < 0, one * delta, one)
        w_rev = torch.where(gap > 0, one * delta, one)
    elif mode == "soft":
        s = torch.sigmoid(kappa * gap)
        w_rev = 1.0 + (delta - 1.0) * s
        w_fwd = 1.0 + (delta - 1.0) * (1.0 - s)
    else:
        raise ValueError(f"mode={mode!r} is not valid; use 'hard' or 'soft'")
    return w_fwd, w_rev


def bdkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
    *,
    mode: str = "hard",
    delta: float = 2.0,
    kappa: float = 1.0,
) -> Tensor:
    """BD-KD student distillation term (Amara et al., arXiv 2212.12965) [S]/[R]::

        T² · [ w_fwd,i · KL(p_t,i ‖ p_s,i) + w_rev,i · KL(p_s,i ‖ p_t,i) ]

    with ``(w_fwd, w_rev)`` from :func:`bdkd_weights`. Logits ``(B, C)``; the teacher is
    detached. The cross-entropy ``CE(y, p_s)`` and the weight ``λ_s`` are added by the caller.
    For the *online* teacher update use :func:`bdkd_teacher_loss`.
    """
    w_fwd, w_rev = bdkd_weights(
        student_logits, teacher_logits, temperature, mode=mode, delta=delta, kappa=kappa
    )
    fwd = forward_kl(student_logits, teacher_logits, temperature, "none")
    rev = reverse_kl(student_logits, teacher_logits, temperature, "none")
    return reduce(temperature**2 * (w_fwd * fwd + w_rev * rev), reduction)


def bdkd_teacher_loss(
    teacher_logits: Tensor,
    student_logits: Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> Tensor:
    """BD-KD online teacher term ``T² · KL(p_t ‖ p_s)`` (Amara et al., arXiv 2212.12965) [R].

    The gradient goes to the **teacher** only: the student's logits are detached. Logits
    ``(B, C)``; the caller adds ``CE(y, p_t)`` and ``λ_t``.
    """
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.detach() / temperature, dim=-1)
    return reduce(temperature**2 * _kl_from_log_probs(log_p, log_q), reduction)


def ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """Expected calibration error with ``n_bins`` equal-width confidence bins (Guo et al. 2017, §2).

    ``ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|`` with confidence ``max_c p_c``, prediction
    ``argmax_c p_c`` and bins ``(k/n, (k+1)/n]`` (confidence 0 goes to the first bin).

    Args:
        probs: ``(N, C)`` class probabilities (not logits).
        labels: ``(N,)`` integer labels.
        n_bins: number of bins (15 is the common choice).

    Returns:
        A 0-d tensor in ``[0, 1]``.
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"expected probs (N, C) and labels (N,), got {probs.shape}, {labels.shape}"
        )
    conf, pred = probs.detach().max(dim=-1)
    correct = (pred == labels).to(conf.dtype)
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=conf.dtype, device=conf.device)
    count.index_add_(0, bins, torch.ones_like(conf))
    sum_conf = torch.zeros_like(count).index_add_(0, bins, conf)
    sum_acc = torch.zeros_like(count).index_add_(0, bins, correct)
    return (sum_acc - sum_conf).abs().sum() / max(len(labels), 1)
