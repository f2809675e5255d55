"""``eval.outliers`` (``benchmarks/score_samples.py --outliers``): closed forms on exact
samples, and constructed bridges, tails and cores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scoredistill.eval.outliers import EXACT_CORE_WIDTH_2D, outlier_stats
from scoredistill.teachers.analytic import GaussianMixtureTeacher

F64 = torch.float64
N = 20000


def _ring(std: float = 0.05) -> GaussianMixtureTeacher:
    ang = np.arange(8) * 2 * np.pi / 8
    means = 2.0 * np.stack([np.cos(ang), np.sin(ang)], 1)
    return GaussianMixtureTeacher(means, np.ones(8), stds=np.full(8, std))


def _rotated() -> GaussianMixtureTeacher:
    """Two full-covariance modes: stds 0.1 and 0.02 along axes rotated by 30 degrees."""
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    u = np.array([[c, -s], [s, c]])
    cov = u @ np.diag([0.1**2, 0.02**2]) @ u.T
    return GaussianMixtureTeacher([[-1.0, 0.0], [1.0, 0.0]], [1, 1], covs=np.stack([cov, cov]))


@pytest.mark.parametrize("truth", [_ring(), _rotated()], ids=["ring", "full-cov"])
def test_exact_samples_match_the_truncated_gaussian(truth):
    x = truth.sample(N, rng=torch.Generator().manual_seed(0), dtype=F64)
    r = outlier_stats(truth, x)
    inside = 1 - math.exp(-4.5)  # chi^2_2 CDF at 9
    assert abs(r["within_3std"] - inside) <= 4 * math.sqrt(inside * (1 - inside) / N)
    assert abs(r["core_width"] - EXACT_CORE_WIDTH_2D) < 0.012  # ~4 std of the estimate
    assert math.isclose(r["within_3std"] + r["bridges"] + r["tails"], 1.0)
    # the well-separated modes leave no mass between them
    assert r["bridges"] < 0.012


def test_scaling_samples_about_their_mode_scales_the_core_width():
    truth = _ring()
    x, comp = truth.sample(
        N, rng=torch.Generator().manual_seed(1), dtype=F64, return_components=True
    )
    mu = truth.means[comp]
    r = outlier_stats(truth, mu + 0.5 * (x - mu))
    assert r["within_3std"] > 0.999  # a Gaussian of half the std: radius 6 in its own units
    assert abs(r["core_width"] - 0.5) < 0.01


def test_bridges_and_tails_are_told_apart():
    truth = _ring()
    mid = 0.5 * (truth.means[0] + truth.means[1])
    between = (
        mid[None]
        + 0.3
        * (truth.means[1] - truth.means[0])[None]
        * torch.linspace(-1, 1, 11, dtype=F64)[:, None]
    )
    radial = truth.means[0][None] * torch.tensor([[1.3], [0.7]], dtype=F64)
    r = outlier_stats(truth, torch.cat([between, radial]))
    assert r["within_3std"] == 0.0
    assert math.isclose(r["bridges"], 11 / 13)
    assert math.isclose(r["tails"], 2 / 13)
    assert math.isnan(r["core_width"])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(N >= 1, 2\)"):
        outlier_stats(_ring(), torch.zeros(3, 3, dtype=F64))
    one = GaussianMixtureTeacher([[0.0, 0.0]], [1.0], stds=[0.1])
    with pytest.raises(ValueError, match="at least two"):
        outlier_stats(one, torch.zeros(3, 2, dtype=F64))
