"""Diff-Protect (runs/systems/diffprotect*.py): each piece against an independent closed form.

Gaussian oracles: for an isotropic Gaussian latent prior N(mu, s^2 I) on a VP schedule, the exact
noise prediction is ``eps_hat(z_t) = sigma (z_t - alpha mu) / v`` with ``v = alpha^2 s^2 +
sigma^2``, so ``d eps_hat / d z = (sigma alpha / v) I`` and the full (AdvDM) gradient is the SDS
gradient times ``2 sigma alpha / v`` > 0: the two PGD sign steps coincide.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from scoredistill.config import ConfigError
from scoredistill.runs.systems import _resolve
from scoredistill.runs.systems import diffprotect as dp
from scoredistill.runs.systems import diffprotect_attacks as atk
from scoredistill.runs.systems.diffprotect_lab import MLPVAE, sdedit, train_vae
from scoredistill.schedules import get_schedule
from scoredistill.teachers.analytic import GaussianMixtureTeacher
from scoredistill.teachers.mlp import MLPDenoiserNet
from scoredistill.teachers.neural import NeuralDenoiser

SCHED = "vp-scaled-linear"


def _linear_setup(n: int = 6, d_x: int = 5, d_z: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d_z, d_x, generator=g, dtype=torch.float64)
    mu = torch.randn(1, d_z, generator=g, dtype=torch.float64)
    s = 0.7
    teacher = GaussianMixtureTeacher(
        mu, torch.ones(1), stds=torch.tensor([s], dtype=torch.float64), schedule=SCHED
    )
    x = torch.rand(n, d_x, generator=g, dtype=torch.float64) * 2 - 1
    return a, mu, s, teacher, x, (lambda v: v @ a.T)


def _draws(n: int, d_z: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (t, eps) both gradients draw from a fresh generator: t ~ U(0, 1), then eps."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    return t, torch.randn(n, d_z, generator=g, dtype=torch.float64)


def _gaussian_eps(z, t, eps, mu, s):
    alpha, sigma = get_schedule(SCHED).alpha_sigma(t)
    alpha, sigma = alpha[:, None], sigma[:, None]
    z_t = alpha * z + sigma * eps
    v = alpha**2 * s**2 + sigma**2
    return sigma * (z_t - alpha * mu) / v, sigma * alpha / v


def test_sds_gradient_is_the_encoder_vjp_of_the_exact_residual():
    a, mu, s, teacher, x, enc = _linear_setup()
    got = atk.sds_gradient(x, enc, teacher, torch.Generator().manual_seed(3))
    t, eps = _draws(x.shape[0], a.shape[0], 3)
    eps_hat, _ = _gaussian_eps(enc(x), t, eps, mu, s)
    torch.testing.assert_close(got, (eps_hat - eps) @ a, rtol=1e-9, atol=1e-12)  # float64


def test_full_gradient_is_the_sds_gradient_times_two_sigma_alpha_over_v():
    a, mu, s, teacher, x, enc = _linear_setup()
    full = atk.full_gradient(x, enc, teacher, torch.Generator().manual_seed(5))
    t, eps = _draws(x.shape[0], a.shape[0], 5)
    eps_hat, coef = _gaussian_eps(enc(x), t, eps, mu, s)
    torch.testing.assert_close(full, (2 * coef * (eps_hat - eps)) @ a, rtol=1e-9, atol=1e-12)
    sds = atk.sds_gradient(x, enc, teacher, torch.Generator().manual_seed(5))
    assert torch.equal(full.sign(), sds.sign())  # so PGD(full) == PGD(sds) on this teacher


def test_oracle_gradient_matches_the_two_gaussian_logistic_form():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 4, generator=g, dtype=torch.float64)
    means, s = torch.tensor([[1.0, 0.0], [-1.0, 0.5]], dtype=torch.float64), 0.8
    truth = GaussianMixtureTeacher(
        means,
        torch.tensor([0.3, 0.7]),
        stds=torch.full((2,), s, dtype=torch.float64),
        labels=torch.tensor([0, 1]),
    )
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    got = atk.oracle_gradient(x, lambda v: v @ a.T, truth, y)
    z = x @ a.T
    other = 1 - y
    logit = (
        ((means[y] - means[other]) * z).sum(1) / s**2
        - (means[y].pow(2).sum(1) - means[other].pow(2).sum(1)) / (2 * s**2)
        + torch.log(truth.weights[y] / truth.weights[other])
    )
    p_y = torch.sigmoid(logit)[:, None]
    want = (-(1 - p_y) * (means[y] - means[other]) / s**2) @ a
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_pgd_sign_directions_and_the_budget():
    """SDS(-) descends E[g_z] = sigma alpha (z - mu) / v (toward the mode), SDS(+) ascends."""
    _, mu, _, teacher, _, enc = _linear_setup(n=64, d_x=8, d_z=2)
    x0 = torch.rand(64, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5
    eps, dist0 = 0.2, (enc(x0) - mu).norm(dim=1).mean()
    dist = {}
    for direction in (1.0, -1.0):
        grad = lambda v, r: atk.sds_gradient(v, enc, teacher, r)  # noqa: E731
        rng = torch.Generator().manual_seed(0)
        x = atk.pgd(x0, grad, eps=eps, step=0.02, steps=40, direction=direction, rng=rng).x_adv
        assert float((x - x0).abs().max()) <= eps + 1e-12 and float(x.abs().max()) <= 1.0
        dist[direction] = (enc(x) - mu).norm(dim=1).mean()
    assert dist[-1.0] < dist0 < dist[1.0]


def test_random_sign_moves_every_unclipped_pixel_by_eps():
    x = torch.linspace(-1, 1, 200).reshape(4, 50)
    out = atk.random_sign(x, 0.1, torch.Generator().manual_seed(0))
    inside = (x.abs() <= 0.9 - 1e-6).expand_as(x)
    torch.testing.assert_close((out - x).abs()[inside], torch.full_like(x[inside], 0.1))
    assert float(out.abs().max()) <= 1.0


def test_sdedit_with_the_exact_teacher_keeps_the_data_distribution():
    """z0 ~ N(mu, s^2 I) noised to t and integrated back by the PF-ODE lands in N(mu, s^2 I)."""
    mu, s, n = torch.tensor([[0.5, -1.0]]), 0.6, 20000
    teacher = GaussianMixtureTeacher(
        mu, torch.ones(1), stds=torch.tensor([s], dtype=torch.float64), schedule=SCHED
    )
    g = torch.Generator().manual_seed(0)
    z0 = mu + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    out = sdedit(teacher.denoise, teacher.schedule, z0, 0.5, 100, g)
    se_mean, se_std = s / n**0.5, s / (2 * n) ** 0.5
    assert float((out.mean(0) - mu).abs().max()) < 4 * se_mean  # 4 standard errors
    # 4 standard errors + 3%: first-order DDIM shrinks the std by 2.3% at these 50 steps and by
    # 0.6% at 200 (measured with 2e5 samples), so the slack is the discretisation, not noise
    assert float((out.std(0) - s).abs().max()) < 4 * se_std + 0.03 * s
    with pytest.raises(ValueError, match="strength"):
        sdedit(teacher.denoise, teacher.schedule, z0, 0.0, 100, g)


def test_sds_keeps_only_the_encoder_graph_and_full_keeps_the_denoisers_too():
    torch.manual_seed(0)
    vae = MLPVAE(16, 4, 32)
    net = NeuralDenoiser(MLPDenoiserNet(4, 32, 2), SCHED, "edm", 1.0)
    x = torch.rand(8, 16) * 2 - 1

    def encode(v):
        return vae.encode(v)[0]

    def encoder_only(v, r):
        v = v.detach().requires_grad_(True)
        encode(v).sum().backward()
        return v.grad

    rng = torch.Generator()
    sds = atk.saved_bytes(lambda v, r: atk.sds_gradient(v, encode, net, r), x, rng)
    full = atk.saved_bytes(lambda v, r: atk.full_gradient(v, encode, net, r), x, rng)
    assert sds == atk.saved_bytes(encoder_only, x, rng) > 0
    assert full > sds


def test_vae_training_is_deterministic_in_the_seed():
    x = torch.rand(64, 16) * 2 - 1
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        vae = MLPVAE(16, 2, 16)
        train_vae(vae, x, steps=5, batch=16, lr=1e-2, beta=0.02, seed=3)
        weights.append(torch.cat([p.flatten() for p in vae.parameters()]))
    assert torch.equal(*weights)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("strengths", (0.0, 0.2)),
        ("variants", ("exact", "pixel")),
        ("variants", ("exact", "exact")),
        ("n_protect", 451),
        ("step_size", 0.5),
    ],
)
def test_bad_config_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        dp.DiffProtectConfig(**{key: value})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from scoredistill.cli import main

    out = tmp_path_factory.mktemp("dp") / "run"
    args = ["distill", "--preset", "diffprotect-digits", "--quick", "--out", str(out)]
    assert main(args) == 0
    return out


def test_cli_quick_run_writes_every_method_and_claim(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert {"preset", "lab", "results", "claims", "wall_s"} <= set(metrics)
    assert set(metrics["results"]) == {f"{v}/{m}" for v in dp.VARIANTS for m in dp.METHODS}
    for r in metrics["results"].values():
        assert 0.0 <= r["acc@0.2"] <= 1.0 and r["linf"] <= 32 / 255 + 1e-6
    assert "sds-_minus_sds+_acc" in "".join(metrics["claims"])
    assert "| sds- |" in (quick_run / "report.md").read_text()


def test_resume_recomputes_the_missing_phase_identically(quick_run, tmp_path):
    """Point the checkpoint at the one before the last phase: resuming redoes that phase alone
    and gets the same numbers (its noise is seeded per phase)."""
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    ck = run / "checkpoints"
    last = json.loads((ck / "latest.json").read_text())["step"]
    (ck / "latest.json").write_text(json.dumps({"step": last - 1, "path": f"step-{last - 1}"}))
    cfg = _resolve("diffprotect-digits", dp_quick_sets()).config
    again = dp.procedure(cfg, run, resume=True)["results"]
    before = json.loads((quick_run / "metrics.json").read_text())["results"]
    key = f"{dp.VARIANTS[-1]}/{dp.METHODS[-1]}"
    timing = {"s_per_step", "cpu_time_ratio_sds_full"}
    assert {k: v for k, v in again[key].items() if k not in timing} == pytest.approx(
        {k: v for k, v in before[key].items() if k not in timing}
    )


def dp_quick_sets() -> list[str]:
    from scoredistill.runs.systems import quick_sets

    return quick_sets("diffprotect-digits")
