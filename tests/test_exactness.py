"""64-NFE teacher samples are statistically indistinguishable from exact samples, per testbed.

Each metric's noise level is measured data-vs-data: R independent exact draws, each scored
against its own independent reference exactly as the sampler's draw is. The sampler passes if
every metric lies within the exact draws' mean +- K standard deviations (one-sided for the
distances, which only a worse sampler raises).
"""

from __future__ import annotations

import pytest
import torch

from scoredistill.eval.metrics import testbed_metrics
from scoredistill.samplers import sample
from scoredistill.teachers.testbeds import get_testbed

N = 1000
R = 10  # exact replicates for the noise level
K = 5.0  # standard deviations; with R = 10 the std itself is uncertain by ~25%, hence 5 not 3
# Solver bias that the metrics resolve at N = 1000 (a finding, not noise): on gmm64 (64-D,
# eigenvalues down to 0.04) the spread ratio of 64-NFE samples is 1.005-1.011 for
# DPM-Solver++(2M) and 1.018-1.024 for Heun against 1.000 +- 0.0025 for exact samples.
KNOWN_BIAS = {("gmm64", "spread_ratio"): 0.015}
ONE_SIDED = ("mmd", "mmd_local", "sw2", "energy", "mode_tv")
TWO_SIDED = ("spread_ratio", "within_3std", "logp", "class_acc")


def _labels(tb, rng):
    if not tb.conditional:
        return None
    return torch.multinomial(torch.ones(tb.truth.num_classes), N, replacement=True, generator=rng)


def _exact_stats(tb) -> dict[str, tuple[float, float]]:
    runs = []
    for r in range(R):
        rng = torch.Generator().manual_seed(100 + r)
        labels = _labels(tb, rng)
        x = tb.truth.sample(N, rng=rng, cond=labels, dtype=torch.float64)
        runs.append(testbed_metrics(tb, x, labels=labels, seed=1000 + r))
    keys = runs[0].keys()
    vals = {k: torch.tensor([run[k] for run in runs], dtype=torch.float64) for k in keys}
    return {k: (v.mean().item(), v.std().item()) for k, v in vals.items()}


CASES = [
    pytest.param("ring8", "dpmpp-2m", marks=pytest.mark.slow),
    pytest.param("ring8-unbalanced", "heun", marks=pytest.mark.slow),
    pytest.param("grid25", "dpmpp-2m", marks=pytest.mark.slow),
    pytest.param("cond2d", "heun", marks=pytest.mark.slow),
    pytest.param("moons", "dpmpp-2m", marks=pytest.mark.slow),
    pytest.param("gmm16", "dpmpp-2m", marks=pytest.mark.slow),
    pytest.param("gmm64", "dpmpp-2m", marks=pytest.mark.slow),
    pytest.param("digits", "dpmpp-2m", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "sampler"), CASES)
def test_64_nfe_samples_match_exact_samples(name, sampler):
    tb = get_testbed(name)
    stats = _exact_stats(tb)
    rng = torch.Generator().manual_seed(7)
    labels = _labels(tb, rng)
    x, _ = sample(tb.teacher, sampler, 64, N, rng=rng, cond=labels, dtype=torch.float64)
    got = testbed_metrics(tb, x, labels=labels, seed=2000)
    assert got["mode_coverage"] == 1.0
    for key in ONE_SIDED:
        mean, std = stats[key]
        assert got[key] <= mean + K * std, (key, got[key], mean, std)
    for key in (k for k in TWO_SIDED if k in got):
        mean, std = stats[key]
        allowed = K * std + KNOWN_BIAS.get((name, key), 0.0)
        assert abs(got[key] - mean) <= allowed, (key, got[key], mean, std)
