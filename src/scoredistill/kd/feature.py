"""Feature-level distillation: OFA-KD (projector heads to logit space) and ACAM-KD (masks).

Networks come in as arguments or are small ``nn.Module``s trained alongside the student; the loss
functions are pure. The teacher is frozen: its logits/features are detached everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import reduce

__all__ = [
    "ACAMFusion",
    "OFAProjector",
    "acam_loss",
    "acam_mask_loss",
    "mask_diversity",
    "ofa_loss",
]


def ofa_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    eps: float = 1.0,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> Tensor:
    """OFA-KD loss with adaptive target enhancement (Hao et al., NeurIPS 2023, the OFA loss;
    ``Hao840/OFAKD/distillers/ofa.py``)::

        ofa = − Σ_c [ (p_t,c + 1[c=y])^ε − 1[c=y] ] · log softmax(z/T)_c,   p_t = softmax(t/T)

    Target weight ``(1 + p_t,y)^ε − 1``, non-targets ``p_t,c^ε``; ``ε = 1`` is soft cross-entropy
    with the teacher's probabilities, ``ε > 1`` boosts the target when the teacher is confident.
    No ``T²`` factor (as in the official code). Not zero at ``z = t``: a cross-entropy floor.

    Args:
        student_logits: ``(B, C)``; the final logits or a projector head's output.
        teacher_logits: ``(B, C)``; detached.
        labels: ``(B,)`` integer labels, or ``(B, C)`` soft labels (label smoothing / mixup),
            reduced to their ``argmax`` as in the official code.
        eps: ``ε`` (default 1; the README uses 1.5 for ResNet-18 ← DeiT-T on ImageNet).
        temperature: ``T`` on both sides (default 1).
        reduction: ``"batchmean"`` | ``"sum"`` | ``"none"``.
    """
    if labels.ndim == student_logits.ndim:
        labels = labels.argmax(-1)
    target = F.one_hot(labels.long(), student_logits.shape[-1]).to(student_logits.dtype)
    p_t = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    w = (p_t + target).pow(eps) - target
    per_sample = -(w * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1)
    return reduce(per_sample, reduction)


class OFAProjector(nn.Module):
    """OFA-KD branch head: student stage features → ``num_classes`` logits (Hao et al. 2023, method).

    - Feature maps ``(B, C_in, H, W)``: ``num_down`` stride-2 depthwise-separable conv blocks to
      ``hidden`` channels, global average pooling, ``Linear`` (the official CNN branch).
    - Vectors ``(B, D)`` or tokens ``(B, L, D)`` (mean-pooled): ``LayerNorm → Linear → GELU →
      Linear`` [R: the official ViT branch uses patch merging + transformer blocks; this is a
      lighter stand-in]. Choose with ``spatial``.

    ``hidden`` defaults to ``max(in_channels, 64)`` [R: the official code uses ``max(d_s, d_t)``,
    which needs the teacher's width; pass it]. The heads are training-only: drop them from the
    exported student.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int | None = None,
        *,
        spatial: bool = True,
        num_down: int = 1,
    ) -> None:
        super().__init__()
        hidden = hidden or max(in_channels, 64)
        self.spatial = spatial
        if spatial:
            blocks: list[nn.Module] = []
            c = in_channels
            for _ in range(num_down):
                blocks += [
                    nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c, bias=False),
                    nn.BatchNorm2d(c),
                    nn.Conv2d(c, hidden, 1, bias=False),
                    nn.BatchNorm2d(hidden),
                    nn.ReLU(inplace=True),
                ]
                c = hidden
            self.body: nn.Module = nn.Sequential(*blocks)
            self.head = nn.Linear(c, num_classes)
        else:
            self.body = nn.Sequential(
                nn.LayerNorm(in_channels), nn.Linear(in_channels, hidden), nn.GELU()
            )
            self.head = nn.Linear(hidden, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` (``spatial``) or ``(B, D)`` / ``(B, L, D)`` → ``(B, num_classes)``."""
        if self.spatial:
            if features.ndim != 4:
                raise ValueError(f"spatial OFAProjector expects (B, C, H, W), got {features.shape}")
            return self.head(self.body(features).mean(dim=(-2, -1)))
        if features.ndim == 3:
            features = features.mean(dim=1)
        return self.head(self.body(features))


class ACAMFusion(nn.Module):
    """ACAM-KD student–teacher cross-attention fusion and mask generators (Lan & Tian, ICCV 2025,
    arXiv 2503.06307, STCA-FF and ASCM) [S structure / R exact forms].

    ::

        φ(F_s) = conv1×1(F_s)                       (adapter C_s → C_t)
        Q = W_q·F_t,  K = W_k·φ(F_s),  V = W_v·φ(F_s)   (tokens over H·W; teacher = queries)
        F_f = norm(φ(F_s) + softmax(QKᵀ/√d)·V)      [R: residual on φ(F_s), GroupNorm]
        M_s^n = σ(conv1×1_n(F_f)) ∈ [0,1]^{H×W},   M_c^n = σ(MLP_n(GAP(F_f))) ∈ [0,1]^{C_t}

    ``forward(student_feat, teacher_feat)`` returns ``(φ(F_s), M_s, M_c)`` with shapes
    ``(B, C_t, H, W)``, ``(B, N, H, W)``, ``(B, N, C_t)``; the teacher features are detached.
    Feed them to :func:`acam_loss`. Student and teacher maps must share ``H × W``.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        num_masks: int = 2,
        attn_dim: int | None = None,
        *,
        residual: bool = True,
        reduction_ratio: int = 4,
    ) -> None:
        super().__init__()
        d = attn_dim or teacher_channels
        c = teacher_channels
        self.num_masks, self.residual, self.attn_dim = num_masks, residual, d
        self.adapter = nn.Conv2d(student_channels, c, 1)
        self.q, self.k, self.v = nn.Linear(c, d), nn.Linear(c, d), nn.Linear(c, c)
        self.norm = nn.GroupNorm(1, c)
        self.spatial = nn.Conv2d(c, num_masks, 1)
        hidden = max(c // reduction_ratio, 1)
        self.channel = nn.Sequential(
            nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_masks * c)
        )

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, C_s, H, W)``, ``(B, C_t, H, W)`` → ``(φ(F_s), M_s (B,N,H,W), M_c (B,N,C_t))``."""
        f_t = teacher_feat.detach()
        f_s = self.adapter(student_feat)
        if f_s.shape != f_t.shape:
            raise ValueError(f"adapted student {tuple(f_s.shape)} != teacher {tuple(f_t.shape)}")
        b, c, h, w = f_t.shape
        tok_t = f_t.flatten(2).transpose(1, 2)  # (B, HW, C)
        tok_s = f_s.flatten(2).transpose(1, 2)
        attn = torch.softmax(
            self.q(tok_t) @ self.k(tok_s).transpose(1, 2) / math.sqrt(self.attn_dim), -1
        )
        fused = (attn @ self.v(tok_s)).transpose(1, 2).reshape(b, c, h, w)
        fused = self.norm(f_s + fused if self.residual else fused)
        m_s = torch.sigmoid(self.spatial(fused))
        m_c = torch.sigmoid(self.channel(fused.mean(dim=(-2, -1)))).view(b, self.num_masks, c)
        return f_s, m_s, m_c


def acam_mask_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    spatial_masks: Tensor,
    channel_masks: Tensor,
    reduction: str = "batchmean",
) -> Tensor:
    """ACAM-KD masked feature loss (Lan & Tian 2025, ASCM) [R normalisation]::

        L_mask = 1/N Σ_n Σ_{c,h,w} M^n·(F_t − φ(F_s))² / Σ_{c,h,w} M^n,   M^n = M_s^n ⊗ M_c^n

    each mask normalised by its own sum (the paper's ``1/M Σ_m 1/Σ M_m`` form), so every mask
    carries weight ``1/N`` and a mask cannot leave the loss by shrinking to zero (it could with one
    normaliser ``Σ_{n,c,h,w} M^n`` shared by all masks). Per sample, then reduced over the batch.

    Args:
        student_feat: ``(B, C, H, W)`` adapted student features ``φ(F_s)``.
        teacher_feat: ``(B, C, H, W)``; detached.
        spatial_masks: ``(B, N, H, W)`` in ``[0, 1]``.
        channel_masks: ``(B, N, C)`` in ``[0, 1]``.
    """
    sq = (teacher_feat.detach() - student_feat).square()  # (B, C, H, W)
    num = torch.einsum("bnhw,bnc,bchw->bn", spatial_masks, channel_masks, sq)
    den = spatial_masks.sum(dim=(-2, -1)) * channel_masks.sum(-1)  # Σ_{c,h,w} of the outer product
    per_mask = num / den.clamp_min(torch.finfo(num.dtype).tiny)
    return reduce(per_mask.mean(-1), reduction)


def mask_diversity(
    spatial_masks: Tensor, channel_masks: Tensor, reduction: str = "batchmean"
) -> Tensor:
    """``L_div = Σ_{n≠m} cos(M^n, M^m)`` over ordered pairs, ``M^n = M_s^n ⊗ M_c^n`` (ASCM) [R: cosine].

    The cosine of two outer products factorises: ``cos(M^n, M^m) = cos(M_s^n, M_s^m)·cos(M_c^n,
    M_c^m)``, so the ``C·H·W`` masks are never materialised. Shapes as :func:`acam_mask_loss`.
    """
    s = F.normalize(spatial_masks.flatten(2), dim=-1)
    c = F.normalize(channel_masks, dim=-1)
    cos = (s @ s.transpose(1, 2)) * (c @ c.transpose(1, 2))  # (B, N, N)
    off_diag = cos.sum(dim=(-2, -1)) - cos.diagonal(dim1=-2, dim2=-1).sum(-1)
    return reduce(off_diag, reduction)


def acam_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    spatial_masks: Tensor,
    channel_masks: Tensor,
    *,
    div_weight: float = 1.0,
    mask_grad: bool = False,
    reduction: str = "batchmean",
) -> Tensor:
    """ACAM-KD distillation term ``L_mask + λ_div·L_div`` (Lan & Tian 2025, ASCM) [R: λ_div = 1].

    Inputs are :class:`ACAMFusion`'s outputs and the teacher features; the caller adds the task
    loss and ``λ_mask``. See :func:`acam_mask_loss` and :func:`mask_diversity`.

    ``mask_grad=False`` [R] stops ``L_mask``'s gradient at the masks: they weight the student's
    error, and the generators learn from ``L_div`` and follow the student through ``F_f``. With
    ``True`` the generators also minimise ``L_mask``, a mask-weighted *mean* of the error, whose
    minimiser puts all the weight on the entries the student already matches: on digits the masks
    saturate onto a few such entries and ``L_mask`` falls while the feature error does not.
    """
    m_s, m_c = (
        (spatial_masks, channel_masks)
        if mask_grad
        else (spatial_masks.detach(), channel_masks.detach())
    )
    return acam_mask_loss(
        student_feat, teacher_feat, m_s, m_c, reduction
    ) + div_weight * mask_diversity(spatial_masks, channel_masks, reduction)
