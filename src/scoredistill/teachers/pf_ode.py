"""The exact probability-flow map of a teacher, ``Phi(x_t, t -> s)``, and its consistency function.

The PF-ODE (Song et al. 2021, eq. 13; EDM eq. 4) is integrated in TrigFlow coordinates
(``teachers.trigflow``: ``x_hat = cos(theta) x_t / alpha_t``, ``sigma_d tan(theta) = sigma_t /
alpha_t``), where ``d x_hat / d theta`` is bounded on the closed interval ``[0, pi/2]`` when
``sigma_d`` is the data std: the state keeps the scale of the data at every noise level, the
velocity has no ``1/sigma`` blow-up near clean data (score form) and no ``x/sigma`` growth near
pure noise. In the VE view or in log-SNR the same flow spans ``sigma in [0.002, 80]`` and
stretches the state by 40 000x.

Solver: Dormand-Prince RK5(4) with FSAL and the standard step-size controller (Hairer, Norsett &
Wanner, "Solving ODEs I", Sec. II.4-5; the scipy/torchdiffeq ``dopri5``). Why: the exact
denoiser is smooth, so a 5th-order adaptive method reaches 1e-9 in tens of steps, and error
control, unlike a fixed grid, finds the short time scale near clean data that sharp modes
(std 0.05) create. The batch is vectorised by integrating every sample over its own interval
``[theta_0, theta_1]`` in one shared normalised time ``tau in [0, 1]``; the step is accepted when
the worst sample's error is within ``atol + rtol |x|`` (RMS over dimensions). Everything runs in
float64.

``consistency_function(teacher, x_t, t)`` is ``Phi(x_t, t -> sigma = 0)``: the clean end of the
trajectory through ``x_t`` (Song et al. 2023, "Consistency Models", Def. of f), so
``f(Phi(x_t, t -> s), s) = f(x_t, t)`` holds to solver tolerance (``tests/test_pf_ode.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import check_t
from .trigflow import level_score, mixture_sigma_data, theta_from_level, trigflow_velocity

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "consistency_function",
    "consistency_function_ve",
    "dopri5",
    "pf_ode_map",
    "pf_ode_map_ve",
    "trigflow_map",
]

DEFAULT_RTOL = 1e-9  # local tolerance; the global error is ~10x it (tests/test_pf_ode.py)
DEFAULT_ATOL = 1e-9
MAX_STEPS = 20_000  # far above the ~100 steps a testbed mixture needs at 1e-9

# Dormand-Prince 5(4) tableau (Dormand & Prince 1980), FSAL: the 7th stage is at tau + h
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)  # the 5th-order weights are the last row (FSAL)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


def _error_ratio(err: Tensor, x0: Tensor, x1: Tensor, rtol: float, atol: float) -> float:
    """Worst sample's RMS of ``err / (atol + rtol max(|x0|, |x1|))``: accept the step if <= 1."""
    scale = atol + rtol * torch.maximum(x0.abs(), x1.abs())
    return float(((err / scale) ** 2).mean(1).sqrt().max())


def dopri5(f, x: Tensor, *, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> Tensor:
    """Integrate ``dx/dtau = f(x, tau)`` from ``tau = 0`` to 1, ``x: (B, D)``, ``tau`` a float
    shared by the batch; adaptive step with the error of the embedded 4th-order solution."""
    tau, h, k1 = 0.0, 0.05, f(x, 0.0)
    for _ in range(MAX_STEPS):
        if tau >= 1.0 - 1e-12:
            return x
        h = min(h, 1.0 - tau)
        ks = [k1]
        for i in range(1, 7):
            xi = x + h * sum(a * k for a, k in zip(_A[i], ks, strict=False) if a != 0.0)
            ks.append(f(xi, tau + _C[i] * h))
        x_new = xi  # the 6th row of A is the 5th-order solution (FSAL)
        err = h * sum(e * k for e, k in zip(_E, ks, strict=True) if e != 0.0)
        ratio = _error_ratio(err, x, x_new, rtol, atol)
        if ratio <= 1.0:
            tau, x, k1 = tau + h, x_new, ks[6]
        # the controller of Hairer et al. (II.4.13): safety 0.9, factor within [0.2, 5]
        h *= min(5.0, max(0.2, 0.9 * max(ratio, 1e-10) ** -0.2))
    raise RuntimeError(f"dopri5: no convergence in {MAX_STEPS} steps (rtol={rtol}, atol={atol})")


def trigflow_map(
    teacher,
    x_hat: Tensor,
    theta: Tensor,
    theta_to: Tensor,
    *,
    sigma_d: float,
    cond: Tensor | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> Tensor:
    """The flow in TrigFlow coordinates: ``x_hat: (B, D)`` at ``theta: (B,)`` to ``theta_to``."""
    x64 = x_hat.reshape(x_hat.shape[0], -1).to(torch.float64)
    th0, th1 = theta.to(x64).expand(len(x64)), theta_to.to(x64).expand(len(x64))
    span = th1 - th0

    def velocity(x: Tensor, tau: float) -> Tensor:
        return span[:, None] * trigflow_velocity(teacher, x, th0 + tau * span, sigma_d, cond)

    return dopri5(velocity, x64, rtol=rtol, atol=atol).to(x_hat.dtype).reshape(x_hat.shape)


def _sigma_d(teacher, sigma_d: float | None) -> float:
    """The coordinates' scale: given, else the mixture's data std, else 1."""
    if sigma_d is not None:
        return float(sigma_d)
    return mixture_sigma_data(teacher) if hasattr(teacher, "eigvals") else 1.0


def pf_ode_map_ve(
    teacher,
    x_ve: Tensor,
    s_from: Tensor,
    s_to: Tensor,
    *,
    cond: Tensor | None = None,
    sigma_d: float | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> Tensor:
    """``Phi`` in the VE view: ``x_ve = x_t / alpha_t: (B, D)`` at level ``s_from = sigma/alpha``
    ``(B,)`` to ``s_to`` (``s_to = 0``: clean data, for teachers with an exact score)."""
    sd = _sigma_d(teacher, sigma_d)
    x = x_ve.to(torch.float64)
    th0 = theta_from_level(s_from.to(x), sd).expand(len(x))
    th1 = theta_from_level(s_to.to(x), sd).expand(len(x))
    if level_score(teacher) is None and bool((th1 <= 0).any()):
        raise ValueError("mapping to sigma = 0 needs a teacher with an exact score (score_at)")
    x_hat = torch.cos(th0)[:, None] * x.reshape(len(x), -1)
    out = trigflow_map(teacher, x_hat, th0, th1, sigma_d=sd, cond=cond, rtol=rtol, atol=atol)
    return (out / torch.cos(th1)[:, None]).reshape(x_ve.shape).to(x_ve.dtype)


def pf_ode_map(
    teacher,
    x_t: Tensor,
    t: Tensor,
    s: Tensor,
    *,
    cond: Tensor | None = None,
    sigma_d: float | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> Tensor:
    """``Phi(x_t, t -> s)`` on ``teacher.schedule``: ``x_t: (B, D)``, ``t, s: (B,)`` (or
    scalars) in [0, 1], forward (``s > t``) or backward in time; returns ``x_s: (B, D)``."""
    t64 = torch.as_tensor(t, dtype=torch.float64).expand(len(x_t))
    s64 = torch.as_tensor(s, dtype=torch.float64).expand(len(x_t))
    check_t(t64, "t")
    check_t(s64, "s")
    a_t, sg_t = teacher.schedule.alpha_sigma(t64)
    a_s, sg_s = teacher.schedule.alpha_sigma(s64)
    if bool((a_t <= 0).any() | (a_s <= 0).any()):
        raise ValueError("the PF-ODE map needs alpha > 0 at both ends (t < 1 on rf/trigflow)")
    x_ve = x_t.to(torch.float64) / a_t[:, None]
    out = pf_ode_map_ve(
        teacher, x_ve, sg_t / a_t, sg_s / a_s, cond=cond, sigma_d=sigma_d, rtol=rtol, atol=atol
    )
    return (a_s[:, None] * out).to(x_t.dtype)


def consistency_function_ve(
    teacher, x_ve: Tensor, s: Tensor, *, cond: Tensor | None = None, **kw
) -> Tensor:
    """The exact consistency function in the VE view: ``Phi(x_ve, s -> 0)``."""
    return pf_ode_map_ve(teacher, x_ve, s, torch.zeros_like(s), cond=cond, **kw)


def consistency_function(
    teacher, x_t: Tensor, t: Tensor, *, cond: Tensor | None = None, **kw
) -> Tensor:
    """The exact consistency function ``f*(x_t, t)``: the clean end (sigma = 0, alpha = 1) of the
    teacher's PF-ODE trajectory through ``x_t`` at time ``t`` of ``teacher.schedule``."""
    t64 = torch.as_tensor(t, dtype=torch.float64).expand(len(x_t))
    check_t(t64, "t")
    a_t, sg_t = teacher.schedule.alpha_sigma(t64)
    x_ve = x_t.to(torch.float64) / a_t[:, None]
    return consistency_function_ve(teacher, x_ve, sg_t / a_t, cond=cond, **kw).to(x_t.dtype)
