"""diffusers schedulers as library schedules (reference note ``diffusers_integration.md`` §1):
a discrete ᾱ table (DDPM, DDIM, LCM, Euler, …) interpolated in log-SNR, the shifted rectified
flow of ``FlowMatchEulerDiscreteScheduler``, EDM's σ range; each with its trained log-SNR range."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..schedules import EDMSchedule, Schedule, VPTableSchedule, check_t, t_from_log_snr

__all__ = ["DiscreteVPSchedule", "ShiftedFlowSchedule", "native_schedule", "restrict_schedule"]

_ZERO_SNR_VE_MAX = 2.0**12  # Euler's clamp abar = 2^-24 (diffusers PR 6024): the sampler start


@dataclass(frozen=True)
class DiscreteVPSchedule(VPTableSchedule):
    """A diffusers ``alphas_cumprod`` table as a library schedule: ``t = k / (N - 1)``, log-SNR
    interpolated linearly between entries as ``VPTableSchedule`` (note §1.2). On a zero-terminal-SNR
    table (``abar_{N-1} = 0``) alpha is linear on the last segment: invertible, 0 at ``t = 1``."""

    name: str = "diffusers-vp"
    betas: str = "table"
    alphas_cumprod: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        abar = torch.tensor(self.alphas_cumprod, dtype=torch.float64)  # n entries
        object.__setattr__(self, "_lam", torch.log(abar) - torch.log1p(-abar))
        object.__setattr__(self, "zero_snr", bool(abar[-1] == 0))

    def _last_segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(mask, alpha, d alpha/dt)`` on the zero-SNR segment (mask all False otherwise), alpha
        linear in k; the mask includes k = N - 2, where VPTableSchedule's lambda is 0·(-inf)."""
        k = t.to(torch.float64) * (self.n - 1)
        a_prev = torch.sigmoid(self._lam[-2]).sqrt().to(t.device)
        last = (k >= self.n - 2) & self.zero_snr
        return last, a_prev * (self.n - 1 - k), -a_prev * (self.n - 1)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a, s = super().alpha_sigma(t)
        last, a_lin, _ = self._last_segment(t)
        s_lin = (1 - a_lin**2).sqrt()
        return torch.where(last, a_lin.to(t.dtype), a), torch.where(last, s_lin.to(t.dtype), s)

    def alpha_sigma_deriv(self, t: Tensor) -> tuple[Tensor, Tensor]:
        da, ds = super().alpha_sigma_deriv(t)
        last, a_lin, da_lin = self._last_segment(t)
        ds_lin = (-a_lin * da_lin / (1 - a_lin**2).sqrt()).to(t.dtype)
        return torch.where(last, da_lin.to(t.dtype), da), torch.where(last, ds_lin, ds)

    def index_from_log_snr(self, lam: Tensor) -> Tensor:
        """The fractional index ``k`` whose interpolated log-SNR is ``lam`` (float64, clamped to
        the table); the exact inverse of ``alpha_sigma`` (diffusers' ``_sigma_to_t``, §1.2)."""
        table, n = self._lam.to(lam.device), self.n
        lam = lam.to(torch.float64).clamp(table[-1], table[0])
        i = (torch.searchsorted(-table, -lam) - 1).clamp(0, n - 2)  # table[i] >= lam >= table[i+1]
        frac = ((lam - table[i]) / (table[i + 1] - table[i])).nan_to_num(0.0)
        if self.zero_snr:  # alpha linear on the last segment
            a_prev = torch.sigmoid(table[-2]).sqrt()
            frac = torch.where(i == n - 2, 1 - torch.sigmoid(lam).sqrt() / a_prev, frac)
        return i + frac


@dataclass(frozen=True)
class ShiftedFlowSchedule:
    """Rectified flow with diffusers' static time shift (note §1.4): ``s(t) = k t / (1 + (k-1) t)``,
    ``alpha = 1 - s``, ``sigma = s``. Uniform ``t`` is ``FlowMatchEulerDiscreteScheduler``'s grid;
    ``shift = 1`` is the library's ``rf``. The sampler range ends where sigma/alpha = 80, as rf."""

    shift: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0
    name: str = "flow"
    default_spacing: str = "uniform"

    def t_at(self, ve: float) -> float:
        """The time where ``sigma/alpha = ve`` (``s = ve/(1+ve)``): ``t = ve / (k + ve)``."""
        return ve / (self.shift + ve)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        s = self.shift * t / (1 + (self.shift - 1) * t)
        return 1 - s, s

    def alpha_sigma_deriv(self, t: Tensor) -> tuple[Tensor, Tensor]:
        check_t(t)
        ds = self.shift / (1 + (self.shift - 1) * t) ** 2
        return -ds, ds


def native_schedule(scheduler: Any, family: str) -> tuple[Schedule, float, float]:
    """The scheduler's own library schedule and its trained log-SNR range ``(lo, hi)``."""
    cfg = dict(scheduler.config)
    if family == "vp":
        abar = scheduler.alphas_cumprod.to(torch.float64)
        sched = DiscreteVPSchedule(n=abar.numel(), alphas_cumprod=tuple(abar.tolist()))
        if sched.zero_snr:
            t_max = t_from_log_snr(sched, torch.tensor(-2 * math.log(_ZERO_SNR_VE_MAX)))
            sched = dataclasses.replace(sched, t_max=float(t_max))
        return sched, float(sched._lam[-1]), float(sched._lam[0])
    if family == "edm":
        lo, hi, rho = cfg["sigma_min"], cfg["sigma_max"], cfg.get("rho", 7.0)
        lam_lo, lam_hi = -2 * math.log(hi), -2 * math.log(lo)
        return EDMSchedule(sigma_min=lo, sigma_max=hi, rho=rho), lam_lo, lam_hi
    if cfg.get("invert_sigmas"):
        raise ValueError("invert_sigmas=True is not supported; valid: false")
    s_lo, s_hi, flow = scheduler.sigma_min, scheduler.sigma_max, ShiftedFlowSchedule(cfg["shift"])
    lam = [2 * math.log((1 - s) / s) if s < 1 else -math.inf for s in (s_hi, s_lo)]
    t_min = flow.t_at(max(s_lo / (1 - s_lo), 0.002))  # trained range, or rf's sigma/alpha = 0.002
    return dataclasses.replace(flow, t_min=t_min, t_max=flow.t_at(80.0)), lam[0], lam[1]


def restrict_schedule(schedule: Schedule, lo: float, hi: float) -> Schedule:
    """A copy of ``schedule`` (a dataclass) with ``[t_min, t_max]`` within log-SNR ``[lo, hi]``."""
    t_lo = float(t_from_log_snr(schedule, torch.tensor(hi, dtype=torch.float64)))
    t_hi = float(t_from_log_snr(schedule, torch.tensor(lo, dtype=torch.float64)))
    t_min, t_max = max(schedule.t_min, t_lo), min(schedule.t_max, t_hi)
    return dataclasses.replace(schedule, t_min=t_min, t_max=t_max)
