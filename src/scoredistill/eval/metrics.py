"""Sample-quality metrics against an exact Gaussian-mixture data distribution.

Distances between the samples ``x: (N, D)`` and a reference ``y: (M, D)`` (exact data samples):

- ``mmd``: unbiased MMD^2 (U-statistic) of the kernel ``sum_h exp(-|a - b|^2 / (2 h^2))``, with
  ``h`` = median pairwise distance of ``y`` times (0.25, 0.5, 1, 2, 4).
- ``sw2``: sliced Wasserstein-2, ``sqrt(E_theta W2^2(theta.x, theta.y))`` over random unit
  directions; unequal sizes compare the two quantile functions on a common grid.
- ``energy``: ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``, within-set means over distinct pairs.

Mode statistics use the exact clean responsibilities. ``modes: (K,)`` maps component ``k`` to a
mode id (default: each component its own mode); ``pi_m`` is the total weight of mode ``m``.

- Each sample goes to its most responsible component ``k*``. It is *on-mode* if its squared
  Mahalanobis distance to ``k*`` is at most the chi-square(D) 0.999 quantile, else *off-mode*.
- ``mode_coverage``: fraction of the modes with ``pi_m > 0`` whose on-mode count satisfies
  ``n_m >= 0.1 N pi_m``.
- ``mode_tv``: ``(sum_m |n_m / N - pi_m| + n_off / N) / 2``: off-mode mass counts as error.
- ``spread_ratio``: per component ``sqrt(mean d2 / D)`` over the samples assigned to it (argmax,
  no threshold), averaged with the assigned counts as weights. 1 for exact samples, < 1 mode
  seeking, > 1 blur.

Conditional samples (``labels: (N,)`` given and the truth has classes): responsibilities are
those of ``p(k | x, c_i)``, and ``pi_m`` is the expected weight under the samples' labels,
``pi_m = mean_i p(m | c_i)`` with ``p(m | c)`` the within-class weight of mode ``m``. The
reference is drawn with the same labels. ``logp`` is always the unconditional ``log p_0(x)``;
``class_acc`` is the fraction of samples with ``argmax_c p(c | x) == label``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from scipy.stats import chi2
from torch import Tensor

from ..teachers.analytic import GaussianMixtureTeacher
from .metric_docs import METRIC_DOCS

__all__ = [
    "METRIC_DOCS",
    "class_accuracy",
    "default_bandwidths",
    "energy_distance",
    "evaluate",
    "local_bandwidths",
    "mean_logp",
    "mmd_rbf",
    "mode_stats",
    "sliced_w2",
    "testbed_metrics",
]

BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
# issue 15's peer metric (NVIDIA FastGen's 2-D runs as reported there): kernels at 0.01, 0.1, 1 x
# the median squared distance, fine enough to see blur inside a mode
LOCAL_FACTORS = (0.01, 0.1, 1.0)
ON_MODE_QUANTILE = 0.999  # exact samples are off-mode with probability 0.1%
COVERAGE_FRACTION = 0.1  # a mode counts as covered with >= 10% of its expected on-mode count
_BLOCK = 2**19  # pairwise entries per block: 4 MB of float64 stays in cache; 2x faster than 16 MB
_MEDIAN_POINTS = 2048  # subsample for the median distance: ~1/sqrt(2048) = 2% off, ample for h
_MODE_KEYS = ("mode_coverage", "mode_tv", "mode_tv_assigned", "spread_ratio", "within_3std")


def _flat64(name: str, x: Tensor) -> Tensor:
    """``x: (N, *shape)`` as a finite float64 ``(N, D)`` tensor, or a ValueError."""
    x = torch.as_tensor(x)
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be (N, *shape) with N >= 1, got shape {tuple(x.shape)}")
    x = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    bad = int((~torch.isfinite(x)).any(dim=1).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite rows (NaN or inf) out of {x.shape[0]}")
    return x


def _pair_sums(
    a: Tensor, b: Tensor, fns: Sequence[Callable[[Tensor], Tensor]], *, same: bool
) -> list[float]:
    """``sum_ij f(|a_i - b_j|^2)`` per ``f`` (block -> 0-d sum); only ``i != j`` if ``same``.

    With ``same`` (``b`` is ``a``) only the upper block triangle is computed, by symmetry.
    """
    b2 = (b * b).sum(1)
    totals = [a.new_zeros(()) for _ in fns]
    zero = a.new_zeros((1, 1))
    chunk = min(max(_BLOCK // b.shape[0], 64), 1024)  # rows per block; big ops when b is small
    for i0 in range(0, a.shape[0], chunk):
        blk = a[i0 : i0 + chunk]
        rows, j0 = blk.shape[0], i0 if same else 0
        d2 = torch.addmm(b2[None, j0:] + (blk * blk).sum(1)[:, None], blk, b[j0:].T, alpha=-2)
        d2.clamp_min_(0)
        if not same:
            for j, fn in enumerate(fns):
                totals[j] += fn(d2)
            continue
        diag = torch.arange(rows, device=a.device)
        d2[diag, diag] = 0  # exactly, so that f(0) can be taken off
        for j, fn in enumerate(fns):
            # the square block holds both orders of its pairs; those right of it count twice
            totals[j] += fn(d2[:, :rows]) - rows * fn(zero) + 2 * fn(d2[:, rows:])
    return [float(t) for t in totals]


def _pair_inputs(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten, check at least two rows each and equal D, and centre both on ``mean(y)``."""
    x, y = _flat64("x", x), _flat64("y", y)
    if x.shape[1] != y.shape[1] or min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f"x and y must be (>=2, D) with equal D, got {x.shape} and {y.shape}")
    # the |a|^2 + |b|^2 - 2ab expansion loses precision far from the origin; both are invariant
    centre = y.mean(0)
    return x - centre, y - centre


def _rbf_sum(bandwidths: Sequence[float]) -> Callable[[Tensor], Tensor]:
    if len(bandwidths) == 0 or min(bandwidths) <= 0:
        raise ValueError(f"bandwidths must be non-empty and positive, got {list(bandwidths)}")
    gammas = [-0.5 / float(h) ** 2 for h in bandwidths]

    def kernel_sum(d2: Tensor) -> Tensor:
        return sum(torch.exp(d2 * g).sum() for g in gammas)

    return kernel_sum


def _dist_sum(d2: Tensor) -> Tensor:
    return d2.sqrt().sum()


def _two_sample(x: Tensor, y: Tensor, fns: Sequence[Callable[[Tensor], Tensor]]) -> list[float]:
    """For each pair statistic f: ``(E f(X, X'), E f(Y, Y'), E f(X, Y))``, distinct pairs within."""
    x, y = _pair_inputs(x, y)
    n, m = x.shape[0], y.shape[0]
    sxx = _pair_sums(x, x, fns, same=True)
    syy = _pair_sums(y, y, fns, same=True)
    sxy = _pair_sums(x, y, fns, same=False)
    return [
        (a / (n * (n - 1)), b / (m * (m - 1)), c / (n * m))
        for a, b, c in zip(sxx, syy, sxy, strict=True)
    ]


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: Sequence[float]) -> float:
    """Unbiased MMD^2 between ``x: (N, *D)`` and ``y: (M, *D)`` with a sum of RBF kernels."""
    kxx, kyy, kxy = _two_sample(x, y, [_rbf_sum(bandwidths)])[0]
    return kxx + kyy - 2 * kxy


def energy_distance(x: Tensor, y: Tensor) -> float:
    """``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with within-set means over distinct pairs."""
    exx, eyy, exy = _two_sample(x, y, [_dist_sum])[0]
    return 2 * exy - exx - eyy


def _mmds_and_energy(
    x: Tensor, y: Tensor, bandwidth_sets: Sequence[Sequence[float]]
) -> tuple[list[float], float]:
    """``mmd_rbf`` per bandwidth set and ``energy_distance``, from one pass over the pairs."""
    *kernels, (exx, eyy, exy) = _two_sample(
        x, y, [*(_rbf_sum(b) for b in bandwidth_sets), _dist_sum]
    )
    return [kxx + kyy - 2 * kxy for kxx, kyy, kxy in kernels], 2 * exy - exx - eyy


def default_bandwidths(y: Tensor) -> list[float]:
    """Median pairwise distance of the reference ``y`` times (0.25, 0.5, 1, 2, 4).

    Above 2048 rows the median comes from a fixed (seed 0) subsample of 2048 rows.
    """
    return [_median_distance(y) * f for f in BANDWIDTH_FACTORS]


def local_bandwidths(y: Tensor) -> list[float]:
    """``h`` with ``2 h^2 = c m`` for ``c`` in ``LOCAL_FACTORS`` (``m``: the median squared
    pairwise distance of ``y``), so that the RBF kernels are ``exp(-d^2 / (c m))``."""
    med = _median_distance(y)
    return [med * (c / 2) ** 0.5 for c in LOCAL_FACTORS]


def _median_distance(y: Tensor) -> float:
    y = _flat64("y", y)
    if y.shape[0] > _MEDIAN_POINTS:
        gen = torch.Generator().manual_seed(0)
        y = y[torch.randperm(y.shape[0], generator=gen)[:_MEDIAN_POINTS].to(y.device)]
    if y.shape[0] < 2:
        raise ValueError("y needs at least 2 rows for a median pairwise distance")
    med = float(torch.pdist(y).median())
    if med <= 0:
        raise ValueError("the median pairwise distance of y is 0 (most rows coincide)")
    return med


def _quantiles(sorted_vals: Tensor, size: int) -> Tensor:
    """Empirical quantile functions ``(P, n)`` at levels ``(i + 0.5) / size`` -> ``(P, size)``.

    Order statistic ``j`` sits at level ``(j + 0.5) / n``, linearly interpolated in between.
    """
    n = sorted_vals.shape[1]
    if n == size:
        return sorted_vals
    levels = (torch.arange(size, dtype=sorted_vals.dtype, device=sorted_vals.device) + 0.5) / size
    pos = (levels * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = pos - lo
    return sorted_vals[:, lo] * (1 - frac) + sorted_vals[:, hi] * frac


def sliced_w2(x: Tensor, y: Tensor, *, n_proj: int = 256, seed: int = 0) -> float:
    """``sqrt(mean_theta W2^2)`` of the 1-D projections on ``n_proj`` seeded unit directions."""
    x, y = _flat64("x", x), _flat64("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have equal D, got {x.shape} and {y.shape}")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_proj, x.shape[1], generator=gen, dtype=torch.float64)
    theta = (theta / theta.norm(dim=1, keepdim=True)).to(x.device)
    px, py = (theta @ x.T).sort(dim=1).values, (theta @ y.T).sort(dim=1).values  # (P, N), (P, M)
    size = max(x.shape[0], y.shape[0])
    w2 = ((_quantiles(px, size) - _quantiles(py, size)) ** 2).mean(1)
    return float(w2.mean().sqrt())


def _check_modes(
    truth: GaussianMixtureTeacher, modes: Tensor | None, device: torch.device
) -> Tensor:
    """``modes: (K,)`` as a long tensor on ``device``; ``arange(K)`` when None."""
    k = truth.num_components
    if modes is None:
        return torch.arange(k, device=device)
    modes = torch.as_tensor(modes)
    if modes.shape != (k,) or modes.dtype.is_floating_point or bool((modes < 0).any()):
        raise ValueError(
            f"modes must be non-negative integers of shape ({k},), got {modes.dtype} {modes.shape}"
        )
    return modes.long().to(device)


def _cond_labels(truth: GaussianMixtureTeacher, labels: Tensor | None, n: int) -> Tensor | None:
    """Labels ``(N,)`` checked against the truth, or None when either side is unconditional."""
    if labels is None or truth.num_classes == 0:
        return None
    labels = torch.as_tensor(labels)
    c = truth.num_classes
    if labels.shape != (n,) or labels.dtype.is_floating_point:
        raise ValueError(
            f"labels must be integers of shape ({n},), got {labels.dtype} {tuple(labels.shape)}"
        )
    if bool(((labels < 0) | (labels >= c)).any()):
        raise ValueError(f"labels must lie in [0, {c - 1}] (the truth's classes)")
    return labels.long()


def _mode_weights(truth: GaussianMixtureTeacher, modes: Tensor, labels: Tensor | None) -> Tensor:
    """``pi_m``: mode weights, or their mean over the samples' labels ``mean_i p(m | c_i)``."""
    w = truth.weights.to(modes.device)
    if labels is not None:
        comp_cls = truth.labels.to(modes.device)
        class_w = torch.zeros(truth.num_classes, dtype=w.dtype, device=w.device)
        class_w.index_add_(0, comp_cls, w)
        freq = torch.bincount(labels.to(modes.device), minlength=truth.num_classes) / len(labels)
        w = freq[comp_cls] * w / class_w[comp_cls].clamp_min(torch.finfo(w.dtype).tiny)
    pi = torch.zeros(int(modes.max()) + 1, dtype=w.dtype, device=w.device)
    return pi.index_add_(0, modes, w)


def _spread_ratio(comp: Tensor, d2: Tensor, k: int, dim: int) -> float:
    """Count-weighted mean over components of ``sqrt(mean d2 / D)`` of their assigned samples."""
    count = torch.bincount(comp, minlength=k).to(d2)
    sums = torch.zeros(k, dtype=d2.dtype, device=d2.device).index_add_(0, comp, d2)
    used = count > 0
    ratio = (sums[used] / count[used] / dim).sqrt()
    return float((count[used] * ratio).sum() / count[used].sum())


def mode_stats(
    truth: GaussianMixtureTeacher,
    x: Tensor,
    modes: Tensor | None = None,
    *,
    labels: Tensor | None = None,
) -> dict[str, float]:
    """``mode_coverage``, ``mode_tv``, ``mode_tv_assigned``, ``spread_ratio``, ``off_mode`` and
    ``within_3std`` (``METRIC_DOCS``)."""
    x = _flat64("x", x)
    n, dim = x.shape
    modes = _check_modes(truth, modes, x.device)
    labels = _cond_labels(truth, labels, n)
    log_r, d2_all = truth.component_stats(x, cond=labels)
    comp = log_r.argmax(dim=1)
    d2 = d2_all.gather(1, comp[:, None]).squeeze(1)
    on = d2 <= chi2.ppf(ON_MODE_QUANTILE, dim)
    pi = _mode_weights(truth, modes, labels)
    counts = torch.bincount(modes[comp[on]], minlength=len(pi)).to(pi)
    live = pi > 0
    off = 1.0 - float(on.double().mean())
    assigned = torch.bincount(modes[comp], minlength=len(pi)).to(pi) / n
    return {
        "mode_coverage": float((counts[live] >= COVERAGE_FRACTION * n * pi[live]).double().mean()),
        "mode_tv": 0.5 * (float((counts / n - pi).abs().sum()) + off),
        "mode_tv_assigned": 0.5 * float((assigned - pi).abs().sum()),
        "spread_ratio": _spread_ratio(comp, d2, truth.num_components, dim),
        "off_mode": off,
        "within_3std": float((d2 <= 9.0).double().mean()),
    }


def mean_logp(truth: GaussianMixtureTeacher, x: Tensor) -> float:
    """Mean exact clean log-density ``log p_0(x)`` of ``x: (N, *D)``."""
    return float(truth.log_prob(_flat64("x", x)).mean())


def class_accuracy(truth: GaussianMixtureTeacher, x: Tensor, labels: Tensor) -> float:
    """Fraction of ``x: (N, *D)`` whose exact ``argmax_c p(c | x)`` equals ``labels: (N,)``."""
    x = _flat64("x", x)
    if truth.num_classes == 0:
        raise ValueError("class_accuracy needs a truth with component labels")
    labels = _cond_labels(truth, labels, x.shape[0])
    pred = truth.class_posterior(x).argmax(dim=1)
    return float((pred == labels.to(pred.device)).double().mean())


def _reference(
    truth: GaussianMixtureTeacher,
    x: Tensor,
    labels: Tensor | None,
    reference: Tensor | None,
    n_ref: int | None,
    seed: int,
) -> Tensor:
    """The given reference, or ``n_ref`` exact samples (with the samples' labels if any)."""
    if reference is not None:
        return _flat64("reference", reference).to(x.device)
    n_ref = x.shape[0] if n_ref is None else int(n_ref)
    gen = torch.Generator().manual_seed(seed)
    cond = None if labels is None else labels.cpu()
    if cond is not None and n_ref != len(cond):
        cond = cond[torch.randint(len(cond), (n_ref,), generator=gen)]
    y = truth.sample(n_ref, rng=gen, cond=cond, dtype=torch.float64)
    return y.to(x.device)


def evaluate(
    truth: GaussianMixtureTeacher,
    x: Tensor,
    *,
    modes: Tensor | None = None,
    labels: Tensor | None = None,
    reference: Tensor | None = None,
    n_ref: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Every metric of ``x: (N, *D)`` against ``truth``; keys and meanings in ``METRIC_DOCS``.

    ``labels: (N,)`` are ignored when ``truth`` has no classes. Without ``reference``,
    ``n_ref`` (default N) exact samples are drawn with a generator seeded by ``seed`` (and the
    samples' labels); ``seed`` also picks the sliced-W2 directions. When ``x`` are themselves
    exact samples, draw them with another seed: the same seed reproduces ``x`` as reference.
    """
    x = _flat64("x", x)
    if x.shape[1] != truth.dim:
        raise ValueError(f"x must hold D = {truth.dim} values per row, got {x.shape[1]}")
    cond = _cond_labels(truth, labels, x.shape[0])
    y = _reference(truth, x, cond, reference, n_ref, seed)
    (mmd, mmd_local), energy = _mmds_and_energy(x, y, [default_bandwidths(y), local_bandwidths(y)])
    out = {"mmd": mmd, "mmd_local": mmd_local, "sw2": sliced_w2(x, y, seed=seed)}
    out["energy"] = energy
    stats = mode_stats(truth, x, modes, labels=cond)
    out.update({key: stats[key] for key in _MODE_KEYS})
    out["logp"] = mean_logp(truth, x)
    if cond is not None:
        out["class_acc"] = class_accuracy(truth, x, cond)
    out["n"] = float(x.shape[0])
    return out


def testbed_metrics(
    testbed: Any, x: Tensor, *, labels: Tensor | None = None, seed: int = 0
) -> dict[str, float]:
    """``evaluate`` on a testbed (anything with ``.truth`` and ``.modes``)."""
    return evaluate(testbed.truth, x, modes=testbed.modes, labels=labels, seed=seed)


testbed_metrics.__test__ = False  # type: ignore[attr-defined]  # pytest: not a test, by its name
