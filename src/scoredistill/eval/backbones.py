"""Backbone metrics of Cα traces against the templates of ``teachers.backbones`` (issue 14).

- ``designability``: share of samples whose Kabsch RMSD to the nearest template is < 1 Å (the
  proxy for "ProteinMPNN + ESMFold refold within scRMSD < 2 Å": here the fold is known exactly);
- ``rmsd_median_A``: the median of that nearest-template RMSD;
- ``bond_error_A``: mean ``|d(i, i+1) - 3.8|`` over consecutive Cα (FrameDiff's
  ``ca_ca_deviation``);
- ``clash_rate``: share of samples with a Cα pair at sequence separation ≥ 2 closer than
  ``clash_a`` (3 Å; FrameDiff counts pairs under 1 Å: none of our samples get that close);
- ``templates_hit``: distinct templates nearest to a designable sample (diversity, at most K);
  ``templates_eff``: ``exp`` of the entropy of those assignments (K when spread evenly).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..teachers.backbones import BOND_A, kabsch_rmsd

__all__ = ["backbone_metrics"]


def _clashes(x: Tensor, clash_a: float) -> Tensor:
    """``(B,)`` bool: some pair ``|i - j| >= 2`` is closer than ``clash_a``; ``x: (B, N, 3)``."""
    d = torch.cdist(x, x)
    idx = torch.arange(x.shape[1])
    far = (idx[:, None] - idx[None]).abs() >= 2
    return (d[:, far] < clash_a).any(1)


def backbone_metrics(
    x_a: Tensor, templates_a: Tensor, *, designable_a: float = 1.0, clash_a: float = 3.0
) -> dict[str, float]:
    """The metrics above for ``x_a: (B, N, 3)`` samples and ``templates_a: (K, N, 3)``, in Å."""
    x_a, templates_a = x_a.double(), templates_a.double()
    best, nearest = kabsch_rmsd(x_a, templates_a).min(1)
    good = best < designable_a
    bonds = (x_a[:, 1:] - x_a[:, :-1]).norm(dim=-1)
    hits = nearest[good]
    if len(hits):
        p = torch.bincount(hits, minlength=len(templates_a)).double() / len(hits)
        eff = math.exp(float(-(p[p > 0] * p[p > 0].log()).sum()))
    else:
        eff = 0.0
    return {
        "designability": float(good.double().mean()),
        "rmsd_median_A": float(best.median()),
        "bond_error_A": float((bonds - BOND_A).abs().mean()),
        "clash_rate": float(_clashes(x_a, clash_a).double().mean()),
        "templates_hit": float(len(hits.unique())),
        "templates_eff": eff,
    }
