"""Named, seeded testbeds whose data distribution is an exact Gaussian mixture.

A testbed bundles what samplers query (``teacher``), the exact data distribution the metrics
use (``truth``: the same object for exact testbeds) and a mode id per mixture component, so that
mode coverage and mode weights can be measured even when several components make up one mode
(``digits``: four components per digit class).

| name             | D  | K   | layout                                                        |
|------------------|----|-----|---------------------------------------------------------------|
| ring8            | 2  | 8   | 8 Gaussians on a ring (r = 2, s = 0.05), equal weights        |
| ring8-unbalanced | 2  | 8   | the same ring, weights ∝ 1..8                                 |
| grid25           | 2  | 25  | 5×5 grid, spacing 1, centred at 0, s = 0.05                   |
| cond2d           | 2  | 8   | 2 classes × 4 modes on a ring (r = 2, s = 0.1), interleaved   |
| gmm16            | 16 | 10  | random separated means, diagonal stds in [0.2, 0.5]           |
| gmm64            | 64 | 10  | random separated means, rotated covariances, eig [0.04, 0.25] |
| moons            | 2  | 16  | full-covariance GMM fitted to standardised two-moons          |
| digits           | 64 | 40  | class-conditional GMM (4 per class) fitted to sklearn digits  |
| views (3-D)      | 3072 | 72 | ring renders of a 3-D object (``teachers.views``)            |

``views`` lives in ``TESTBEDS_3D``, not ``TESTBEDS``: its components are 3072-D images (full
covariances would take gigabytes) and its modes are view sectors, so the generic per-testbed
checks and plots of the mixtures above do not apply to it; ``get_testbed("views")`` finds it.

Builders are deterministic in the seed and cached on ``(seed, schedule)``: the returned objects
are shared, so treat their tensors as read-only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..schedules import get_schedule
from .analytic import GaussianMixtureTeacher
from .neural import load_learned_teacher
from .testbed import Testbed
from .views import clear_views_cache, views_testbed

__all__ = [
    "DIGITS_N_COMPONENTS",
    "DIGITS_REG_COVAR",
    "TESTBEDS",
    "TESTBEDS_3D",
    "Testbed",
    "clear_testbed_cache",
    "fit_class_mixture",
    "get_testbed",
    "list_testbeds",
    "load_digits_data",
]

DIGITS_N_COMPONENTS = 4  # per class (the choice); held-out class accuracy 0.987
DIGITS_REG_COVAR = 0.02  # floor on every eigenvalue (pixel units of [-1, 1]); see _build_digits
_SEPARATION = 6.0  # min pairwise mean distance, in units of the largest component std


def _single_threaded() -> Any:
    """Limit BLAS and OpenMP (torch included) to one thread while building.

    On small matrices, threads only compete: on a busy 2-core machine the batched
    ``torch.linalg.eigh`` of digits' 40 covariances took 2-5 s with two threads and 0.02 s with
    one, and the sklearn fits slowed down likewise.
    """
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    return threadpool_limits(limits=1)


def _builder(fn: Callable[[int, str], Testbed]) -> Callable[[int, str], Testbed]:
    """Cache a builder on ``(seed, schedule)`` and run it single-threaded."""

    @functools.lru_cache(maxsize=16)
    @functools.wraps(fn)
    def build(seed: int, schedule: str) -> Testbed:
        with _single_threaded():
            return fn(seed, schedule)

    return build


def _doc_line(fn: Callable[..., Any]) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0]


def _exact(fn: Callable[..., Any], truth: GaussianMixtureTeacher, name: str, **kw: Any) -> Testbed:
    """Wrap an exact mixture as its own teacher; ``modes`` defaults to one per component."""
    modes = kw.pop("modes", torch.arange(truth.num_components))
    return Testbed(name, truth, truth, modes, kw.pop("image_shape", None), _doc_line(fn))


# ---------------------------------------------------------------------- 2-D layouts
def _ring_means(n: int, radius: float, offset: float = 0.0) -> np.ndarray:
    angles = offset + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


@_builder
def _build_ring8(seed: int, schedule: str) -> Testbed:
    """8 Gaussians on a ring (r=2, s=0.05), equal weights."""
    truth = GaussianMixtureTeacher(
        _ring_means(8, 2.0), np.ones(8), stds=np.full(8, 0.05), schedule=schedule
    )
    return _exact(_build_ring8, truth, "ring8")


@_builder
def _build_ring8_unbalanced(seed: int, schedule: str) -> Testbed:
    """8 Gaussians on a ring (r=2, s=0.05), weights proportional to 1..8."""
    truth = GaussianMixtureTeacher(
        _ring_means(8, 2.0), np.arange(1.0, 9.0), stds=np.full(8, 0.05), schedule=schedule
    )
    return _exact(_build_ring8_unbalanced, truth, "ring8-unbalanced")


@_builder
def _build_grid25(seed: int, schedule: str) -> Testbed:
    """5x5 grid of Gaussians, spacing 1, coordinates -2..2, s=0.05, equal weights."""
    ticks = np.arange(-2.0, 3.0)
    means = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), axis=-1).reshape(25, 2)
    truth = GaussianMixtureTeacher(means, np.ones(25), stds=np.full(25, 0.05), schedule=schedule)
    return _exact(_build_grid25, truth, "grid25")


@_builder
def _build_cond2d(seed: int, schedule: str) -> Testbed:
    """2 classes x 4 modes on a ring (r=2, s=0.1): class 0 at 0/90/180/270 deg, 1 at 45/135/..."""
    means = np.concatenate([_ring_means(4, 2.0), _ring_means(4, 2.0, offset=np.pi / 4)])
    labels = np.repeat(np.arange(2), 4)
    truth = GaussianMixtureTeacher(
        means, np.ones(8), stds=np.full(8, 0.1), labels=labels, schedule=schedule
    )
    return _exact(_build_cond2d, truth, "cond2d")


# ---------------------------------------------------------------------- random mixtures
def _separated_means(
    rng: np.random.Generator, k: int, d: int, min_dist: float, tries: int = 1000
) -> np.ndarray:
    """``(K, D)`` standard-normal means, redrawn until every pair is ``min_dist`` apart."""
    for _ in range(tries):
        means = rng.standard_normal((k, d))
        gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(k, 1)]
        if gaps.min() >= min_dist:
            return means
    raise RuntimeError(
        f"no {k} means in {d}-D with pairwise distance >= {min_dist} in {tries} tries"
    )


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    """Haar-distributed orthogonal ``(D, D)`` (QR with the sign of R's diagonal fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@_builder
def _build_gmm16(seed: int, schedule: str) -> Testbed:
    """16-D, 10 separated modes, diagonal stds in [0.2, 0.5], equal weights."""
    rng = np.random.default_rng(seed)
    stds = rng.uniform(0.2, 0.5, size=(10, 16))
    means = _separated_means(rng, 10, 16, _SEPARATION * stds.max())
    truth = GaussianMixtureTeacher(means, np.ones(10), stds=stds, schedule=schedule)
    return _exact(_build_gmm16, truth, "gmm16")


@_builder
def _build_gmm64(seed: int, schedule: str) -> Testbed:
    """64-D, 10 separated modes, rotated covariances with eigenvalues in [0.04, 0.25]."""
    rng = np.random.default_rng(seed)
    eig = rng.uniform(0.04, 0.25, size=(10, 64))
    rot = np.stack([_random_rotation(rng, 64) for _ in range(10)])
    covs = np.einsum("kij,kj,klj->kil", rot, eig, rot)
    covs = (covs + covs.transpose(0, 2, 1)) / 2  # exact symmetry for the teacher's check
    means = _separated_means(rng, 10, 64, _SEPARATION * math.sqrt(eig.max()))
    truth = GaussianMixtureTeacher(means, np.ones(10), covs=covs, schedule=schedule)
    return _exact(_build_gmm64, truth, "gmm64")


# ---------------------------------------------------------------------- fitted mixtures
@functools.lru_cache(maxsize=4)
def _fit_moons(seed: int) -> GaussianMixtureTeacher:
    from sklearn.datasets import make_moons
    from sklearn.mixture import GaussianMixture

    x, _ = make_moons(n_samples=20000, noise=0.05, random_state=seed)
    x = (x - x.mean(0)) / x.std(0)
    gmm = GaussianMixture(16, covariance_type="full", random_state=seed).fit(x)
    return GaussianMixtureTeacher(gmm.means_, gmm.weights_, covs=_sym(gmm.covariances_))


@_builder
def _build_moons(seed: int, schedule: str) -> Testbed:
    """2-D two-moons (noise 0.05, standardised) as a fitted 16-component full-covariance GMM."""
    return _exact(_build_moons, _fit_moons(seed).with_schedule(schedule), "moons")


def _sym(covs: np.ndarray) -> np.ndarray:
    return (covs + covs.transpose(0, 2, 1)) / 2


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as ``(x (N, 64) in [-1, 1], y (N,))``; pixels 0..16 -> x/8 - 1."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data / 8.0 - 1.0, data.target.astype(np.int64)


def fit_class_mixture(
    x: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    n_components: int = DIGITS_N_COMPONENTS,
    reg_covar: float = DIGITS_REG_COVAR,
) -> GaussianMixtureTeacher:
    """Class-conditional full-covariance GMM: ``n_components`` per class, labelled by class.

    Weights are class frequency × within-class weight, so the unlabelled mixture is the fitted
    data distribution and ``class_posterior`` is the exact Bayes classifier under it.
    """
    from sklearn.mixture import GaussianMixture

    means, covs, weights, labels = [], [], [], []
    with _single_threaded():
        for c in np.unique(y):
            gmm = GaussianMixture(
                n_components, covariance_type="full", reg_covar=reg_covar, random_state=seed
            ).fit(x[y == c])
            means.append(gmm.means_)
            covs.append(_sym(gmm.covariances_))
            weights.append(gmm.weights_ * np.mean(y == c))
            labels.append(np.full(n_components, c))
        return GaussianMixtureTeacher(
            np.concatenate(means),
            np.concatenate(weights),
            covs=np.concatenate(covs),
            labels=np.concatenate(labels),
        )


@functools.lru_cache(maxsize=4)
def _fit_digits(seed: int) -> GaussianMixtureTeacher:
    return fit_class_mixture(*load_digits_data(), seed=seed)


@_builder
def _build_digits(seed: int, schedule: str) -> Testbed:
    """Class-conditional GMM (4 full-covariance components per class) fitted to sklearn digits.

    ``reg_covar`` floors every covariance eigenvalue: border pixels that are constant in the
    data would otherwise get zero variance. Float32/float64 denoisers agree within 4e-6
    relative for every value tried (0.001..0.03), so precision does not bind; 0.02 (std 0.14
    in [-1, 1] units, about one grey level of 17) gives the best held-out log-likelihood
    (6.0 nats vs 3.3 at 0.01 and 4.1 at 0.03) and 0.987 held-out class accuracy (5 splits).
    """
    truth = _fit_digits(seed).with_schedule(schedule)
    modes = truth.labels.clone()
    return _exact(_build_digits, truth, "digits", modes=modes, image_shape=(1, 8, 8))


TESTBEDS: dict[str, Callable[[int, str], Testbed]] = {
    "ring8": _build_ring8,
    "ring8-unbalanced": _build_ring8_unbalanced,
    "grid25": _build_grid25,
    "cond2d": _build_cond2d,
    "gmm16": _build_gmm16,
    "gmm64": _build_gmm64,
    "moons": _build_moons,
    "digits": _build_digits,
}


def _build_views(seed: int, schedule: str) -> Testbed:
    """3-D object, 72 ring views at 32x32: view-biased teacher (exp(4 cos az)) + prompts."""
    return views_testbed(seed, schedule)


TESTBEDS_3D: dict[str, Callable[[int, str], Testbed]] = {"views": _build_views}


# ---------------------------------------------------------------------- lookup
def _from_npz(path: Path, schedule: str) -> Testbed:
    if not path.is_file():
        raise FileNotFoundError(f"mixture file not found: {path}")
    with _single_threaded():
        truth = GaussianMixtureTeacher.from_npz(path, schedule=schedule)
    modes = torch.arange(truth.num_components)
    return Testbed(path.stem, truth, truth, modes, None, f"Gaussian mixture loaded from {path}")


def _from_learned(path: str, schedule: str | None = None) -> Testbed:
    """A ``Testbed`` whose teacher is the learned denoiser and whose truth is the exact mixture.

    ``schedule`` (a name; ``None``: the training one) is set on the denoiser and the truth: the
    net saw the noise level only as ``sigma/alpha``, so its weights are valid on any schedule.
    """
    denoiser, meta = load_learned_teacher(path)
    if schedule is not None:
        denoiser.schedule = get_schedule(schedule)
    name, seed = meta["truth"]["testbed"], meta["truth"]["seed"]
    base = get_testbed(name, seed, denoiser.schedule.name)
    about = f"MLP denoiser trained by DSM on exact samples of {name!r} (seed {seed}) vs its truth"
    return dataclasses.replace(base, name=f"learned:{name}", teacher=denoiser, description=about)


load_learned_testbed = _from_learned  # the public name (teachers.neural's before the split)


def get_testbed(name: str, seed: int = 0, schedule: str = "edm") -> Testbed:
    """A testbed by name (see ``TESTBEDS``), a mixture ``.npz`` path, or a learned-teacher path.

    ``.npz``: ``GaussianMixtureTeacher.from_npz``, one mode per component, name = file stem.
    A directory or a ``.json`` file goes to ``teachers.neural.load_learned_testbed``.
    """
    name = str(name)
    if name in TESTBEDS:
        return TESTBEDS[name](int(seed), schedule)
    if name in TESTBEDS_3D:
        return TESTBEDS_3D[name](int(seed), schedule)
    if name.endswith(".npz"):
        return _from_npz(Path(name), schedule)
    if name.endswith(".json") or Path(name).is_dir():
        return _from_learned(name, schedule)
    raise ValueError(
        f"unknown testbed {name!r}; valid: {', '.join([*TESTBEDS, *TESTBEDS_3D])} "
        "(or a path to a mixture .npz file)"
    )


def clear_testbed_cache() -> None:
    """Forget every cached testbed and fitted mixture (the next build refits)."""
    for build in (*TESTBEDS.values(), _fit_moons, _fit_digits):
        cache_clear = getattr(build, "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
    clear_views_cache()


def list_testbeds() -> list[tuple[str, str]]:
    """``(name, one-line description)`` for every named testbed, without building any."""
    return [(name, _doc_line(build)) for name, build in TESTBEDS.items()]
