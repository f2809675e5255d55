"""Learned (neural) teacher and io utilities, checked against exact Gaussian-mixture answers."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from scoredistill import io as fileio
from scoredistill.parametrization import PREDICTIONS, from_denoiser
from scoredistill.schedules import SCHEDULES, get_schedule, t_from_log_snr
from scoredistill.teachers import testbeds
from scoredistill.teachers.analytic import GaussianMixtureTeacher
from scoredistill.teachers.base import NULL_LABEL, Teacher
from scoredistill.teachers.neural import (
    MLPDenoiserNet,
    NeuralDenoiser,
    denoiser_errors,
    load_learned_teacher,
    save_learned_teacher,
)
from scoredistill.teachers.testbeds import load_learned_testbed
from scoredistill.train.dsm import (
    P_MEAN,
    P_STD,
    dsm_loss,
    sample_training_t,
    train_dsm,
    train_learned_teacher,
)

F64 = torch.float64
SD = 0.5  # sigma_data used with the hand-built mixtures below


pytestmark = pytest.mark.usefixtures("one_thread")


def mixture(schedule: str = "edm", labels: bool = False) -> GaussianMixtureTeacher:
    """Four separated 2-D components: the exact denoiser is far from linear at moderate noise."""
    means = [[-1.0, -0.6], [1.0, -0.6], [0.0, 1.0], [0.0, 0.0]]
    return GaussianMixtureTeacher(
        means,
        [0.3, 0.3, 0.2, 0.2],
        stds=[0.15, 0.1, 0.2, 0.1],
        labels=[0, 0, 1, 1] if labels else None,
        schedule=schedule,
    )


class ExactAs:
    """An exact mixture denoiser with ``sigma_data`` and an optional constant offset."""

    def __init__(self, truth: GaussianMixtureTeacher, sigma_data: float, shift: Any = 0.0):
        self.truth, self.schedule = truth, truth.schedule
        self.sigma_data, self.shift = sigma_data, shift

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.truth.denoise(x_t, t, cond) + self.shift


class OracleNet(nn.Module):
    """Undoes EDM's c_in and c_noise (as written in the paper) and returns the exact answer."""

    def __init__(self, truth: GaussianMixtureTeacher, prediction: str) -> None:
        super().__init__()
        self.truth, self.prediction = truth, prediction
        self.dummy = nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None) -> Tensor:
        s = torch.exp(4 * c_noise)  # c_noise = log(sigma/alpha) / 4
        schedule = self.truth.schedule
        t = t_from_log_snr(schedule, -2 * torch.log(s))
        alpha, sigma = schedule.alpha_sigma(t)
        x_t = alpha[:, None] * x_in * torch.sqrt(s**2 + SD**2)[:, None]  # c_in = 1/sqrt(s^2+sd^2)
        d = self.truth.denoise_at(x_t, alpha, sigma, cond)
        da, ds = schedule.alpha_sigma_deriv(t)
        return from_denoiser(
            d, x_t, alpha, sigma, self.prediction, d_alpha=da, d_sigma=ds, sigma_data=SD
        )


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_oracle_net_gives_exact_denoiser(schedule: str, prediction: str) -> None:
    truth = mixture(schedule, labels=True)
    den = NeuralDenoiser(OracleNet(truth, prediction), schedule, prediction, SD, num_classes=2)
    rng = torch.Generator().manual_seed(0)
    t = 0.1 + 0.8 * torch.rand(64, generator=rng, dtype=F64)
    x_t = 2 * torch.randn(64, 2, generator=rng, dtype=F64)
    cond = torch.randint(-1, 2, (64,), generator=rng)
    # float64 round-off amplified by the conversions (1/sigma, 1/alpha <= ~1e2 on t in [0.1, 0.9])
    torch.testing.assert_close(den(x_t, t, cond), truth.denoise(x_t, t, cond), rtol=0, atol=1e-9)
    assert isinstance(den, Teacher)


def test_mlp_conditioning_and_initial_denoiser() -> None:
    torch.manual_seed(0)
    net = MLPDenoiserNet(2, hidden=16, depth=2, num_classes=3)
    x, c = torch.randn(5, 2), torch.randn(5)
    torch.testing.assert_close(net(x, c, None), net(x, c, torch.full((5,), NULL_LABEL)))
    with pytest.raises(ValueError, match="cond labels"):
        net(x, c, torch.full((5,), 3))
    with pytest.raises(ValueError, match="cond labels"):
        MLPDenoiserNet(2, hidden=8, depth=1)(x, c, torch.zeros(5, dtype=torch.long))
    # zero output layer: the EDM denoiser is c_skip * x / alpha (Karras et al. Table 1)
    den = NeuralDenoiser(net, "vp-cosine", sigma_data=SD, num_classes=3)
    t = torch.full((5,), 0.4)
    alpha, sigma = den.schedule.alpha_sigma(t)
    s = (sigma / alpha)[:, None]
    torch.testing.assert_close(den.denoise(x, t), SD**2 / (s**2 + SD**2) * x / alpha[:, None])


def test_flow_prediction_finite_where_alpha_vanishes() -> None:
    torch.manual_seed(0)
    den = NeuralDenoiser(MLPDenoiserNet(2, hidden=8, depth=2), "rf", prediction="flow")
    assert torch.isfinite(den.denoise(torch.randn(4, 2), torch.ones(4))).all()


def test_sample_training_t_is_edm_lognormal() -> None:
    n = 50_000
    schedule = get_schedule("edm")
    t = sample_training_t(schedule, n, torch.Generator().manual_seed(0))
    assert bool(((t >= schedule.t_min) & (t <= schedule.t_max)).all())
    alpha, sigma = schedule.alpha_sigma(t)
    log_s = torch.log(sigma / alpha)
    # clamping at sigma in [0.002, 80] touches < 1e-5 of the mass; 5 standard errors
    assert abs(log_s.mean().item() - P_MEAN) < 5 * P_STD / math.sqrt(n)
    assert abs(log_s.std().item() - P_STD) < 5 * P_STD / math.sqrt(2 * n)


def _loss_inputs(truth: GaussianMixtureTeacher, n: int, seed: int) -> tuple[Tensor, ...]:
    rng = torch.Generator().manual_seed(seed)
    x0 = truth.sample(n, rng=rng, dtype=F64)
    t = sample_training_t(truth.schedule, n, rng)
    return x0, t, torch.randn(x0.shape, generator=rng, dtype=F64)


def _weight(truth: GaussianMixtureTeacher, t: Tensor) -> Tensor:
    alpha, sigma = truth.schedule.alpha_sigma(t)
    s = sigma / alpha
    return (s**2 + SD**2) / (s * SD) ** 2


def test_dsm_loss_excess_of_a_perturbation_is_its_weighted_size() -> None:
    """E[L(D* + d)] - E[L(D*)] = E[lambda] |d|^2 / dim > 0: D* is the minimiser."""
    truth = mixture("vp-linear")
    x0, t, eps = _loss_inputs(truth, 20_000, seed=1)
    shift = torch.tensor([0.03, -0.02], dtype=F64)
    exact = dsm_loss(ExactAs(truth, SD), x0, t, eps)
    perturbed = dsm_loss(ExactAs(truth, SD, shift), x0, t, eps)
    assert perturbed > exact
    alpha, sigma = truth.schedule.alpha_sigma(t)
    d_star = truth.denoise(alpha[:, None] * x0 + sigma[:, None] * eps, t)
    per_sample = _weight(truth, t) * (2 * (d_star - x0) @ shift + shift @ shift) / 2
    torch.testing.assert_close(perturbed - exact, per_sample.mean())  # same formula, by hand
    expected = (_weight(truth, t) * (shift @ shift) / 2).mean()
    se = per_sample.std() / math.sqrt(len(t))
    assert abs(per_sample.mean() - expected) < 4 * se


@pytest.mark.parametrize("schedule", ["edm", "vp-linear", "rf"])
def test_dsm_loss_of_exact_gaussian_denoiser_is_posterior_variance(schedule: str) -> None:
    """x0 ~ N(m, v): E|D* - x0|^2 given t is v s^2 / (v + s^2), s = sigma/alpha."""
    v = 1.3
    truth = GaussianMixtureTeacher([[0.3]], [1.0], stds=[math.sqrt(v)], schedule=schedule)
    x0, t, eps = _loss_inputs(truth, 40_000, seed=2)
    alpha, sigma = truth.schedule.alpha_sigma(t)
    s2 = (sigma / alpha) ** 2
    term = _weight(truth, t) * v * s2 / (v + s2)  # lambda * posterior variance, per sample
    loss = dsm_loss(ExactAs(truth, SD), x0, t, eps)
    se = torch.sqrt(2 * (term**2).mean() / len(t))  # (D* - x0) | t is Gaussian: Var = 2 term^2
    assert abs(loss - term.mean()) < 4 * se


def _small_denoiser(
    truth: GaussianMixtureTeacher, seed: int = 0, hidden: int = 64
) -> NeuralDenoiser:
    torch.manual_seed(seed)
    net = MLPDenoiserNet(truth.dim, hidden=hidden, depth=3, num_classes=truth.num_classes)
    return NeuralDenoiser(net, truth.schedule, sigma_data=SD, num_classes=truth.num_classes)


def _sampler(truth: GaussianMixtureTeacher):
    return lambda n, rng: truth.sample(n, rng=rng)


def test_short_training_beats_best_gaussian_denoiser() -> None:
    """After 300 steps the net must halve the error of the moment-matched Gaussian's denoiser.

    That denoiser is the best one linear in x_t. At t = 0.2, 0.3 of EDM (sigma = 0.085, 0.32,
    about the component widths) the mixture's posterior mean is far from linear (eps_rel_err of
    the linear one: 0.95, 0.72), so halving it means the net learned the mixture, not just its
    first two moments. Seen on seeds 0, 1: 0.12-0.21 and 0.03-0.05.
    """
    truth = mixture("edm")
    den = _small_denoiser(truth, hidden=32)
    logs = train_dsm(den, _sampler(truth), steps=300, batch_size=256, lr=1e-2, progress=False)
    assert math.isfinite(logs["final_loss"]) and logs["steps"] == 300
    cov = truth.covariances + truth.means[:, :, None] * truth.means[:, None, :]
    mean = truth.weights @ truth.means
    cov = (truth.weights[:, None, None] * cov).sum(0) - torch.outer(mean, mean)
    gauss = GaussianMixtureTeacher(mean[None], [1.0], covs=cov[None], schedule="edm")
    learned = denoiser_errors(den, truth, (0.2, 0.3), n=8192)["eps_rel_err"]
    linear = denoiser_errors(ExactModule(gauss), truth, (0.2, 0.3), n=8192)["eps_rel_err"]
    for key in ("0.2", "0.3"):
        assert learned[key] < 0.5 * linear[key], (learned, linear)


class ExactModule(nn.Module):
    """An exact mixture in the NeuralDenoiser seat (denoiser_errors reads a parameter dtype)."""

    def __init__(self, truth: GaussianMixtureTeacher) -> None:
        super().__init__()
        self.truth, self.schedule = truth, truth.schedule
        self.dummy = nn.Parameter(torch.zeros((), dtype=F64))

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.truth.denoise(x_t, t, cond)


def test_exact_denoiser_has_zero_error() -> None:
    errs = denoiser_errors(ExactModule(mixture()), mixture(), n=256)
    assert all(v == 0 for d in errs.values() for v in d.values())


def test_training_is_deterministic_and_conditional() -> None:
    truth = mixture(labels=True)

    def sample(n: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        x, comp = truth.sample(n, rng=rng, return_components=True)
        return x, truth.labels[comp]

    a, b = _small_denoiser(truth, hidden=16), _small_denoiser(truth, hidden=16)
    for den in (a, b):
        train_dsm(den, sample, steps=15, batch_size=64, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.net.class_emb.weight.grad is None  # the EMA copy holds no gradients


def test_non_finite_loss_names_the_step() -> None:
    truth = mixture()
    with pytest.raises(RuntimeError, match="step 1"):
        train_dsm(
            _small_denoiser(truth, hidden=16), _sampler(truth), steps=5, lr=1e30, progress=False
        )
    nan_data = lambda n, rng: torch.full((n, 2), float("nan"))  # noqa: E731
    with pytest.raises(RuntimeError, match="step 0"):
        train_dsm(_small_denoiser(truth, hidden=16), nan_data, steps=5, progress=False)


def _saved(tmp_path: Any) -> tuple[NeuralDenoiser, Any]:
    truth = mixture("vp-cosine", labels=True)
    den = _small_denoiser(truth, hidden=16)
    torch.nn.init.normal_(den.net.out.weight)  # a non-trivial output layer
    path = save_learned_teacher(
        den, tmp_path, truth_testbed="toy", truth_seed=3, train_info={"a": 1}
    )
    return den, path


def test_save_load_round_trip(tmp_path: Any) -> None:
    den, path = _saved(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.json", "teacher.safetensors"]
    x, t = torch.randn(7, 2), torch.rand(7)
    cond = torch.tensor([0, 1, -1, 0, 1, -1, 0])
    for where in (tmp_path, path):
        loaded, meta = load_learned_teacher(where)
        assert torch.equal(loaded(x, t, cond), den(x, t, cond))
        assert loaded.schedule.name == "vp-cosine" and loaded.num_classes == 2
        assert meta["truth"] == {"testbed": "toy", "seed": 3} and meta["train"] == {"a": 1}


def _edit_json(path: Any, **changes: Any) -> None:
    meta = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"hidden": None}, "'hidden'"),
        ({"sigma_data": "big"}, "'sigma_data'"),
        ({"hidden": 32}, "'inp.weight'"),
        # 160 GB if allocated: refused from the file's shapes before any allocation
        ({"hidden": 200000}, "'inp.weight'"),
        ({"num_classes": 0}, "class_emb.weight"),
        ({"format": "other"}, "'format'"),
        ({"weights_sha256": "0" * 64}, "'weights_sha256'"),
        ({"prediction": "noise"}, "prediction"),
        ({"truth": {"testbed": "toy"}}, "'truth'"),
    ],
)
def test_bad_json_names_the_key(tmp_path: Any, changes: dict[str, Any], match: str) -> None:
    _, path = _saved(tmp_path)
    _edit_json(path, **changes)
    with pytest.raises(ValueError, match=match):
        load_learned_teacher(path)


def test_unreadable_files_raise_value_error(tmp_path: Any) -> None:
    _, path = _saved(tmp_path)
    (tmp_path / "teacher.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=re.escape("teacher.safetensors")):
        load_learned_teacher(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape("teacher.json")):
        load_learned_teacher(tmp_path)


@pytest.fixture
def toy_testbeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every testbed name gives the hand-built mixture: fast, and independent of fitted ones."""

    def get_testbed(name: str, seed: int = 0, schedule: str = "edm") -> testbeds.Testbed:
        truth = mixture(schedule)
        return testbeds.Testbed(name, truth, truth, torch.arange(4), None, "toy")

    monkeypatch.setattr(testbeds, "get_testbed", get_testbed)


def test_train_learned_teacher_and_testbed(tmp_path: Any, toy_testbeds: None) -> None:
    out = train_learned_teacher(
        "toy", steps=30, out_dir=tmp_path, hidden=16, depth=2, progress=False
    )
    assert set(out["eps_rel_err"]) == {"0.05", "0.2", "0.5"} and out["path"].endswith(".json")
    bed = load_learned_testbed(tmp_path, schedule="rf")
    assert bed.name == "learned:toy" and bed.truth.schedule.name == "rf"
    assert bed.teacher.schedule.name == "rf" and torch.equal(bed.modes, torch.arange(4))
    x, t = torch.randn(3, 2), torch.full((3,), 0.3)
    assert bed.teacher.denoise(x, t).shape == (3, 2)


@pytest.mark.slow
def test_learned_moons_testbed_through_get_testbed(tmp_path: Any) -> None:
    train_learned_teacher("moons", steps=20, out_dir=tmp_path, hidden=16, depth=2, progress=False)
    bed = testbeds.get_testbed(str(tmp_path / "teacher.json"), 0, "trigflow")
    assert bed.name == "learned:moons" and bed.truth.num_components == 16


# ---------------------------------------------------------------------- io
def test_atomic_writes_leave_only_the_target(tmp_path: Any) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    fileio.atomic_write_bytes(target, b"x" * 100_000)
    assert target.read_bytes() == b"x" * 100_000
    fileio.atomic_write_json(tmp_path / "b.json", {"k": [1, 2.5, "é"]})
    assert json.loads((tmp_path / "b.json").read_text(encoding="utf-8")) == {"k": [1, 2.5, "é"]}
    with pytest.raises(ValueError):
        fileio.atomic_write_json(tmp_path / "c.json", {"k": float("nan")})
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_failed_replace_keeps_old_content(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")

    def boom(*args: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        fileio.atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_safetensors_round_trip(tmp_path: Any) -> None:
    tensors = {
        "w": torch.randn(3, 4, dtype=F64).t(),  # non-contiguous on purpose
        "i": torch.arange(5),
        "h": torch.randn(2, dtype=torch.float16),
    }
    path = tmp_path / "m.safetensors"
    fileio.save_safetensors_atomic(tensors, path, metadata={"step": "7"})
    loaded = fileio.load_safetensors(path)
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    assert fileio.read_safetensors_metadata(path) == {"step": "7"}
    with pytest.raises(ValueError, match="metadata"):
        fileio.save_safetensors_atomic(tensors, path, metadata={"step": 7})  # type: ignore
    with pytest.raises(ValueError, match="cannot read"):
        fileio.load_safetensors(tmp_path / "missing.safetensors")
