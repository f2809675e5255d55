"""Teacher samplers as plain functions of ``(denoise, schedule, x, ts)``.

``ts`` holds the evaluation times, decreasing from ``t_max``. Each sampler steps through them
and, with ``final_denoise=True`` (the default), ends with ``x = D(x, ts[-1])``: the step to clean
data (sigma = 0), which is k-diffusion's last step for every solver. With ``final_denoise=False``
it stops at ``ts[-1]`` and returns ``x_{t_last}`` (used to measure convergence order).

Working coordinates. With ``x~ = x / alpha`` and ``s~ = sigma / alpha`` (the VE view) the
probability-flow ODE reads ``dx~/ds~ = (x~ - D) / s~`` for every schedule (EDM eq. 4), so

- ``ddim``: the exact step for frozen D, ``x~' = D + (s~'/s~)(x~ - D)`` (Song et al. 2021, eq. 12
  with eta = 0) — identical to Euler in ``s~``; first order.
- ``euler``: Euler in the schedule's *own* time ``t`` on ``dx/dt = alpha' D + sigma' eps``
  (the flow velocity). On ``rf`` this coincides with DDIM (the path is straight in t); on VP and
  EDM it does not. First order.
- ``heun``: EDM's Algorithm 1 (2nd order Heun in ``s~``), 2 NFE per step.
- ``dpmpp_2m``: DPM-Solver++(2M), Lu et al. 2022, Algorithm 2 (multistep, data prediction,
  in log-SNR ``h = lambda' - lambda``), 1 NFE per step, second order.
- ``ancestral``: DDIM with ``eta`` (``eta=1`` is DDPM's ancestral posterior sampling):
  ``x_s = alpha_s D + sqrt(sigma_s^2 - c^2) eps + c z`` with
  ``c^2 = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (DDIM eq. 16 written for any alpha, sigma).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from .schedules import Schedule, log_snr, t_from_log_snr

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "ancestral",
    "ddim",
    "dpmpp_2m",
    "euler",
    "heun",
    "nfe_to_steps",
    "sample",
    "time_grid",
]

SPACINGS = ("uniform", "logsnr", "karras")


class Denoise(Protocol):
    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor: ...


def time_grid(schedule: Schedule, n: int, spacing: str | None = None, rho: float = 7.0) -> Tensor:
    """``n`` evaluation times (float64), decreasing from ``t_max`` to ``t_min``.

    ``None`` takes the schedule's ``default_spacing``. ``uniform`` is uniform in the
    schedule's own t (EDM's t is already Karras' rho = 7 grid; VP's is DDIM's "trailing");
    ``logsnr`` is uniform in lambda; ``karras`` is uniform in ``s~^(1/rho)``.
    ``n = 1`` gives ``[t_max]``: one evaluation at the noise end.
    """
    spacing = spacing or schedule.default_spacing
    if n < 1:
        raise ValueError(f"number of steps must be >= 1, got {n}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    ends = torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)
    u = (
        torch.linspace(0, 1, n, dtype=torch.float64)
        if n > 1
        else torch.zeros(1, dtype=torch.float64)
    )
    if spacing == "uniform":
        return ends[0] + u * (ends[1] - ends[0])
    # alpha may vanish at t_max (rf, trigflow): clip the noise end to s~ = 1e4 for these grids
    lam = log_snr(schedule, ends).clamp(min=-2 * math.log(1e4))
    if spacing == "logsnr":
        grid = lam[0] + u * (lam[1] - lam[0])
    else:
        s_ve = torch.exp(-lam / 2) ** (1 / rho)
        grid = -2 * rho * torch.log(s_ve[0] + u * (s_ve[1] - s_ve[0]))
    out = t_from_log_snr(schedule, grid)
    out[0] = ends[0]  # exact ends, whatever the bisection's last digit
    if n > 1:
        out[-1] = ends[1]
    return out


def _at(schedule: Schedule, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(t as (B,), alpha, sigma)``; alpha and sigma as ``(1, 1, ...)`` to broadcast on ``x``."""
    t1 = t.to(x.dtype).reshape(1)
    a, s = schedule.alpha_sigma(t1)
    shape = (1,) * x.dim()
    return t1.expand(x.shape[0]), a.reshape(shape), s.reshape(shape)


def _finish(
    denoise: Denoise, schedule: Schedule, x: Tensor, t: Tensor, cond, final: bool
) -> Tensor:
    if not final:
        return x
    return denoise(x, _at(schedule, t, x)[0], cond)


def ddim(
    denoise: Denoise, schedule: Schedule, x: Tensor, ts: Tensor, cond=None, *, final_denoise=True
):
    """Deterministic DDIM (first order); ``len(ts)`` NFE with the final denoise."""
    for i in range(len(ts) - 1):
        tb, a, s = _at(schedule, ts[i], x)
        _, a2, s2 = _at(schedule, ts[i + 1], x)
        d = denoise(x, tb, cond)
        x = a2 * d + s2 * (x - a * d) / s
    return _finish(denoise, schedule, x, ts[-1], cond, final_denoise)


def euler(
    denoise: Denoise, schedule: Schedule, x: Tensor, ts: Tensor, cond=None, *, final_denoise=True
):
    """Euler on ``dx/dt = alpha' D + sigma' eps`` in the schedule's time; ``len(ts)`` NFE."""
    for i in range(len(ts) - 1):
        tb, a, s = _at(schedule, ts[i], x)
        da, ds = (c.reshape(a.shape) for c in schedule.alpha_sigma_deriv(tb[:1]))
        d = denoise(x, tb, cond)
        x = x + (ts[i + 1] - ts[i]).to(x.dtype) * (da * d + ds * (x - a * d) / s)
    return _finish(denoise, schedule, x, ts[-1], cond, final_denoise)


def heun(
    denoise: Denoise, schedule: Schedule, x: Tensor, ts: Tensor, cond=None, *, final_denoise=True
):
    """EDM Algorithm 1 on the VE view; ``2 len(ts) - 1`` NFE with the final denoise."""
    for i in range(len(ts) - 1):
        tb, a, s = _at(schedule, ts[i], x)
        tb2, a2, s2 = _at(schedule, ts[i + 1], x)
        xv, sv, sv2 = x / a, s / a, s2 / a2
        slope = (xv - denoise(x, tb, cond)) / sv
        xv_pred = xv + (sv2 - sv) * slope
        slope2 = (xv_pred - denoise(a2 * xv_pred, tb2, cond)) / sv2
        x = a2 * (xv + (sv2 - sv) * (slope + slope2) / 2)
    return _finish(denoise, schedule, x, ts[-1], cond, final_denoise)


def dpmpp_2m(
    denoise: Denoise, schedule: Schedule, x: Tensor, ts: Tensor, cond=None, *, final_denoise=True
):
    """DPM-Solver++(2M), Lu et al. 2022 Alg. 2; first order on the first step; ``len(ts)`` NFE."""
    d_prev, h_prev = None, None
    for i in range(len(ts) - 1):
        tb, a, s = _at(schedule, ts[i], x)
        _, a2, s2 = _at(schedule, ts[i + 1], x)
        h = (torch.log(a2 / s2) - torch.log(a / s)).flatten()[0]
        d = denoise(x, tb, cond)
        d_hat = d
        if d_prev is not None and torch.isfinite(h_prev):
            r = h_prev / h
            d_hat = (1 + 1 / (2 * r)) * d - d_prev / (2 * r)
        x = (s2 / s) * x - a2 * torch.expm1(-h) * d_hat
        d_prev, h_prev = d, h
    return _finish(denoise, schedule, x, ts[-1], cond, final_denoise)


def ancestral(
    denoise: Denoise,
    schedule: Schedule,
    x: Tensor,
    ts: Tensor,
    cond=None,
    *,
    final_denoise=True,
    rng: torch.Generator | None = None,
    eta: float = 1.0,
):
    """Stochastic DDIM(eta); ``eta = 1`` is DDPM ancestral sampling. ``len(ts)`` NFE."""
    for i in range(len(ts) - 1):
        tb, a, s = _at(schedule, ts[i], x)
        _, a2, s2 = _at(schedule, ts[i + 1], x)
        d = denoise(x, tb, cond)
        eps = (x - a * d) / s
        var_ts = (s**2 - (a / a2) ** 2 * s2**2).clamp(min=0)  # sigma_{t|s}^2
        c = eta * (var_ts * s2**2 / s**2).sqrt()
        z = torch.randn(x.shape, generator=rng, dtype=x.dtype).to(x.device)
        x = a2 * d + (s2**2 - c**2).clamp(min=0).sqrt() * eps + c * z
    return _finish(denoise, schedule, x, ts[-1], cond, final_denoise)


Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpmpp-2m": dpmpp_2m,
    "ancestral": ancestral,
}


def nfe_to_steps(sampler: str, nfe: int) -> tuple[int, int]:
    """``(number of evaluation times, NFE actually used)`` for an NFE budget.

    Heun spends 2 NFE per step plus 1 for the final denoise, so a budget ``n`` buys
    ``(n + 1) // 2`` times and uses ``2 k - 1`` NFE (1, 3, 7, ..., 63 for 1, 4, 8, ..., 64).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"NFE must be a positive integer, got {nfe!r}")
    if sampler == "heun":
        k = (nfe + 1) // 2
        return k, 2 * k - 1
    return nfe, nfe


def sample(
    teacher,
    sampler: str,
    nfe: int,
    n: int,
    *,
    rng: torch.Generator,
    cond: Tensor | None = None,
    spacing: str | None = None,
    denoise: Denoise | None = None,
    dtype: torch.dtype = torch.float32,
    z: Tensor | None = None,
) -> tuple[Tensor, int]:
    """Draw ``n`` samples ``(n, D)`` from a teacher with ``nfe`` evaluations.

    ``denoise`` overrides ``teacher.denoise`` (e.g. a CFG wrapper); ``spacing`` defaults to the
    schedule's ``default_spacing``. Returns ``(x, nfe_used)``.
    The start is ``x_T = sigma(t_max) z`` (the prior; ``alpha(t_max) mu`` is neglected), with
    ``z: (n, D)`` drawn from ``rng`` unless given (noise/sample pairs for DMD's regression loss).
    """
    steps, used = nfe_to_steps(sampler, nfe)
    schedule = teacher.schedule
    ts = time_grid(schedule, steps, spacing or schedule.default_spacing)
    _, s0 = schedule.alpha_sigma(ts[:1])
    dim = teacher.dim
    if z is None:
        z = torch.randn(n, dim, generator=rng, dtype=dtype)
    x = z.to(dtype) * s0.to(dtype)
    kwargs = {"rng": rng} if sampler == "ancestral" else {}
    return SAMPLERS[sampler](denoise or teacher.denoise, schedule, x, ts, cond, **kwargs), used
