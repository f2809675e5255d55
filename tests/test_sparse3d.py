"""Sparse3D system (issue 14): the variants testbed, its exact posterior and teachers, the metric,
the runner. C-SDS is not built (its equation could not be verified): the config refuses it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scoredistill.cli import main
from scoredistill.config import ConfigError
from scoredistill.eval.metrics3d import sharpness
from scoredistill.runs.systems import run_system
from scoredistill.runs.systems.sparse3d import C_SDS_STATUS
from scoredistill.teachers.views_variants import (
    VARIANTS,
    build_variants,
    posterior_weights,
    variant_teachers,
)

STD = 0.05  # the testbed's per-pixel std


@pytest.fixture(scope="module")
def tb():
    return build_variants()  # true variant 0, inputs at azimuth 0 and 30, 16x16


def test_posterior_is_the_hand_written_softmax():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    renders = y[None] + 0.05 * torch.randn(5, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    renders[2] = y  # an exact match
    logs = [-float((renders[k] - y).pow(2).sum()) / (2 * STD**2) for k in range(5)]
    top = max(logs)
    z = sum(math.exp(v - top) for v in logs)
    want = torch.tensor([math.exp(v - top) / z for v in logs], dtype=torch.float64)
    got = posterior_weights(y, renders, STD)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert int(got.argmax()) == 2  # the variant that renders the inputs exactly wins


def test_inputs_cannot_tell_the_first_four_variants_apart(tb):
    assert tb.names == tuple(name for name, _ in VARIANTS)
    seen = tb.ring_images[:, [0, 6]]  # ring azimuths 0 and 30 (5 degrees apart)
    for k in range(1, 4):
        # at most 1.3e-4 on 3 of 1536 values (light leaking through the body near its edge):
        # (1e-3)^2 / (2 STD^2) = 2e-4 nats, nothing next to the 3.2 nats of the yellow tip
        torch.testing.assert_close(seen[k], seen[0], atol=1e-3, rtol=0)
        back = tb.ring_images[k, 36] - tb.ring_images[0, 36]  # azimuth 180
        assert float(back.abs().max()) > 0.3  # but the back differs
    torch.testing.assert_close(tb.input_images, tb.ring_images[0, [0, 6]])
    w = tb.posterior
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    # equal renders -> equal weights; the yellow tip is 3.2 nats out (16x16): e^-3.2 ~ 0.04 of
    # the others; the orange tail is > 600 nats out
    # (the leak above moves a log-weight by <= 2e-4 nats: rtol 1e-4 on the weights' ratio)
    torch.testing.assert_close(w[:4] / w[0], torch.ones(4, dtype=torch.float64), rtol=1e-4, atol=0)
    assert 0.01 < float(w[4] / w[0]) < 0.1 and float(w[5]) < 1e-200


def _closed_form(mu: torch.Tensor, wts: torch.Tensor, x_t: torch.Tensor, a: float, s: float):
    """Hand-written denoiser of sum_k w_k N(mu_k, STD^2 I) at x_t = a x + s eps."""
    var = a**2 * STD**2 + s**2
    logr = torch.log(wts) - ((x_t[None] - a * mu) ** 2).sum(1) / (2 * var)
    r = torch.softmax(logr, 0)
    return (r[:, None] * (mu + a * STD**2 / var * (x_t[None] - a * mu))).sum(0)


def test_view_conditioned_teacher_is_the_posterior_mixture_of_that_cameras_renders(tb):
    teacher = tb.view_conditioned
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    alpha, sigma = teacher.schedule.alpha_sigma(t)
    j = torch.tensor([36, 6, 50])
    mus = tb.ring_images[:, j].flatten(2).double()  # (K, 3, D)
    x0 = mus[0] + 0.1 * torch.randn(mus[0].shape, generator=g, dtype=torch.float64)
    x_t = alpha[:, None] * x0 + sigma[:, None] * torch.randn(x0.shape, generator=g).double()
    got = teacher.denoise(x_t, t, j)
    for b in range(3):
        a, s = float(alpha[b]), float(sigma[b])
        want = _closed_form(mus[:, b], tb.posterior, x_t[b], a, s)
        torch.testing.assert_close(got[b], want, rtol=1e-9, atol=1e-9)


def test_a_certain_posterior_gives_the_single_gaussian_denoiser():
    """Weight 1 on one variant: the render from camera j, N(mu, STD^2 I), whose denoiser is
    mu + a STD^2 / (a^2 STD^2 + s^2) (x_t - a mu). Both exactly (hand-set one-hot weights) and
    from the data (the orange tail is seen in the inputs: posterior 1 - e^-600)."""
    certain = build_variants(true_index=5)
    assert float(certain.posterior[5]) == 1.0
    one_hot = torch.zeros(len(VARIANTS), dtype=torch.float64)
    one_hot[2] = 1.0
    _, by_hand = variant_teachers(certain.ring_images, certain.ring_azimuths, one_hot, 4.0, STD)
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    j = torch.tensor([10, 40])
    x_t = torch.randn(2, 768, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for teacher, k in ((certain.view_conditioned, 5), (by_hand, 2)):
        alpha, sigma = teacher.schedule.alpha_sigma(t)
        mu = certain.ring_images[k, j].flatten(1).double()
        c = (alpha * STD**2 / (alpha**2 * STD**2 + sigma**2))[:, None]
        want = mu + c * (x_t - alpha[:, None] * mu)
        torch.testing.assert_close(teacher.denoise(x_t, t, j), want, rtol=1e-9, atol=1e-9)


def test_camera_agnostic_weights_are_posterior_times_view_bias(tb):
    teacher = tb.camera_agnostic
    assert teacher.num_classes == 0
    az = torch.deg2rad(tb.ring_azimuths)
    want = torch.stack([float(w) * torch.exp(4.0 * torch.cos(az)) for w in tb.posterior])
    torch.testing.assert_close(teacher.weights, (want / want.sum()).reshape(-1))
    torch.testing.assert_close(teacher.means, tb.ring_images.flatten(2).flatten(0, 1).double())


def test_sharpness_closed_forms():
    img = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])  # rows: (1)^2+(2)^2, columns: 2^2+3^2
    flat = torch.full_like(img, 0.7)
    other = torch.tensor([[[[0.0, 0.0], [0.0, 6.0]]]])  # rows 36, columns 36
    assert sharpness(other, img) == pytest.approx(72.0 / 18.0)
    assert sharpness(flat, img) == 0.0
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert sharpness(x, x) == pytest.approx(1.0)
    assert sharpness(0.5 * x + 0.2, x) == pytest.approx(0.25)  # deviations scaled by c: c^2
    blur = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert sharpness(blur, x) < 1.0


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("arms", '["c-sds"]', "could not be confirmed"),
        ("arms", '["sds"]', "unknown"),
        ("true_variant", "6", "true_variant"),
        ("input_azimuths", "[0.0, 32.0]", "input_azimuths"),
        ("steps", "0", "steps"),
    ],
)
def test_bad_values_name_the_key(key: str, value: str, match: str):
    with pytest.raises(ConfigError, match=match):
        run_system("sparse3d-views", [f"{key}={value}"], Path("/nonexistent"), quick=True)


def test_cli_quick_run_writes_the_metrics_and_resumes(tmp_path: Path):
    assert main(["distill", "--preset", "sparse3d-views", "--quick", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m["rows"]) == {"recon", "sds-agnostic", "sds-view"}
    for r in m["rows"].values():
        assert {"psnr", "psnr_back", "psnr_posterior_mean", "iou", "sharpness"} <= set(r)
        assert 0.0 <= r["iou"] <= 1.0
    assert m["c_sds"] == C_SDS_STATUS and "could not be confirmed" in m["c_sds"]
    assert m["references"]["truth"]["iou"] == 1.0
    assert "C-SDS: not built" in (tmp_path / "report.md").read_text()
    again = run_system("sparse3d-views", [], tmp_path, resume=True, quick=True)
    assert again["rows"] == m["rows"]  # finished arms are read back, not refitted
