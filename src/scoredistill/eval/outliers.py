"""Where a sampler's samples outside 3 std of a mode lie (issue 15's ≥ 90 % target).

Each sample belongs to its most responsible component ``k`` of the exact mixture. Outside 3 std
(squared Mahalanobis distance > 9, the ``within_3std`` test of :mod:`.metrics`) it is a
**bridge** when it lies on the segment from ``μ_k`` to the second most responsible component's
mean ``μ_m``, within 3 std (of ``k``'s widest axis) of that segment — the mass a one-step map,
continuous in its noise, leaves between disconnected modes — and a **tail** otherwise (a
mode's blur). The **core width** is the root-mean-square whitened deviation
``Λ_k^{-1/2} U_k^T (x − μ_k)`` of the samples inside 3 std, per axis: exact 2-D samples read
``sqrt((2 − 11 e^{-4.5}) / (2 (1 − e^{-4.5}))) ≈ 0.974`` (a Gaussian truncated at radius 3), and
a value below that is a core narrower than the truth.

Meaningful in low dimension (the 2-D testbeds), where 3 std holds 98.9 % of a mode's mass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..teachers.analytic import GaussianMixtureTeacher

__all__ = ["EXACT_CORE_WIDTH_2D", "outlier_stats"]

# RMS per-axis deviation of a standard 2-D Gaussian truncated at radius 3
EXACT_CORE_WIDTH_2D = math.sqrt((2 - 11 * math.exp(-4.5)) / (2 * (1 - math.exp(-4.5))))


def _whitened(truth: GaussianMixtureTeacher, x: Tensor, comp: Tensor) -> Tensor:
    """``(N, D)``: ``Λ_k^{-1/2} U_k^T (x − μ_k)`` for each row's component ``k``."""
    y = x - truth.means.to(x)[comp]
    if truth.eigvecs is not None:
        y = torch.einsum("ndj,nd->nj", truth.eigvecs.to(x)[comp], y)
    return y / truth.eigvals.to(x)[comp].sqrt()


def outlier_stats(
    truth: GaussianMixtureTeacher, x: Tensor, labels: Tensor | None = None
) -> dict[str, float]:
    """``within_3std``, ``bridges``, ``tails`` (fractions of all rows; they sum to 1) and
    ``core_width`` of ``x: (N, *D)`` against ``truth`` (``labels``: class of each row, for a
    class-conditional mixture)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    if x.shape[0] < 1 or x.shape[1] != truth.dim:
        raise ValueError(f"x must be (N >= 1, {truth.dim}), got {tuple(x.shape)}")
    if truth.num_components < 2:
        raise ValueError("outlier_stats needs a mixture of at least two components")
    log_r, d2_all = truth.component_stats(x, cond=labels)
    top2 = log_r.topk(2, dim=1).indices
    k, m = top2[:, 0], top2[:, 1]
    inside = d2_all.gather(1, k[:, None]).squeeze(1) <= 9.0
    mu, lam = truth.means.to(x), truth.eigvals.to(x)
    seg = mu[m] - mu[k]
    lam_seg = ((x - mu[k]) * seg).sum(1) / (seg * seg).sum(1).clamp_min(1e-300)
    perp = (x - mu[k] - lam_seg[:, None] * seg).norm(dim=1)
    near = (lam_seg > 0) & (lam_seg < 1) & (perp <= 3.0 * lam[k].max(dim=1).values.sqrt())
    core = _whitened(truth, x[inside], k[inside])
    return {
        "within_3std": float(inside.double().mean()),
        "bridges": float((~inside & near).double().mean()),
        "tails": float((~inside & ~near).double().mean()),
        "core_width": float(core.pow(2).mean().sqrt()) if core.numel() else float("nan"),
    }
