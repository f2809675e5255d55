"""Digits feature network and image metrics: FD against scipy, k-NN precision/recall limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from scoredistill.data import load_digits_images
from scoredistill.eval.features import (
    digits_features,
    image_metrics,
    knn_precision_recall,
    load_digits_feature_net,
    real_floor,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: the network trains once (~6 s), later calls load it.

    Built through ``image_metrics``, a no-grad function, as a first use in a script would be.
    """
    path = tmp_path_factory.mktemp("cache")
    image_metrics(load_digits_images("test").x[:20], cache_dir=path)
    return path


def _scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of two Gaussians fitted to feature rows, with scipy's sqrtm."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_classifier_generalises(cache: Path):
    test = load_digits_images("test")
    net = load_digits_feature_net(cache)
    acc = (net.logits(test.x).argmax(1) == test.labels).double().mean().item()
    assert acc > 0.9


def test_cache_is_reused_and_env_overrides(cache: Path, monkeypatch):
    files = list(cache.glob("digits-features-*.safetensors"))
    assert len(files) == 1
    monkeypatch.setenv("SCOREDISTILL_CACHE", str(cache))
    assert load_digits_feature_net() is load_digits_feature_net(cache)  # same file, loaded once


def test_fd_matches_scipy_on_the_same_features(cache: Path):
    test = load_digits_images("test").x
    fake = load_digits_images("train").x[:600] + 0.3 * torch.randn(600, 1, 8, 8)
    fd = image_metrics(fake, cache_dir=cache)["fd"]
    ref = _scipy_fd(
        digits_features(fake, cache).double().numpy(), digits_features(test, cache).double().numpy()
    )
    # float32 features, float64 statistics: agreement far inside 1e-3 relative
    assert fd == pytest.approx(ref, rel=1e-3)


def test_fd_small_for_real_large_for_noise(cache: Path):
    floor = real_floor(450, cache_dir=cache)
    noise = image_metrics(torch.rand(450, 1, 8, 8) * 2 - 1, cache_dir=cache)
    # real-vs-real differs only by sampling; uniform noise is far from every digit
    assert floor["fd"] < 0.05 * noise["fd"]
    assert floor["precision"] > 0.8 and floor["recall"] > 0.8
    assert noise["precision"] < 0.2


def test_precision_recall_limits():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g)
    assert knn_precision_recall(a, a.clone()) == (1.0, 1.0)  # every point is in its own ball
    far = torch.randn(200, 8, generator=g) + 100.0  # 100 σ away: no ball reaches across
    assert knn_precision_recall(a, far) == (0.0, 0.0)
    # half the fake points on the real cloud, half far away: precision ½, recall stays high
    half = torch.cat([a[:100], far[:100]])
    precision, _ = knn_precision_recall(a, half)
    assert precision == 0.5


def test_class_acc_of_real_digits_is_the_classifier_accuracy(cache: Path):
    test = load_digits_images("test")
    net = load_digits_feature_net(cache)
    acc = (net.logits(test.x).argmax(1) == test.labels).double().mean().item()
    got = image_metrics(test.x, test.labels, cache_dir=cache)
    assert got["class_acc"] == acc
    assert got["precision"] == 1.0 and got["recall"] == 1.0 and abs(got["fd"]) < 1e-3
    flat = image_metrics(test.x.flatten(1), test.labels, cache_dir=cache)  # samples.npz layout
    assert flat["class_acc"] == acc


def test_bad_inputs_are_named(cache: Path):
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        image_metrics(torch.zeros(10, 3, 8, 8), cache_dir=cache)
    with pytest.raises(ValueError, match="NaN"):
        image_metrics(torch.full((10, 1, 8, 8), float("nan")), cache_dir=cache)
    with pytest.raises(ValueError, match="labels must have shape"):
        image_metrics(torch.zeros(10, 1, 8, 8), torch.zeros(3, dtype=torch.long), cache_dir=cache)
