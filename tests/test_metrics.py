"""Sample metrics against exact mixtures: null levels, known perturbations and closed forms."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scoredistill.eval.metrics import (
    METRIC_DOCS,
    class_accuracy,
    default_bandwidths,
    energy_distance,
    evaluate,
    local_bandwidths,
    mean_logp,
    mmd_rbf,
    mode_stats,
    sliced_w2,
    testbed_metrics,
)
from scoredistill.teachers.analytic import GaussianMixtureTeacher

F64 = torch.float64
N = 1000  # samples per set: a fast file, yet every perturbation below is caught with margin
K_SIGMA = 4.0  # standard errors allowed: a two-sided normal 4-sigma miss has probability 6e-5
RING_STD = 0.05
BASE_KEYS = {
    "mmd",
    "mmd_local",
    "within_3std",
    "sw2",
    "energy",
    "mode_coverage",
    "mode_tv",
    "mode_tv_assigned",
    "spread_ratio",
    "logp",
    "n",
}


def _ring(std: float = RING_STD, drop: int = 0) -> GaussianMixtureTeacher:
    """8 isotropic Gaussians on a circle of radius 2, without the first ``drop`` of them."""
    ang = np.arange(8) * 2 * np.pi / 8
    means = 2 * np.stack([np.cos(ang), np.sin(ang)], 1)[drop:]
    return GaussianMixtureTeacher(means, np.ones(8 - drop), stds=np.full(8 - drop, std))


def _ring_logp(scale: float) -> tuple[float, float]:
    """Mean and per-sample std of ``log p_ring(x)`` for ring samples with std ``scale * 0.05``.

    Modes sit >= 15 sample stds apart, so ``log p = -log 8 - log(2 pi s^2) - d2 / 2`` with
    ``d2 / 2 = scale^2 Exp(1)`` (chi-square(2) / 2): mean ``scale^2``, std ``scale^2``.
    """
    return -math.log(8) - math.log(2 * math.pi * RING_STD**2) - scale**2, scale**2


def _draw(teacher: GaussianMixtureTeacher, n: int, seed: int) -> torch.Tensor:
    return teacher.sample(n, rng=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture(scope="module")
def ring_null() -> dict[str, tuple[float, float]]:
    """Mean and std of mmd, energy and sw2 over independent exact-vs-exact draws of the ring.

    The null law of the U-statistics is a skewed sum of centred chi-squares, so the std (not
    the mean, which needs many more draws) is what the tests use; 10 draws pin it to ~25%.
    """
    draws = [
        evaluate(_ring(), _draw(_ring(), N, 100 + r), reference=_draw(_ring(), N, 200 + r))
        for r in range(10)
    ]
    return {
        key: (
            float(np.mean([d[key] for d in draws])),
            float(np.std([d[key] for d in draws], ddof=1)),
        )
        for key in ("mmd", "energy", "sw2")
    }


def _assert_above_null(res: dict[str, float], null: dict[str, tuple[float, float]]) -> None:
    for key in ("mmd", "energy", "sw2"):
        mean, std = null[key]
        assert res[key] > mean + K_SIGMA * std, (key, res[key], mean, std)


# ---------------------------------------------------------------------------- exact samples
def test_exact_ring_samples_score_as_exact(ring_null):
    res = evaluate(_ring(), _draw(_ring(), N, 1), seed=7)
    # the U-statistics are unbiased: 0 within the spread measured over null draws
    assert abs(res["mmd"]) <= K_SIGMA * ring_null["mmd"][1]
    assert abs(res["energy"]) <= K_SIGMA * ring_null["energy"][1]
    mean, std = ring_null["sw2"]
    assert res["sw2"] <= mean + K_SIGMA * std
    assert res["mode_coverage"] == 1.0
    # E[(1/2) sum_m |n_m/N - pi_m|] <= sqrt(K/N)/2 (Cauchy-Schwarz); twice that covers its
    # fluctuation and the 0.1% off-mode mass
    assert res["mode_tv"] <= math.sqrt(8 / N)
    # spread = mean of sqrt(chi2_D / D) per component: standard error 1 / sqrt(2 D N)
    assert abs(res["spread_ratio"] - 1) <= K_SIGMA / math.sqrt(2 * 2 * N)
    logp, sd = _ring_logp(1.0)
    assert abs(res["logp"] - logp) <= K_SIGMA * sd / math.sqrt(N)
    assert res["n"] == N


def test_exact_samples_in_16d_diagonal_mixture():
    rng = np.random.default_rng(3)
    k, d = 6, 16
    means = rng.normal(size=(k, d)) * 4  # ~ 4 sqrt(32) = 23 apart: no overlap at stds <= 1
    weights, stds = rng.uniform(0.5, 1.5, k), rng.uniform(0.3, 1.0, (k, d))
    truth = GaussianMixtureTeacher(means, weights, stds=stds)
    x = _draw(truth, N, 4)
    res = evaluate(truth, x, seed=5)
    assert res["mode_coverage"] == 1.0
    assert res["mode_tv"] <= math.sqrt(k / N)  # as for the ring
    assert abs(res["spread_ratio"] - 1) <= K_SIGMA / math.sqrt(2 * d * N)
    # separated components: E log p = sum_k pi_k (log pi_k - sum_d log(sqrt(2 pi e) s_kd))
    pi = weights / weights.sum()
    neg_entropy = float(np.sum(pi * (np.log(pi) - np.log(np.sqrt(2 * np.pi * np.e) * stds).sum(1))))
    per_sample_sd = float(truth.log_prob(x).std())
    assert abs(res["logp"] - neg_entropy) <= K_SIGMA * per_sample_sd / math.sqrt(N)


# ---------------------------------------------------------------------------- perturbations
def test_dropped_mode(ring_null):
    x = _draw(_ring(drop=1), N, 2)
    res = evaluate(_ring(), x, seed=7)
    assert res["mode_coverage"] == 7 / 8
    # sum_m |n_m/N - pi_m| = 7 (1/7 - 1/8) + 1/8 = 1/4 in expectation; noise bound as above
    assert abs(res["mode_tv"] - 1 / 8) <= math.sqrt(8 / N)
    _assert_above_null(res, ring_null)
    # components 0 and 1 form one mode: it keeps component 1's samples and stays covered
    assert mode_stats(_ring(), x, torch.arange(8) // 2)["mode_coverage"] == 1.0


def test_assigned_mode_weights_ignore_blur_but_see_dropped_modes():
    blurred = evaluate(_ring(), _draw(_ring(RING_STD * 4), N, 4), seed=7)
    # 4x blur: most samples lie beyond the 0.999 chi2 radius, so mode_tv counts them as error,
    # but each is still nearest its own mode (neighbours are 1.53 apart, the blur std is 0.2)
    assert blurred["mode_tv"] > 0.3
    assert blurred["mode_tv_assigned"] <= math.sqrt(8 / N)
    dropped = evaluate(_ring(), _draw(_ring(drop=1), N, 2), seed=7)
    assert abs(dropped["mode_tv_assigned"] - 1 / 8) <= math.sqrt(8 / N)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_shrunken_and_blurred_spread(scale):
    x = _draw(_ring(RING_STD * scale), N, 3)
    res = evaluate(_ring(), x, seed=7)
    # every Mahalanobis distance scales by `scale`; standard error as for exact samples
    assert abs(res["spread_ratio"] - scale) <= K_SIGMA * scale / math.sqrt(2 * 2 * N)
    logp, sd = _ring_logp(scale)
    assert abs(res["logp"] - logp) <= K_SIGMA * sd / math.sqrt(N)
    exact_logp = mean_logp(_ring(), _draw(_ring(), N, 1))
    assert (res["logp"] > exact_logp) == (scale < 1)  # mode seeking concentrates mass
    assert res["mode_coverage"] == 1.0


def test_shifted_mean(ring_null):
    x = _draw(_ring(), N, 1)
    shifted = evaluate(_ring(), x + 0.5, seed=7)
    _assert_above_null(shifted, ring_null)
    assert shifted["logp"] < mean_logp(_ring(), x)
    # exact: off-mode with probability 0.001; shifted: >= 10 component stds from every mean
    assert mode_stats(_ring(), x)["off_mode"] <= 0.001 + K_SIGMA * math.sqrt(0.001 / N)
    assert mode_stats(_ring(), x + 0.5)["off_mode"] > 0.99
    assert shifted["mode_tv"] > 0.99 / 2


# ---------------------------------------------------------------------------- conditional
def _two_class(sep: float = 0.8, std: float = 0.5) -> GaussianMixtureTeacher:
    """Class 0 at (+-3, 0), class 1 at (+-3, sep): classes overlap, modes within one do not."""
    means = [[-3.0, 0.0], [3.0, 0.0], [-3.0, sep], [3.0, sep]]
    return GaussianMixtureTeacher(means, [1, 1, 3, 3], stds=np.full(4, std), labels=[0, 0, 1, 1])


def test_class_accuracy_is_bayes_accuracy():
    truth = _two_class()
    x, comp = truth.sample(
        N, rng=torch.Generator().manual_seed(0), dtype=F64, return_components=True
    )
    labels = truth.labels[comp]
    top = truth.class_posterior(x).max(1).values
    # 1[correct] - max_c p(c|x) has mean 0 and variance E[top (1 - top)]
    tol = K_SIGMA * math.sqrt(float((top * (1 - top)).mean()) / N)
    assert abs(class_accuracy(truth, x, labels) - float(top.mean())) <= tol
    assert 0.6 < float(top.mean()) < 0.95  # the classes really overlap


def test_conditional_mode_weights_follow_the_labels():
    truth = _two_class()  # class prior 1/4 : 3/4
    labels = torch.arange(N) % 2  # but half the samples ask for each class
    x = truth.sample(N, rng=torch.Generator().manual_seed(1), cond=labels, dtype=F64)
    res = evaluate(truth, x, labels=labels, seed=2)
    assert set(res) == BASE_KEYS | {"class_acc"}
    # pi = E_i p(m | c_i) = 1/4 each; noise bound as for the ring
    assert res["mode_tv"] <= math.sqrt(4 / N) and res["mode_coverage"] == 1.0
    # with separated classes the assignment ignores the labels, and only pi_m differs: against
    # the unconditional weights (1/8, 1/8, 3/8, 3/8) the samples are off by 1/4 in TV
    truth = _two_class(sep=4.0)
    x = truth.sample(N, rng=torch.Generator().manual_seed(1), cond=labels, dtype=F64)
    assert mode_stats(truth, x, labels=labels)["mode_tv"] <= math.sqrt(4 / N)
    assert abs(mode_stats(truth, x)["mode_tv"] - 1 / 4) <= math.sqrt(4 / N)


def test_separated_classes_are_always_recognised():
    truth = _two_class(sep=10.0, std=0.1)
    x, comp = truth.sample(500, rng=torch.Generator().manual_seed(0), return_components=True)
    assert class_accuracy(truth, x, truth.labels[comp]) == 1.0


# ---------------------------------------------------------------------------- closed forms
def test_sliced_w2_in_one_dimension():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 1, generator=gen, dtype=F64), torch.randn(N, 1, generator=gen, dtype=F64)
    shift = 1.5

    def sw2(a, b):  # in 1-D every direction is +-1: sliced W2 is W2
        return sliced_w2(a, b, n_proj=4)

    # a translation is at W2 distance |shift| exactly
    assert sw2(y, y + shift) == pytest.approx(shift, rel=1e-12)
    # sorting commutes with translation: W2^2(x, y + m) = W2^2(x, y) - 2 m (mean x - mean y) + m^2
    expect = sw2(x, y) ** 2 - 2 * shift * float(x.mean() - y.mean()) + shift**2
    assert sw2(x, y + shift) ** 2 == pytest.approx(expect, rel=1e-10)
    # unequal sizes: all three compare quantile functions on one 1500-level grid, where W2 is
    # the L2 distance of vectors, so the triangle inequality through y holds exactly
    z = torch.randn(3 * N // 2, 1, generator=gen, dtype=F64)
    assert abs(sw2(z, y + shift) - shift) <= sw2(z, y) + 1e-12  # 1e-12: float64 rounding
    assert sw2(z, y + shift) > shift / 2  # and the interpolation did not lose the shift
    assert sw2(x + 3, y + 3) == pytest.approx(sw2(x, y), rel=1e-9)
    assert sw2(x, y) == pytest.approx(sw2(y, x), rel=1e-12)
    # in D dimensions a common rotation and translation only swap the random directions for
    # others of the same law: equal within the spread of sw2 over direction seeds
    x2, y2 = torch.randn(300, 3, generator=gen, dtype=F64), torch.randn(400, 3, generator=gen)
    q = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=F64))[0]
    spread = np.std([sliced_w2(x2, y2, seed=s) for s in range(8)], ddof=1)
    moved = sliced_w2(x2 @ q.T + 1, y2.double() @ q.T + 1, seed=99)
    assert abs(moved - sliced_w2(x2, y2, seed=100)) <= K_SIGMA * math.sqrt(2) * spread


def _numpy_two_sample(x: np.ndarray, y: np.ndarray, bandwidths: list[float]):
    """Brute-force unbiased MMD^2 and energy distance by the textbook formulas."""
    dxx, dyy, dxy = (
        np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)) for a, b in ((x, x), (y, y), (x, y))
    )

    def kern(d):
        return sum(np.exp(-(d**2) / (2 * h * h)) for h in bandwidths)

    def off_diag_mean(m):
        return (m.sum() - np.trace(m)) / (m.shape[0] * (m.shape[0] - 1))

    mmd = off_diag_mean(kern(dxx)) + off_diag_mean(kern(dyy)) - 2 * kern(dxy).mean()
    energy = 2 * dxy.mean() - off_diag_mean(dxx) - off_diag_mean(dyy)
    return mmd, energy


@pytest.mark.parametrize(("n", "m"), [(7, 5), (1030, 1100)])  # several row blocks each
def test_mmd_and_energy_equal_brute_force(n, m):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 3)) + 10, rng.normal(size=(m, 3)) * 1.3 + 10
    bws = [0.5, 1.0, 3.0]
    mmd, energy = _numpy_two_sample(x, y, bws)
    assert mmd_rbf(torch.tensor(x), torch.tensor(y), bws) == pytest.approx(mmd, rel=1e-9, abs=1e-12)
    assert energy_distance(torch.tensor(x), torch.tensor(y)) == pytest.approx(energy, rel=1e-9)


def test_mmd_and_energy_closed_forms():
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([4.0, 2.0, 0.5])
    # point masses: the within-set distances vanish, every cross distance is |a - b| = 5
    assert energy_distance(a.expand(6, 3), b.expand(4, 3)) == pytest.approx(10.0, rel=1e-12)
    bws = [0.5, 1.0, 2.0]
    # far apart the cross kernel underflows, so MMD^2 = Kxx + Kyy with Kyy = Kxx (translation),
    # and Kxx = sum_h mean_{i != j} k_h: exactly len(bws) for coinciding points (no 1 - 1/N:
    # the U-statistic leaves the diagonal out)
    assert mmd_rbf(a.expand(5, 3), a.expand(5, 3) + 1e3, bws) == pytest.approx(2 * len(bws))
    x = np.random.default_rng(0).normal(size=(50, 3))
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    kxx = sum((np.exp(-d2 / (2 * h * h)).sum() - len(x)) / (len(x) * (len(x) - 1)) for h in bws)
    assert mmd_rbf(torch.tensor(x), torch.tensor(x) + 1e3, bws) == pytest.approx(2 * kxx, rel=1e-9)


def test_default_bandwidths_are_multiples_of_the_median_distance():
    y = np.random.default_rng(0).normal(size=(10, 4))  # 45 pairs: an odd count, one median
    d = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1))[np.triu_indices(10, 1)]
    med = np.median(d)
    assert default_bandwidths(torch.tensor(y)) == pytest.approx(
        [med * f for f in (0.25, 0.5, 1, 2, 4)]
    )


def test_local_mmd_is_the_peer_kernel_by_brute_force():
    """``mmd_local``: kernels ``exp(-d^2 / (c m))``, c = 0.01, 0.1, 1, m the median squared
    distance of the reference (an independent numpy computation of the textbook formula)."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(41, 2)) * 1.5, rng.normal(size=(10, 2))  # 45 pairs: one median
    m = np.median(((y[:, None] - y[None]) ** 2).sum(-1)[np.triu_indices(10, 1)])

    def k(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (c * m)) for c in (0.01, 0.1, 1.0))

    def off(mat):
        return (mat.sum() - np.trace(mat)) / (mat.shape[0] * (mat.shape[0] - 1))

    expected = off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean()
    got = mmd_rbf(torch.tensor(x), torch.tensor(y), local_bandwidths(torch.tensor(y)))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_within_3std_of_exact_2d_samples_is_the_chi2_probability():
    ring = _ring()
    x = _draw(ring, 20000, 5)
    p = 1 - math.exp(-4.5)  # P(chi2_2 <= 9)
    got = mode_stats(ring, x)["within_3std"]
    assert abs(got - p) <= K_SIGMA * math.sqrt(p * (1 - p) / 20000)
    assert mode_stats(ring, x * 3.0)["within_3std"] < 0.5  # a blur is seen


# ---------------------------------------------------------------------------- contract
def test_evaluate_contract():
    ring, cond = _ring(), _two_class()
    x = _draw(ring, 300, 11)  # not seed 0: evaluate's reference would repeat these samples
    res = evaluate(ring, x.reshape(300, 1, 2), n_ref=200)  # (N, *shape) is flattened
    assert set(res) == BASE_KEYS and all(math.isfinite(v) for v in res.values())
    assert set(res) <= set(METRIC_DOCS)
    assert evaluate(ring, x, n_ref=200) == res  # seeded: the same numbers again
    testbed = SimpleNamespace(truth=ring, modes=torch.arange(8) // 2)
    assert testbed_metrics(testbed, x) == evaluate(ring, x, modes=testbed.modes)
    labels = torch.zeros(300, dtype=torch.long)
    assert set(evaluate(ring, x, labels=labels)) == BASE_KEYS  # no classes in the truth
    xc = _draw(cond, 300, 12)
    assert set(evaluate(cond, xc)) == BASE_KEYS  # no labels given
    both = evaluate(cond, xc, labels=labels, reference=_draw(cond, 250, 1))
    assert set(both) == BASE_KEYS | {"class_acc"} and all(math.isfinite(v) for v in both.values())
    fewer = evaluate(cond, xc, labels=labels, n_ref=150)  # reference labels resampled from ours
    assert all(math.isfinite(v) for v in fewer.values())
    bad = x.clone()
    bad[3, 0], bad[7, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="2 non-finite rows"):
        evaluate(ring, bad)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        evaluate(cond, xc, labels=labels + 2)
    with pytest.raises(ValueError, match=r"modes must be non-negative integers of shape \(8,\)"):
        mode_stats(ring, x, torch.arange(4))
