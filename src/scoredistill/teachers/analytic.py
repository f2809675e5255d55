"""The exact Gaussian-mixture teacher: closed-form denoiser, score, log-density and samples.

Data ``p_0 = sum_k pi_k N(mu_k, Sigma_k)`` with ``Sigma_k = U_k diag(lam_k) U_k^T``. Under
``x_t = alpha x + sigma eps`` every marginal is again a mixture (reference note e2):

    p_t(x_t)      = sum_k pi_k N(x_t; alpha mu_k, alpha^2 Sigma_k + sigma^2 I)
    r_k(x_t)      ∝ pi_k N(x_t; alpha mu_k, alpha^2 Sigma_k + sigma^2 I)      (log-sum-exp)
    E[x|x_t, k]   = mu_k + U_k diag(alpha lam_k / (alpha^2 lam_k + sigma^2)) U_k^T (x_t - alpha mu_k)
    D(x_t)        = sum_k r_k E[x|x_t, k]
    score(x_t)    = -sum_k r_k U_k diag(1 / (alpha^2 lam_k + sigma^2)) U_k^T (x_t - alpha mu_k)

The eigenbasis makes every t cost one projection ``U_k^T y`` and one back-projection, whatever
the covariance type. Isotropic and diagonal mixtures skip the projections. The denoiser and the
score are computed by separate code paths so that the identity
``D = (x_t + sigma^2 score) / alpha`` is a real check. A component may carry a class label:
conditioning on class ``c`` restricts (and renormalises) the mixture to that class's
components, so the conditional and unconditional denoisers, and hence CFG, are exact.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..io import read_npz_headers
from ..schedules import Schedule, get_schedule
from .base import NULL_LABEL

__all__ = ["GaussianMixtureTeacher", "MixtureFormatError"]

_LOG_2PI = math.log(2 * math.pi)
MAX_NPZ_BYTES = 2 * 2**30  # a mixture file may decompress to at most 2 GiB (checked first)
_NPZ_KEYS = ("means", "weights", "stds", "covs", "labels")


class MixtureFormatError(UserError):
    """A mixture specification (arrays or ``.npz``) has a missing or mis-shaped entry."""


def _check_npz_headers(path: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Keys, dtypes, shapes and total size of a mixture file, from its headers alone."""
    for key in ("means", "weights"):
        if key not in headers:
            raise MixtureFormatError(f"lacks array {key!r} (has {sorted(headers)})")
    unknown = sorted(set(headers) - set(_NPZ_KEYS))
    if unknown:
        raise MixtureFormatError(f"has unknown arrays {unknown}; valid: {', '.join(_NPZ_KEYS)}")
    for key, (_, dtype) in headers.items():
        kinds = "iu" if key == "labels" else "fiu"
        if dtype.kind not in kinds:
            want = "integers" if key == "labels" else "real numbers"
            raise MixtureFormatError(f"array {key!r} must hold {want}, got dtype {dtype}")
    shape = headers["means"][0]
    if len(shape) != 2:
        raise MixtureFormatError(f"array 'means' must have shape (K, D), got {shape}")
    size = sum(math.prod(s) * max(d.itemsize, 8) for s, d in headers.values())
    if size > MAX_NPZ_BYTES:
        raise MixtureFormatError(
            f"its arrays would take {size / 2**30:.1f} GiB in float64 (K, D = {shape}); "
            f"the limit is {MAX_NPZ_BYTES / 2**30:.0f} GiB"
        )


def _as_f64(name: str, value: np.ndarray | Tensor) -> Tensor:
    t = torch.as_tensor(np.asarray(value), dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise MixtureFormatError(f"array {name!r} contains non-finite values")
    return t


def _eigen_from_spec(k: int, d: int, stds: Tensor | None, covs: Tensor | None):
    """Turn ``stds (K,)``, ``stds (K,D)`` or ``covs (K,D,D)`` into ``(eigvals (K,D), eigvecs|None)``."""
    if (stds is None) == (covs is None):
        raise MixtureFormatError("give exactly one of 'stds' ((K,) or (K,D)) or 'covs' ((K,D,D))")
    if stds is not None:
        if stds.shape == (k,):
            stds = stds[:, None].expand(k, d)
        elif stds.shape != (k, d):
            raise MixtureFormatError(
                f"array 'stds' must have shape ({k},) or ({k}, {d}), got {tuple(stds.shape)}"
            )
        if not bool((stds > 0).all()):
            raise MixtureFormatError("array 'stds' must be strictly positive")
        return stds**2, None
    if covs.shape != (k, d, d):
        raise MixtureFormatError(
            f"array 'covs' must have shape ({k}, {d}, {d}), got {tuple(covs.shape)}"
        )
    if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-8):
        raise MixtureFormatError("array 'covs' must be symmetric")
    eigvals, eigvecs = torch.linalg.eigh(covs)
    if not bool((eigvals > 0).all()):
        raise MixtureFormatError("array 'covs' must be positive definite (an eigenvalue is <= 0)")
    return eigvals, eigvecs


class GaussianMixtureTeacher:
    """Exact teacher for a Gaussian mixture in any dimension.

    Args:
        means: ``(K, D)`` component means.
        weights: ``(K,)`` non-negative mixture weights (normalised here).
        stds: ``(K,)`` isotropic or ``(K, D)`` diagonal standard deviations, or
        covs: ``(K, D, D)`` full covariances (exactly one of ``stds``/``covs``).
        labels: optional ``(K,)`` integer class of each component.
        schedule: the forward process ``t -> (alpha, sigma)`` (a name or a ``Schedule``).

    Inputs may have any trailing shape with ``prod(shape) == D``; outputs keep it. Computation
    runs in the input's dtype (float32 by default, float64 on request).
    """

    def __init__(
        self,
        means: np.ndarray | Tensor,
        weights: np.ndarray | Tensor,
        *,
        stds: np.ndarray | Tensor | None = None,
        covs: np.ndarray | Tensor | None = None,
        labels: np.ndarray | Tensor | None = None,
        schedule: str | Schedule = "edm",
    ) -> None:
        means = _as_f64("means", means)
        if means.dim() != 2:
            raise MixtureFormatError(
                f"array 'means' must have shape (K, D), got {tuple(means.shape)}"
            )
        k, d = means.shape
        weights = _as_f64("weights", weights)
        if weights.shape != (k,):
            raise MixtureFormatError(
                f"array 'weights' must have shape ({k},), got {tuple(weights.shape)}"
            )
        if bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise MixtureFormatError("array 'weights' must be non-negative with a positive sum")
        eigvals, eigvecs = _eigen_from_spec(
            k,
            d,
            None if stds is None else _as_f64("stds", stds),
            None if covs is None else _as_f64("covs", covs),
        )
        self.means, self.eigvals, self.eigvecs = means, eigvals, eigvecs
        self.weights = weights / weights.sum()
        self.labels = self._check_labels(labels, k)
        self.num_classes = 0 if self.labels is None else int(self.labels.max()) + 1
        self.schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, ...]] = {}

    @staticmethod
    def _check_labels(labels: np.ndarray | Tensor | None, k: int) -> Tensor | None:
        if labels is None:
            return None
        arr = np.asarray(labels)
        if arr.shape != (k,) or not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
            raise MixtureFormatError(
                f"array 'labels' must be non-negative integers of shape ({k},), "
                f"got dtype {arr.dtype} shape {arr.shape}"
            )
        missing = sorted(set(range(int(arr.max()) + 1)) - set(arr.tolist()))
        if missing:
            raise MixtureFormatError(
                f"array 'labels' must use every class 0..C-1; no component has {missing}"
            )
        return torch.as_tensor(arr, dtype=torch.long)

    # ------------------------------------------------------------------ properties
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def covariances(self) -> Tensor:
        """``(K, D, D)`` float64 covariances (built on demand)."""
        if self.eigvecs is None:
            return torch.diag_embed(self.eigvals)
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)

    def with_schedule(self, schedule: str | Schedule) -> GaussianMixtureTeacher:
        """The same mixture on another forward process."""
        other = object.__new__(GaussianMixtureTeacher)
        other.__dict__.update(self.__dict__)
        other.schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
        other._cache = {}
        return other

    # ------------------------------------------------------------------ core
    def _params(self, like: Tensor) -> tuple[Tensor, ...]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            vecs = None if self.eigvecs is None else self.eigvecs.to(like)
            labels = None if self.labels is None else self.labels.to(like.device)
            self._cache[key] = (
                self.means.to(like),
                self.eigvals.to(like),
                vecs,
                self.weights.to(like),
                labels,
            )
        return self._cache[key]

    def _flat(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x must be (B, *D) with prod(D) = {self.dim}, got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    def _log_prior(self, cond: Tensor | None, n: int, like: Tensor) -> Tensor:
        """``(B, K)`` log mixture weights, restricted and renormalised to each row's class."""
        _, _, _, w, labels = self._params(like)
        logw = torch.log(w).expand(n, -1)
        if cond is None:
            return logw
        if labels is None:
            raise ValueError("cond was given but this mixture has no class labels")
        cond = cond.to(like.device).long().reshape(n)
        if bool(((cond < NULL_LABEL) | (cond >= self.num_classes)).any()):
            raise ValueError(f"class labels must lie in [-1, {self.num_classes - 1}]")
        keep = (labels[None, :] == cond[:, None]) | (cond[:, None] == NULL_LABEL)
        logw = torch.where(keep, logw, torch.full_like(logw, -math.inf))
        return logw - torch.logsumexp(logw, dim=1, keepdim=True)

    def _project(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Eigen-coordinates ``y = U^T (x - alpha mu)`` and marginal variances, both ``(B, K, D)``."""
        mu, lam, vecs, _, _ = self._params(x)
        a, s = alpha.to(x).reshape(-1, 1, 1), sigma.to(x).reshape(-1, 1, 1)
        y = x[:, None, :] - a * mu[None]
        if vecs is not None:
            y = torch.einsum("kdj,bkd->bkj", vecs, y)
        return y, a**2 * lam[None] + s**2

    def _log_joint(self, y: Tensor, var: Tensor, cond: Tensor | None) -> Tensor:
        """``(B, K)``: log pi_k + log N(x_t; alpha mu_k, alpha^2 Sigma_k + sigma^2 I)."""
        log_n = -0.5 * ((y**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * _LOG_2PI)
        return self._log_prior(cond, y.shape[0], y) + log_n

    def _back(self, z: Tensor) -> Tensor:
        """``sum_k U_k z_k`` for ``z: (B, K, D)`` in eigen-coordinates."""
        vecs = self._params(z)[2]
        return z.sum(1) if vecs is None else torch.einsum("kdj,bkj->bd", vecs, z)

    def _alpha_sigma(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.schedule.alpha_sigma(t)

    # ------------------------------------------------------------------ (alpha, sigma) API
    def denoise_at(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """Exact ``E[x | x_t, cond]`` at noise level ``(alpha, sigma)`` (each ``(B,)``)."""
        x = self._flat(x_t)
        y, var = self._project(x, alpha, sigma)
        r = torch.softmax(self._log_joint(y, var, cond), dim=1)
        mu, lam = self._params(x)[:2]
        coef = alpha.to(x).reshape(-1, 1, 1) * lam[None] / var
        out = r @ mu + self._back(r[..., None] * coef * y)
        return out.reshape(x_t.shape)

    def score_at(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """Exact ``grad_x log p_t(x_t | cond)``."""
        x = self._flat(x_t)
        y, var = self._project(x, alpha, sigma)
        r = torch.softmax(self._log_joint(y, var, cond), dim=1)
        return (-self._back(r[..., None] * y / var)).reshape(x_t.shape)

    def log_prob_at(
        self, x_t: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """Exact ``log p_t(x_t | cond)``, shape ``(B,)``."""
        y, var = self._project(self._flat(x_t), alpha, sigma)
        return torch.logsumexp(self._log_joint(y, var, cond), dim=1)

    # ------------------------------------------------------------------ schedule API
    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``D(x_t, t, cond)``; ``t: (B,)`` (or a scalar) in [0, 1] on this teacher's schedule."""
        return self.denoise_at(x_t, *self._alpha_sigma(t, x_t), cond)

    def score(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Exact score of the noisy marginal at time ``t``."""
        return self.score_at(x_t, *self._alpha_sigma(t, x_t), cond)

    def log_prob(self, x: Tensor, t: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """Exact log-density at time ``t``; ``t=None`` means the clean data distribution."""
        if t is None:
            one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            return self.log_prob_at(x, one, torch.zeros_like(one), cond)
        return self.log_prob_at(x, *self._alpha_sigma(t, x), cond)

    # ------------------------------------------------------------------ data-side helpers
    def component_stats(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """For clean ``x``: ``(log responsibilities (B, K), squared Mahalanobis distances (B, K))``."""
        x = self._flat(x)
        one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        y, var = self._project(x, one, torch.zeros_like(one))
        return torch.log_softmax(self._log_joint(y, var, cond), dim=1), (y**2 / var).sum(-1)

    def class_posterior(self, x: Tensor) -> Tensor:
        """``(B, C)`` exact ``p(class | x)`` for clean ``x`` (needs component labels)."""
        if self.labels is None:
            raise ValueError("this mixture has no class labels")
        resp = self.component_stats(x)[0].exp()
        out = torch.zeros(resp.shape[0], self.num_classes, dtype=resp.dtype, device=resp.device)
        return out.index_add_(1, self.labels.to(resp.device), resp)

    def sample(
        self,
        n: int,
        *,
        rng: torch.Generator | None = None,
        cond: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        return_components: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Exact samples ``(n, D)`` of the data (class ``cond[i]`` for row i when given)."""
        like = torch.empty(0, dtype=torch.float64)
        prior = (
            self._log_prior(cond, n, like).exp() if cond is not None else self.weights.expand(n, -1)
        )
        comp = torch.multinomial(prior, 1, replacement=True, generator=rng).squeeze(1)
        z = torch.randn(n, self.dim, generator=rng, dtype=torch.float64)
        z = z * self.eigvals[comp].sqrt()
        if self.eigvecs is not None:  # one matmul per component: no (n, D, D) temporary
            for k in comp.unique().tolist():
                rows = comp == k
                z[rows] = z[rows] @ self.eigvecs[k].T
        x = (self.means[comp] + z).to(dtype)
        return (x, comp) if return_components else x

    # ------------------------------------------------------------------ files
    @classmethod
    def from_npz(cls, path: str | Path, schedule: str | Schedule = "edm") -> GaussianMixtureTeacher:
        """Load ``means (K,D)``, ``weights (K,)``, one of ``stds``/``covs``, optional ``labels``."""
        path = Path(path)
        try:
            _check_npz_headers(path, read_npz_headers(path))
        except MixtureFormatError as err:
            raise MixtureFormatError(f"mixture file {path} {err}") from None
        except ValueError as err:
            raise MixtureFormatError(f"mixture file: {err}") from None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise MixtureFormatError(
                f"cannot read mixture file {path}: {err} (a truncated or damaged archive?)"
            ) from None
        try:
            return cls(schedule=schedule, **arrays)
        except MixtureFormatError as err:
            raise MixtureFormatError(f"{path}: {err}") from None

    def save_npz(self, path: str | Path) -> None:
        """Write the mixture in the format ``from_npz`` reads (full ``covs`` when rotated)."""
        arrays = {"means": self.means.numpy(), "weights": self.weights.numpy()}
        if self.eigvecs is None:
            arrays["stds"] = self.eigvals.sqrt().numpy()
        else:
            arrays["covs"] = self.covariances.numpy()
        if self.labels is not None:
            arrays["labels"] = self.labels.numpy()
        np.savez(path, **arrays)
