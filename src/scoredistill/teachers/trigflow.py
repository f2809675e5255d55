"""Any teacher seen at an arbitrary noise level, and in TrigFlow coordinates (sCM).

TrigFlow (Lu & Song 2024, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency
Models", Sec. 2, eq. 4) writes the forward process with the data scale ``sigma_d``:

    x_hat = cos(theta) x_0 + sin(theta) sigma_d z,       z ~ N(0, I),   theta in [0, pi/2]

i.e. the level ``(alpha, sigma) = (cos theta, sigma_d sin theta)``: the VE level (EDM's sigma)
is ``s = sigma / alpha = sigma_d tan theta`` and ``x_hat = cos(theta) x_t / alpha_t`` for a point
``x_t`` of any schedule at the same SNR. The probability-flow ODE (eq. 4) in these coordinates is

    d x_hat / d theta = sigma_d F* = (cos(theta) x_hat - D) / sin(theta)                 (D form)
                      = -tan(theta) (x_hat + sigma_d^2 grad log p_theta(x_hat))     (score form)

with ``D = E[x_0 | x_hat]`` (the two agree by Tweedie, ``D = (x_hat + sigma^2 score) / alpha``).
The D form is 0/0 at theta = 0 and the score form 0 * inf at theta = pi/2; ``trigflow_velocity``
uses the score form below pi/4 where the teacher has an exact score (the Gaussian mixture), so
the flow is exact and finite on the whole closed interval.

``sigma_d`` is a free parameter of the coordinates; the flow map does not depend on it. sCM takes
the data std (0.5 for images in [-1, 1]); ``mixture_sigma_data`` gives it exactly for a mixture:
``sqrt(tr Cov[x_0] / D)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..schedules import t_from_log_snr
from .analytic import GaussianMixtureTeacher

__all__ = [
    "LevelFn",
    "level_denoiser",
    "level_score",
    "mixture_sigma_data",
    "theta_from_level",
    "trigflow_velocity",
]

LevelFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
_SCORE_BELOW = math.pi / 4  # switch from the D form to the score form of the velocity


def mixture_sigma_data(truth: GaussianMixtureTeacher) -> float:
    """The data std of a mixture, ``sqrt(tr Cov[x_0] / D)`` (EDM's and sCM's scalar sigma_data):
    ``Cov = sum_k pi_k (Sigma_k + mu_k mu_k^T) - mu mu^T``, its trace from the eigenvalues."""
    w, mu = truth.weights, truth.means
    mean = w @ mu
    second = w @ (truth.eigvals.sum(1) + (mu**2).sum(1))
    return math.sqrt(float(second - (mean**2).sum()) / truth.dim)


def theta_from_level(sigma_ve: Tensor, sigma_d: float) -> Tensor:
    """TrigFlow angle of the VE level ``s = sigma / alpha``: ``theta = atan(s / sigma_d)``."""
    return torch.atan(sigma_ve / sigma_d)


def _schedule_point(teacher, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_t, t)`` on ``teacher.schedule`` at the log-SNR of ``(alpha, sigma)`` (bisection)."""
    lam = 2 * (torch.log(alpha) - torch.log(sigma))
    t = t_from_log_snr(teacher.schedule, lam.to(torch.float64)).clamp(
        teacher.schedule.t_min, teacher.schedule.t_max
    )
    a_t, _ = teacher.schedule.alpha_sigma(t)
    return x * (a_t.to(x) / alpha).reshape(-1, *([1] * (x.dim() - 1))), t.to(x.dtype)


def level_denoiser(teacher) -> LevelFn:
    """``D(x, alpha, sigma, cond)`` at any level, ``alpha, sigma: (B,)``, for any teacher: the
    exact mixture answers directly (``denoise_at``); any other teacher is queried at the time of
    its own schedule with the same log-SNR (``x`` rescaled to that schedule's alpha), which needs
    ``0 < sigma`` and ``0 < alpha`` inside the schedule's sampler range."""
    if hasattr(teacher, "denoise_at"):
        return teacher.denoise_at

    def denoise(x: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        x_t, t = _schedule_point(teacher, x, alpha, sigma)
        return teacher.denoise(x_t, t, cond)

    return denoise


def level_score(teacher) -> LevelFn | None:
    """``grad log p(x)`` at any level when the teacher has an exact score (else None)."""
    return teacher.score_at if hasattr(teacher, "score_at") else None


def trigflow_velocity(
    teacher, x_hat: Tensor, theta: Tensor, sigma_d: float, cond: Tensor | None = None
) -> Tensor:
    """``d x_hat / d theta`` of the teacher's probability flow (module docstring), ``x_hat:
    (B, D)``, ``theta: (B,)`` in [0, pi/2] (an exact-score teacher) or (0, pi/2] (others)."""
    cos, sin = torch.cos(theta), torch.sin(theta)
    alpha, sigma = cos.clamp(min=0.0), sigma_d * sin
    score = level_score(teacher)
    low = theta < _SCORE_BELOW
    out = torch.empty_like(x_hat)
    if score is not None and bool(low.any()):
        s = score(x_hat[low], alpha[low], sigma[low], None if cond is None else cond[low])
        out[low] = -torch.tan(theta[low])[:, None] * (x_hat[low] + sigma_d**2 * s)
    rest = ~low if score is not None else torch.ones_like(low)
    if bool(rest.any()):
        if bool((theta[rest] <= 0).any()):
            raise ValueError("theta = 0 needs a teacher with an exact score (score_at)")
        c = None if cond is None else cond[rest]
        d = level_denoiser(teacher)(x_hat[rest], alpha[rest], sigma[rest], c)
        out[rest] = (cos[rest, None] * x_hat[rest] - d) / sin[rest, None]
    return out
