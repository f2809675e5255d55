"""Noise schedules: the forward process ``x_t = alpha_t * x + sigma_t * eps`` for t in [0, 1].

Every schedule maps the same continuous time ``t ∈ [0, 1]`` to ``(alpha_t, sigma_t)`` and to
their time derivatives (needed by the flow velocity and by Euler in ``t``). Objectives and
samplers see only ``t`` and ``(alpha, sigma)``; mapping ``t`` to what a network expects (a DDPM
integer step, EDM's ``c_noise``, ``1000 * t``) is an adapter's job.

| name        | alpha(t)                 | sigma(t)                  | notes                          |
|-------------|--------------------------|---------------------------|--------------------------------|
| vp-linear   | sqrt(sigmoid(lambda))    | sqrt(sigmoid(-lambda))    | DDPM beta table 1e-4..0.02,    |
|             |                          |                           | lambda interpolated at k=999t  |
| vp-cosine   | same, squaredcos_cap_v2  |                           | GLIDE cosine table, beta<=0.999|
| vp-scaled-  | same, scaled_linear      |                           | Stable Diffusion's table,      |
|   linear    |                          |                           | sqrt(beta) 0.00085..0.012      |
| edm         | 1                        | Karras rho=7, 0.002..80   | uniform t = Karras' grid       |
| rf          | 1 - t                    | t                         | rectified flow                 |
| trigflow    | cos(pi t / 2)            | sin(pi t / 2)             | sCM's TrigFlow, angle pi t / 2 |

Samplers evaluate between ``t_min`` and ``t_max``. For edm, rf and trigflow these are where
``sigma / alpha`` is EDM's 0.002 and 80 (rf and trigflow reach pure noise, alpha = 0, only at
t = 1, where Heun's VE-view step is undefined); the VP tables use their whole range.

The discrete VP tables follow diffusers (``DDPMScheduler``): index k = 0 is the DDPM paper's
step 1, so ``t = 0`` is slightly noisy (sigma = 0.01 for vp-linear), never clean data.
The log-SNR is interpolated linearly between table entries, which is exact at the integer steps
and is what ``EulerDiscreteScheduler._sigma_to_t`` inverts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "SCHEDULES",
    "EDMSchedule",
    "RectifiedFlowSchedule",
    "Schedule",
    "TrigFlowSchedule",
    "VPTableSchedule",
    "check_t",
    "get_schedule",
    "log_snr",
    "t_from_log_snr",
    "vp_betas",
]


class Schedule(Protocol):
    """A forward process on ``t ∈ [0, 1]``.

    ``t_min``/``t_max`` bound the times a sampler evaluates: between them ``sigma/alpha`` is
    finite and positive. ``default_spacing`` is the sampler time grid that suits it
    (``uniform`` in t, ``karras`` or ``logsnr``; see ``samplers.time_grid``).
    """

    name: str
    t_min: float
    t_max: float
    default_spacing: str

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)`` with the shape and dtype of ``t``."""
        ...

    def alpha_sigma_deriv(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(d alpha / dt, d sigma / dt)`` with the shape and dtype of ``t``."""
        ...


def check_t(t: Tensor, name: str = "t") -> None:
    """Raise ``ValueError`` unless every entry of ``t`` lies in [0, 1] (NaN fails too)."""
    if not torch.is_tensor(t):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    ok = (t >= 0) & (t <= 1)
    if not bool(ok.all()):
        bad = t[~ok].flatten()[0].item()
        raise ValueError(f"{name} must lie in [0, 1] for every schedule; got {bad!r}")


def vp_betas(kind: str, n: int = 1000) -> Tensor:
    """DDPM beta tables as in diffusers' ``DDPMScheduler`` (float64, shape ``(n,)``)."""
    if kind == "linear":
        return torch.linspace(1e-4, 0.02, n, dtype=torch.float64)
    if kind == "scaled_linear":  # Stable Diffusion's scheduler_config: beta 0.00085..0.012
        return torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        s = 0.008  # GLIDE's offset, keeps beta_0 from vanishing

        def abar(u: Tensor) -> Tensor:
            return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        u = torch.arange(n, dtype=torch.float64) / n
        return torch.clamp(1 - abar(u + 1 / n) / abar(u), max=0.999)
    raise ValueError(
        f"unknown beta table {kind!r}; valid: 'linear', 'scaled_linear', 'squaredcos_cap_v2'"
    )


@dataclass(frozen=True)
class VPTableSchedule:
    """Variance-preserving schedule from a discrete DDPM beta table, log-SNR interpolated."""

    name: str
    betas: str = "linear"
    n: int = 1000
    t_min: float = 0.0
    t_max: float = 1.0
    # sigma/alpha spans 0.01..157 (linear) or 0.006..2e4 (cosine): uniform t makes the cosine
    # table's first step span three decades, which Heun cannot integrate. Uniform log-SNR
    # (DPM-Solver's choice for small data) was the most accurate of uniform/karras/logsnr for
    # DDIM, Heun and DPM-Solver++ on a Gaussian at 16 and 64 NFE (docs/architecture.md).
    default_spacing: str = "logsnr"
    _lam: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        abar = torch.cumprod(1 - vp_betas(self.betas, self.n), 0)
        object.__setattr__(self, "_lam", torch.log(abar) - torch.log1p(-abar))

    def _lambda_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        lam = self._lam.to(t.device)
        k = t.to(torch.float64) * (self.n - 1)
        i = torch.clamp(k.floor().long(), 0, self.n - 2)
        slope = lam[i + 1] - lam[i]
        return lam[i] + (k - i) * slope, slope * (self.n - 1)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        lam, _ = self._lambda_and_slope(t)
        return torch.sigmoid(lam).sqrt().to(t.dtype), torch.sigmoid(-lam).sqrt().to(t.dtype)

    def alpha_sigma_deriv(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        lam, dlam = self._lambda_and_slope(t)
        a, s = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        # alpha^2 = sigmoid(lambda)  =>  alpha' = alpha sigma^2 lambda' / 2, sigma' = -sigma alpha^2 lambda' / 2
        return (0.5 * a * s**2 * dlam).to(t.dtype), (-0.5 * s * a**2 * dlam).to(t.dtype)


@dataclass(frozen=True)
class EDMSchedule:
    """EDM / VE: alpha = 1, sigma(t) = (s_min^(1/rho) + t (s_max^(1/rho) - s_min^(1/rho)))^rho."""

    name: str = "edm"
    sigma_min: float = 0.002  # EDM (Karras et al. 2022), Table 1
    sigma_max: float = 80.0  # EDM, Table 1
    rho: float = 7.0  # EDM eq. 5: uniform t is Karras' sampling grid
    t_min: float = 0.0
    t_max: float = 1.0
    default_spacing: str = "uniform"

    def _base(self, t: Tensor) -> tuple[Tensor, float]:
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return lo + t * (hi - lo), hi - lo

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        base, _ = self._base(t)
        return torch.ones_like(t), base**self.rho

    def alpha_sigma_deriv(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        base, span = self._base(t)
        return torch.zeros_like(t), self.rho * base ** (self.rho - 1) * span


@dataclass(frozen=True)
class RectifiedFlowSchedule:
    """Rectified flow: alpha = 1 - t, sigma = t (velocity target eps - x)."""

    name: str = "rf"
    t_min: float = 0.002 / 1.002  # sigma/alpha = 0.002, EDM's sigma_min
    t_max: float = 80 / 81  # sigma/alpha = 80, EDM's sigma_max (t = 1 is pure noise)
    default_spacing: str = "uniform"

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        return 1 - t, t.clone()

    def alpha_sigma_deriv(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        return -torch.ones_like(t), torch.ones_like(t)


@dataclass(frozen=True)
class TrigFlowSchedule:
    """TrigFlow (sCM): alpha = cos(pi t / 2), sigma = sin(pi t / 2)."""

    name: str = "trigflow"
    t_min: float = 2 / math.pi * math.atan(0.002)  # sigma/alpha = 0.002
    t_max: float = 2 / math.pi * math.atan(80.0)  # sigma/alpha = 80, as sCM's sigma_max
    default_spacing: str = "uniform"

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        theta = t * (math.pi / 2)
        # cos(pi/2) is 6e-17 in floating point; t = 1 means pure noise, so make it exact.
        return torch.where(t == 1, torch.zeros_like(t), torch.cos(theta)), torch.sin(theta)

    def alpha_sigma_deriv(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        theta = t * (math.pi / 2)
        return -(math.pi / 2) * torch.sin(theta), (math.pi / 2) * torch.cos(theta)


SCHEDULES: dict[str, Schedule] = {
    "vp-linear": VPTableSchedule("vp-linear", "linear"),
    "vp-cosine": VPTableSchedule("vp-cosine", "squaredcos_cap_v2"),
    # the reference of papers whose timesteps are Stable Diffusion's (SwiftBrush, threestudio)
    "vp-scaled-linear": VPTableSchedule("vp-scaled-linear", "scaled_linear"),
    "edm": EDMSchedule(),
    "rf": RectifiedFlowSchedule(),
    "trigflow": TrigFlowSchedule(),
}


def get_schedule(name: str) -> Schedule:
    """Look a schedule up by name; the error lists the valid names."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}") from None


def log_snr(schedule: Schedule, t: Tensor) -> Tensor:
    """``lambda = log(alpha^2 / sigma^2)``; +inf where sigma = 0, -inf where alpha = 0."""
    a, s = schedule.alpha_sigma(t)
    return 2 * (torch.log(a) - torch.log(s))


def t_from_log_snr(schedule: Schedule, lam: Tensor, iters: int = 60) -> Tensor:
    """Invert ``log_snr`` by bisection on [0, 1] (lambda decreases strictly in t)."""
    lo = torch.zeros_like(lam, dtype=torch.float64)
    hi = torch.ones_like(lam, dtype=torch.float64)
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = log_snr(schedule, mid) > lam.to(torch.float64)
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return ((lo + hi) / 2).to(lam.dtype)
