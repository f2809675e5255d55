"""LELP: pseudo-subclass targets from linear projections of teacher embeddings.

Loo, Iliopoulos, Hu, Vee, "Linear Projections of Teacher Embeddings for Few-Class Distillation",
arXiv 2409.20449 (2024) [S steps / R exact forms]:

1. teacher embeddings ``h(x)`` (penultimate layer) on the transfer set;
2. optional null-space projection ``h ← h (I − W⁺W)`` with ``W`` the teacher's ``C × d`` output
   matrix, removing directions the logits already express;
3. per class ``c``, PCA of the **centred** embeddings of that class: top ``S`` directions ``V_c``;
4. a random rotation ``R_c ∈ O(S)``, ``V_c ← R_c V_c``, to balance variance across directions;
5. ``u_{c,s}(x) = ⟨V_{c,s}, h(x) − μ_c⟩ / std_{c,s}`` and
   ``ℓ_{c,s}(x) = t_c(x) + log_softmax_s(u_{c,·}(x) / β)`` [R], so that
   ``Σ_s softmax(ℓ)_{c,s} = softmax(t)_c``;
6. the student has ``S·C`` logits (index ``c·S + s``) and is trained with
   ``kd_loss(student, ℓ, T)``; the paper uses no CE term;
7. inference: class score ``= logsumexp_s`` of the class's subclass logits (:func:`lelp_aggregate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LELPProjection", "fit_lelp", "lelp_aggregate", "lelp_targets"]


@dataclass(frozen=True)
class LELPProjection:
    """Fitted LELP projection (tensors, no gradients)."""

    null_space: Tensor | None  # (d, d) projector I − W⁺W, or None (no null-space projection)
    means: Tensor  # (C, d) class means μ_c of the (projected) embeddings
    directions: Tensor  # (C, S, d) rotated principal directions V_c
    scales: Tensor  # (C, S) std of the projections u_{c,s} over class c's examples

    @property
    def num_subclasses(self) -> int:
        return self.directions.shape[1]


def _random_rotation(
    s: int, rng: torch.Generator | None, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A Haar-random ``(S, S)`` orthogonal matrix (QR of a Gaussian with the sign fix)."""
    a = torch.randn(s, s, generator=rng, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).to(device=device, dtype=dtype)


@torch.no_grad()
def fit_lelp(
    embeddings: Tensor,
    labels: Tensor,
    num_classes: int,
    num_subclasses: int,
    *,
    output_weight: Tensor | None = None,
    rotate: bool = True,
    rng: torch.Generator | None = None,
) -> LELPProjection:
    """Fit LELP's per-class projections (steps 2–4 of the module docstring).

    Args:
        embeddings: ``(N, d)`` teacher embeddings of the transfer set.
        labels: ``(N,)`` integer class labels.
        num_classes: ``C``.
        num_subclasses: ``S``, at most ``min(N_c, d)`` for every class.
        output_weight: ``(C, d)`` teacher output matrix ``W`` for the null-space projection;
            ``None`` skips it (the note's CPU experiment: then LELP ≈ KD).
        rotate: apply the random rotation ``R_c`` (step 4).
        rng: randomness for the rotations (a CPU generator; draws happen on the CPU).
    """
    h = embeddings.detach()
    null_space = None
    if output_weight is not None:
        w = output_weight.detach().to(h.dtype)
        null_space = (
            torch.eye(h.shape[-1], dtype=h.dtype, device=h.device) - torch.linalg.pinv(w) @ w
        )
        h = h @ null_space
    means, dirs, scales = [], [], []
    for c in range(num_classes):
        h_c = h[labels == c]
        if min(h_c.shape) < num_subclasses:
            raise ValueError(
                f"class {c} has {h_c.shape[0]} examples in d={h.shape[-1]}; "
                f"num_subclasses={num_subclasses} needs at least that many of each"
            )
        mu = h_c.mean(0)
        v = torch.linalg.svd(h_c - mu, full_matrices=False).Vh[:num_subclasses]  # (S, d)
        if rotate:
            v = _random_rotation(num_subclasses, rng, h.dtype, h.device) @ v
        u = (h_c - mu) @ v.T
        means.append(mu)
        dirs.append(v)
        scales.append(u.std(0).clamp_min(torch.finfo(h.dtype).eps))
    return LELPProjection(null_space, torch.stack(means), torch.stack(dirs), torch.stack(scales))


def lelp_targets(
    teacher_logits: Tensor,
    embeddings: Tensor,
    projection: LELPProjection,
    beta: float = 1.0,
) -> Tensor:
    """Teacher subclass logits ``ℓ (B, C·S)`` (step 5), ordered ``c·S + s``.

    ``ℓ_{c,s} = t_c + log_softmax_s(u_{c,·} / β)``, so ``softmax(ℓ)`` summed over each class's
    subclasses equals ``softmax(t)``. Inputs are detached.

    Args:
        teacher_logits: ``(B, C)``.
        embeddings: ``(B, d)`` teacher embeddings (the null-space projection is applied here).
        projection: from :func:`fit_lelp`.
        beta: subclass temperature ``β`` [R: default 1].
    """
    h = embeddings.detach()
    if projection.null_space is not None:
        h = h @ projection.null_space
    centred = h.unsqueeze(1) - projection.means  # (B, C, d)
    u = torch.einsum("bcd,csd->bcs", centred, projection.directions) / projection.scales
    ell = teacher_logits.detach().unsqueeze(-1) + F.log_softmax(u / beta, dim=-1)
    return ell.flatten(1)


def lelp_aggregate(subclass_logits: Tensor, num_subclasses: int) -> Tensor:
    """Class logits ``(B, C)`` from subclass logits ``(B, C·S)``: ``logsumexp_s ℓ_{c,s}``.

    ``softmax`` of the result equals the subclass probabilities summed within each class (step 7).
    """
    b, cs = subclass_logits.shape
    if cs % num_subclasses:
        raise ValueError(f"{cs} subclass logits are not a multiple of S={num_subclasses}")
    return subclass_logits.view(b, cs // num_subclasses, num_subclasses).logsumexp(-1)
