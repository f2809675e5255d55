"""HiFA (``objectives/hifa.py``): its DDIM grid is the official ``range(t, -1, -1000 // K)``, its
multi-step target has the exact posterior mean on a Gaussian teacher, the gradients of its two
terms are ``w lambda (x - target)``, and ``hifa-sd-field`` hands the renders to the image term."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from scoredistill.cli import main
from scoredistill.objectives import SCORE_OBJECTIVES, HiFA
from scoredistill.objectives._ingredients import ref_to_t
from scoredistill.objectives.hifa import denoise_grid
from scoredistill.teachers.analytic import GaussianMixtureTeacher

F64 = torch.float64


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("t", [0, 20, 249, 250, 251, 500, 733, 980, 999])
@pytest.mark.parametrize("k", [1, 2, 4, 10])
def test_denoise_grid_is_the_official_ddim_range(t, k):
    expected = [s / 1000 for s in range(t, -1, -(1000 // k))]
    assert denoise_grid(t / 1000, k).tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("u", [0.3, 0.9])
def test_target_mean_is_the_gaussian_posterior_mean(steps, u):
    """DDIM(eta = 1) with an exact Gaussian denoiser moves the mean exactly (each step's mean is
    affine in the posterior mean), so E[z^] = E[E[z_0 | z_t]] = m + a^2 s^2 / (a^2 s^2 + sig^2)
    (z - m) at the drawn t, for any number of steps."""
    m, s = torch.tensor([1.0, -0.5, 0.25], dtype=F64), 0.6
    teacher = GaussianMixtureTeacher(m[None], [1.0], stds=[s], schedule="vp-linear")
    obj = HiFA(t_schedule="random", t_range=(u, u), guidance=1.0, denoise_steps=steps)
    n = 40_000
    z = torch.tensor([0.2, 0.7, -1.1], dtype=F64).expand(n, 3).clone()
    z_hat, t = obj.target(z, None, teacher=teacher, rng=_rng(0))
    t_ref = ref_to_t(teacher.schedule, torch.tensor([u], dtype=F64), obj.t_reference)
    assert float(t[0]) == pytest.approx(float(t_ref[0]))
    a, sig = (float(c) for c in teacher.schedule.alpha_sigma(t_ref))
    closed = m + a**2 * s**2 / (a**2 * s**2 + sig**2) * (z[0] - m)
    se = z_hat.std(0) / math.sqrt(n)
    assert ((z_hat.mean(0) - closed).abs() < 4 * se + 1e-9).all(), (z_hat.mean(0), closed)


class _Linear:
    """A Gaussian teacher on 4-D latents with a fixed linear decoder to 6 pixels."""

    def __init__(self) -> None:
        self.net = GaussianMixtureTeacher(torch.zeros(1, 4, dtype=F64), [1.0], stds=[0.5])
        self.schedule = self.net.schedule
        self.dec = torch.randn(4, 6, generator=_rng(5), dtype=F64)

    def denoise(self, x, t, cond=None):
        return self.net.denoise(x, t, cond)

    def decode(self, z):
        return z @ self.dec


def test_gradients_are_weighted_residuals_to_the_target_and_its_decoding():
    teacher, obj = _Linear(), HiFA(t_schedule="random", lambda_rgb=0.3)
    z = torch.randn(5, 4, generator=_rng(1), dtype=F64).requires_grad_(True)
    px = torch.randn(5, 6, generator=_rng(2), dtype=F64).requires_grad_(True)
    obj.generator_loss(z, None, teacher=teacher, rng=_rng(3), pixels=px).value.backward()
    z_hat, _ = obj.target(z, None, teacher=teacher, rng=_rng(3))  # the same draws
    b = z.shape[0]
    torch.testing.assert_close(z.grad, obj.scale * (z - z_hat).detach() / b)
    rgb = obj.scale * 0.3 * (px - teacher.decode(z_hat)).detach() / 4 / b  # [0, 1] pixels
    torch.testing.assert_close(px.grad, rgb)


def test_without_a_decoder_the_image_term_is_the_latent_term():
    teacher = GaussianMixtureTeacher(torch.zeros(1, 3, dtype=F64), [1.0], stds=[0.5])
    obj = HiFA(lambda_rgb=0.2)  # the official sqrt schedule, halfway through the run
    z = torch.randn(4, 3, generator=_rng(1), dtype=F64).requires_grad_(True)
    obj.generator_loss(z, None, teacher=teacher, rng=_rng(3), progress=0.25).value.backward()
    z_hat, t = obj.target(z, None, teacher=teacher, rng=_rng(3), progress=0.25)
    torch.testing.assert_close(z.grad, obj.scale * (1 + 0.2 / 4) * (z - z_hat).detach() / 4)
    u = ref_to_t(teacher.schedule, torch.tensor([0.64], dtype=F64), obj.t_reference)
    assert float(t[0]) == pytest.approx(float(u[0]))  # 0.3 + 0.68 (1 - sqrt(0.25))


@pytest.mark.parametrize("step", [0, 1, 250, 999])
def test_annealed_t_is_the_official_schedule(step):
    """``nerf/sd.py``: ``t = (max_step - min_step)(1 - p) + min_step`` with ``p = sqrt(step /
    iters)`` (``"sqrt"``) or ``step / iters`` (``"linear"``), min/max 300/980 of 1000."""
    p = step / 1000
    for name, q in (("sqrt", math.sqrt(p)), ("linear", p)):
        expected = ((980 - 300) * (1 - q) + 300) / 1000
        assert HiFA(t_schedule=name).fraction(p, None) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="progress"):
        HiFA().fraction(None, None)


def test_bad_fields_are_refused():
    with pytest.raises(ValueError, match="denoise_steps"):
        HiFA(denoise_steps=0)
    with pytest.raises(ValueError, match="lambda_rgb"):
        HiFA(lambda_rgb=-1.0)
    with pytest.raises(ValueError, match="t_schedule"):
        HiFA(t_schedule="cosine")
    assert SCORE_OBJECTIVES["hifa"] is HiFA


def test_hifa_sd_field_passes_the_renders_to_the_image_term(
    sd_folder, prompts, tmp_path, monkeypatch
):
    seen = []
    real = HiFA.generator_loss

    @functools.wraps(real)  # the run asks the signature whether it takes ``pixels``
    def spy(self, x, cond, **kw):
        seen.append((kw.get("pixels"), kw.get("progress")))
        return real(self, x, cond, **kw)

    monkeypatch.setattr(HiFA, "generator_loss", spy)
    out = tmp_path / "hifa"
    args = ["optimize", "--preset", "hifa-sd-field", "--teacher", str(sd_folder), "--prompts",
            prompts, "--out", str(out), "--quick"]  # fmt: skip
    assert main(args) == 0
    assert seen and all(
        p is not None and p.shape[-2:] == (8, 8) and p.requires_grad for p, _ in seen
    )
    assert [w for _, w in seen] == [0.0, 1 / 3, 2 / 3]  # the loop's step / steps
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    # the preset's departure (lambda_rgb 100); the objective keeps the official 0.1
    assert config["method"] == "hifa" and config["objective"]["lambda_rgb"] == 100.0
    assert HiFA().lambda_rgb == 0.1 and config["objective"]["t_schedule"] == "sqrt"
    assert metrics["view_spread"] != metrics["initial"]["view_spread"]  # the field moved


def test_on_latent_particles_the_image_is_their_decoding(sd_folder, prompts, tmp_path):
    """Without renders (latent particles) the image term compares ``D(z)`` with ``D(z^)``,
    differentiated through the decoder: the run works and the particles move."""
    out = tmp_path / "particles"
    args = ["optimize", "--preset", "sds-sd", "--set", "method=hifa", "--teacher",
            str(sd_folder), "--prompts", prompts, "--out", str(out), "--quick"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "config.json").read_text())["method"] == "hifa"
    assert math.isfinite(metrics["fd"]) and metrics["fd"] != metrics["initial"]["fd"]
