"""The per-sample conditional Gaussian-mixture teacher: a different exact mixture on every row.

Row ``b`` of a batch carries its own law ``p(x | c_b) = sum_k w_bk N(mu_bk, Sigma_k)``: weights
``(B, K)`` and means ``(B, K, D)`` per row, covariances ``Sigma_k = U_k diag(lam_k) U_k^T`` per
component and shared by all rows. Under ``x_t = alpha x + sigma eps`` (reference note e2, as in
``analytic.py``):

    r_bk(x_t)   ∝ w_bk N(x_t; alpha mu_bk, alpha^2 Sigma_k + sigma^2 I)
    D_b(x_t)    = sum_k r_bk [mu_bk + U_k diag(alpha lam_k / (alpha^2 lam_k + sigma^2)) U_k^T (x_t - alpha mu_bk)]
    score_b     = -sum_k r_bk U_k diag(1 / (alpha^2 lam_k + sigma^2)) U_k^T (x_t - alpha mu_bk)

Why this form: conditioning a full-covariance mixture on some coordinates ``o`` of ``x`` gives
exactly it (Bishop, PRML eq. 2.81-2.82 per component, Bayes for the weights):

    w_k(x_o)    ∝ pi_k N(x_o; mu_k,o, S_k,oo)
    mu_k(x_o)   = mu_k,u + S_k,uo S_k,oo^{-1} (x_o - mu_k,o)
    Sigma_k     = S_k,uu - S_k,uo S_k,oo^{-1} S_k,ou          (independent of x_o)

so the covariances stay per component and only weights and means move with the condition. The
same form holds a Markov chain's next token given the previous one (weights = the transition
row, means = the codebook), and any class- or prompt-indexed table of mixtures.

``PerSampleTeacher`` wraps a builder ``cond -> PerSampleMixture`` as a ``Teacher``: its
``denoise(x_t, t, cond)`` takes a *float* condition tensor ``(B, C)``, not class labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..schedules import Schedule
from .analytic import GaussianMixtureTeacher, MixtureFormatError

__all__ = [
    "CoordinateConditioner",
    "PerSampleMixture",
    "PerSampleTeacher",
    "condition_on_coordinates",
    "repeat_mixture",
]

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class PerSampleMixture:
    """``B`` mixtures of ``K`` components in ``D`` dimensions (see the module docstring).

    ``log_weights: (B, K)`` (``-inf`` removes a component from a row; each row must keep one),
    ``means: (B, K, D)``, ``eigvals: (K, D)`` (> 0), ``eigvecs: (K, D, D)`` or ``None`` (diagonal).
    """

    log_weights: Tensor
    means: Tensor
    eigvals: Tensor
    eigvecs: Tensor | None = None

    def __post_init__(self) -> None:
        if self.means.dim() != 3:
            raise MixtureFormatError(f"means must be (B, K, D), got {tuple(self.means.shape)}")
        b, k, d = self.means.shape
        if self.log_weights.shape != (b, k):
            raise MixtureFormatError(
                f"log_weights must be ({b}, {k}), got {tuple(self.log_weights.shape)}"
            )
        if self.eigvals.shape != (k, d):
            raise MixtureFormatError(f"eigvals must be ({k}, {d}), got {tuple(self.eigvals.shape)}")
        if self.eigvecs is not None and self.eigvecs.shape != (k, d, d):
            raise MixtureFormatError(
                f"eigvecs must be ({k}, {d}, {d}), got {tuple(self.eigvecs.shape)}"
            )

    @property
    def dim(self) -> int:
        return self.means.shape[2]

    def to(self, like: Tensor) -> PerSampleMixture:
        """The same mixtures in ``like``'s dtype and device."""
        vecs = None if self.eigvecs is None else self.eigvecs.to(like)
        return PerSampleMixture(
            self.log_weights.to(like), self.means.to(like), self.eigvals.to(like), vecs
        )

    # ------------------------------------------------------------------ exact quantities
    def _project(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``y = U^T (x - alpha mu)`` and marginal variances, both ``(B, K, D)``."""
        a, s = alpha.to(x).reshape(-1, 1, 1), sigma.to(x).reshape(-1, 1, 1)
        y = x[:, None, :] - a * self.means
        if self.eigvecs is not None:
            y = torch.einsum("kdj,bkd->bkj", self.eigvecs, y)
        return y, a**2 * self.eigvals[None] + s**2

    def _log_joint(self, y: Tensor, var: Tensor) -> Tensor:
        """``(B, K)``: log w_bk + log N(x_t; alpha mu_bk, alpha^2 Sigma_k + sigma^2 I)."""
        log_n = -0.5 * ((y**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * _LOG_2PI)
        return self.log_weights + log_n

    def _back(self, z: Tensor) -> Tensor:
        return z.sum(1) if self.eigvecs is None else torch.einsum("kdj,bkj->bd", self.eigvecs, z)

    def _flat(self, x: Tensor) -> Tensor:
        b = self.means.shape[0]
        if x.shape[0] != b or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x must be ({b}, *D) with prod(D) = {self.dim}, got {tuple(x.shape)}")
        return x.reshape(b, self.dim)

    def denoise_at(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Exact ``E[x | x_t, c_b]`` per row at noise level ``(alpha, sigma)`` (each ``(B,)``)."""
        mix = self.to(x_t)
        x = mix._flat(x_t)
        y, var = mix._project(x, alpha, sigma)
        r = torch.softmax(mix._log_joint(y, var), dim=1)
        coef = alpha.to(x).reshape(-1, 1, 1) * mix.eigvals[None] / var
        out = torch.einsum("bk,bkd->bd", r, mix.means) + mix._back(r[..., None] * coef * y)
        return out.reshape(x_t.shape)

    def score_at(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Exact ``grad_x log p_t(x_t | c_b)`` per row (a separate path from ``denoise_at``)."""
        mix = self.to(x_t)
        y, var = mix._project(mix._flat(x_t), alpha, sigma)
        r = torch.softmax(mix._log_joint(y, var), dim=1)
        return (-mix._back(r[..., None] * y / var)).reshape(x_t.shape)

    def log_prob_at(self, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Exact ``log p_t(x_t | c_b)``, shape ``(B,)``; ``alpha=1, sigma=0`` is the clean law."""
        mix = self.to(x_t)
        y, var = mix._project(mix._flat(x_t), alpha, sigma)
        return torch.logsumexp(mix._log_joint(y, var), dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact clean ``log p(x_b | c_b)``."""
        one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return self.log_prob_at(x, one, torch.zeros_like(one))

    def sample(self, rng: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One exact float64 draw per row: ``(x (B, D), component (B,))``."""
        probs = torch.softmax(self.log_weights.double(), dim=1)
        comp = torch.multinomial(probs, 1, generator=rng).squeeze(1)
        z = torch.randn(len(comp), self.dim, generator=rng, dtype=torch.float64)
        z = z * self.eigvals.double()[comp].sqrt()
        if self.eigvecs is not None:
            z = torch.einsum("bdj,bj->bd", self.eigvecs.double()[comp], z)
        rows = torch.arange(len(comp))
        return self.means.double()[rows, comp] + z, comp


def repeat_mixture(teacher: GaussianMixtureTeacher, n: int) -> PerSampleMixture:
    """``teacher``'s mixture on every one of ``n`` rows (a condition that changes nothing)."""
    k, d = teacher.means.shape
    return PerSampleMixture(
        torch.log(teacher.weights).expand(n, k),
        teacher.means.expand(n, k, d),
        teacher.eigvals,
        teacher.eigvecs,
    )


class CoordinateConditioner:
    """``values -> `` the exact law of the unobserved coordinates given ``x[observed] = values``.

    PRML eq. 2.81-2.82 per component: only the weights and means move with the observed values,
    so the Cholesky factor of ``S_oo``, the regression ``S_uo S_oo^{-1}`` and the conditional
    covariances' eigen-pairs are computed once here; each call costs two batched products.
    The returned mixture lives on the ``D - O`` remaining coordinates, in increasing index order.
    """

    def __init__(self, teacher: GaussianMixtureTeacher, observed: Tensor) -> None:
        d = teacher.dim
        obs = torch.as_tensor(observed, dtype=torch.long).reshape(-1)
        if obs.numel() == 0 or obs.numel() >= d or len(set(obs.tolist())) != obs.numel():
            raise ValueError(f"observed must be 1..{d - 1} distinct indices in [0, {d}), got {obs}")
        if bool(((obs < 0) | (obs >= d)).any()):
            raise ValueError(f"observed indices must lie in [0, {d})")
        keep = torch.ones(d, dtype=torch.bool)
        keep[obs] = False
        un = keep.nonzero().squeeze(1)
        cov = teacher.covariances
        s_uo = cov[:, un][:, :, obs]
        self.chol = torch.linalg.cholesky(cov[:, obs][:, :, obs])  # (K, O, O)
        self.mu_o, self.mu_u = teacher.means[:, obs], teacher.means[:, un]
        half_log_det = torch.log(torch.diagonal(self.chol, dim1=1, dim2=2)).sum(-1)  # (K,)
        self.log_norm = torch.log(teacher.weights) - half_log_det - 0.5 * obs.numel() * _LOG_2PI
        self.s_uo = s_uo
        cond_cov = cov[:, un][:, :, un] - s_uo @ torch.cholesky_solve(
            s_uo.transpose(1, 2), self.chol
        )
        self.eigvals, self.eigvecs = torch.linalg.eigh(0.5 * (cond_cov + cond_cov.transpose(1, 2)))

    def __call__(self, values: Tensor) -> PerSampleMixture:
        """``values: (B, O)`` -> the per-row conditional mixture."""
        vals = values.to(torch.float64).reshape(-1, self.mu_o.shape[1])
        diff = vals[:, None, :] - self.mu_o[None]  # (B, K, O)
        # solve S_oo a = diff for every (b, k): a = (B, K, O)
        sol = torch.cholesky_solve(diff.permute(1, 2, 0), self.chol).permute(2, 0, 1)
        means = self.mu_u[None] + torch.einsum("kuo,bko->bku", self.s_uo, sol)
        logw = self.log_norm[None] - 0.5 * (diff * sol).sum(-1)
        logw = logw - torch.logsumexp(logw, 1, keepdim=True)
        return PerSampleMixture(logw, means, self.eigvals, self.eigvecs)


def condition_on_coordinates(
    teacher: GaussianMixtureTeacher, observed: Tensor, values: Tensor
) -> PerSampleMixture:
    """The exact law of the unobserved coordinates given ``x[observed] = values[b]`` per row.

    ``observed``: ``(O,)`` coordinate indices; ``values``: ``(B, O)``. One call; build a
    :class:`CoordinateConditioner` once to condition many batches on the same coordinates.
    """
    return CoordinateConditioner(teacher, observed)(values)


class PerSampleTeacher:
    """A ``Teacher`` whose condition is a float tensor: ``build(cond) -> PerSampleMixture``.

    ``cond`` is ``(B, C)``; ``num_classes`` is 0 because there are no labels (guidance by label
    dropout does not apply; a method that needs an unconditional branch supplies its own).
    """

    num_classes = 0

    def __init__(
        self, build: Callable[[Tensor], PerSampleMixture], schedule: Schedule, dim: int
    ) -> None:
        self.build, self.schedule, self.dim = build, schedule, dim

    def _mixture(self, cond: Tensor | None) -> PerSampleMixture:
        if cond is None:
            raise ValueError("a per-sample teacher needs its condition tensor (B, C)")
        return self.build(cond)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        return self._mixture(cond).denoise_at(x_t, *self.schedule.alpha_sigma(t))

    def score(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        return self._mixture(cond).score_at(x_t, *self.schedule.alpha_sigma(t))
