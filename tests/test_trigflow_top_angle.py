"""``benchmarks/trigflow_top_angle.py``: its closed-form share of sCM's training draws at or
above an angle agrees with ``SCM.draw_angles`` sampled (binomial tolerance)."""

from __future__ import annotations

import math

import pytest
import torch

from scoredistill.objectives.scm import SCM


@pytest.fixture(scope="module")
def top_angle(bench):
    return bench("trigflow_top_angle")


@pytest.mark.parametrize("theta", [0.6, 1.1, 1.45, math.atan(80 / 1.03)])
def test_train_share_matches_the_sampled_angle_law(top_angle, theta):
    scm, sd, n = SCM(), 1.03, 1_000_000
    _, angles = scm.draw_angles(n, sd, torch.Generator().manual_seed(0))
    got = float((angles >= theta).double().mean())
    want = top_angle.train_share(theta, sd, scm.p_mean, scm.p_std)
    assert abs(got - want) <= 5 * math.sqrt(want * (1 - want) / n) + 2 / n
