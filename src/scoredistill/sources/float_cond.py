"""Networks conditioned on a float vector ``c: (B, C)`` (e.g. the observed half of a digit).

The class-label sources (``OneStepGenerator``, ``MLPDenoiserNet``) embed integer labels; a
completion task conditions on observed values instead, so ``c`` is concatenated to the input.

- ``FloatCondGenerator``: ``x = G(z, c)``, a SiLU MLP on ``[z, c]`` (NFE 1), output scaled at
  construction so that initial samples are about ``N(0, 0.1^2)`` as ``OneStepGenerator``'s. With
  a ``base`` teacher it starts as the teacher evaluated once at the VE level ``sigma_init``
  (``TeacherInitGenerator``'s rule for an exact teacher, which has no weights to copy):
  ``G(z, c) = D_T(alpha sigma_init z, t_init, c) + MLP(z, c)``, the MLP's output layer at zero.
- ``FloatCondDenoiserNet``: ``F(x_in, c_noise, c)`` for ``teachers.neural.NeuralDenoiser`` (EDM
  preconditioning), Fourier features of ``c_noise`` as ``MLPDenoiserNet``; the output layer
  starts at zero, so the untrained critic is the exact denoiser of ``N(0, sigma_data^2 I)``.
- ``TeacherResidualDenoiser``: ``D_T(x_t, t, c) + c_out(s) F(x_in, c_noise, c)``, a fake score
  that starts exactly at an exact teacher (DMD/DMD2 copy the teacher's weights into the fake).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schedules import t_from_log_snr

__all__ = ["FloatCondDenoiserNet", "FloatCondGenerator", "TeacherResidualDenoiser"]

_FOURIER = 16  # noise-level frequencies, as teachers/mlp.py
_OUT_INIT_STD = 0.1  # initial sample std per dimension, as sources/generators.py


def _check(**sizes: int) -> None:
    if min(sizes.values()) < 1:
        raise ValueError(f"sizes must be >= 1, got {sizes}")


class _Trunk(nn.Module):
    """``depth`` SiLU layers of width ``hidden`` on an input of ``n_in`` features."""

    def __init__(self, n_in: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))

    def forward(self, h: Tensor) -> Tensor:
        h = self.inp(h)
        for layer in self.layers:
            h = layer(F.silu(h))
        return F.silu(h)


class FloatCondGenerator(nn.Module):
    """``x = G(z, c)``: ``z: (B, dim)``, ``c: (B, cond_dim)`` -> ``x: (B, dim)`` (module doc)."""

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        *,
        hidden: int = 256,
        depth: int = 3,
        base=None,
        sigma_init: float = 2.5,  # SiD's VE level (reference note b4), as TeacherInitGenerator
    ) -> None:
        super().__init__()
        _check(dim=dim, cond_dim=cond_dim, hidden=hidden, depth=depth)
        self.dim, self.cond_dim, self.nfe, self.base = dim, cond_dim, 1, base
        self.trunk = _Trunk(dim + cond_dim, hidden, depth)
        self.out = nn.Linear(hidden, dim)
        if base is not None:
            lam = torch.tensor(-2.0 * math.log(sigma_init), dtype=torch.float64)
            self.t_init = float(t_from_log_snr(base.schedule, lam))
            self.sigma_init = sigma_init
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            return
        with torch.no_grad():  # measured on a fixed local seed; the global RNG is untouched
            rng = torch.Generator().manual_seed(0)
            z = torch.randn(1024, dim, generator=rng)
            c = torch.randn(1024, cond_dim, generator=rng)
            self.out.weight.mul_(_OUT_INIT_STD / max(self(z, c).std(0).mean().item(), 1e-12))
            self.out.bias.sub_(self(z, c).mean(0))

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        n = z.shape[0]
        z = z.reshape(n, self.dim)
        h = torch.cat([z, cond.to(z.dtype).reshape(n, self.cond_dim)], 1)
        x = self.out(self.trunk(h))
        if self.base is None:
            return x
        t = torch.full((n,), self.t_init, dtype=z.dtype)
        alpha, _ = self.base.schedule.alpha_sigma(t)
        with torch.no_grad():
            start = self.base.denoise(alpha[:, None] * self.sigma_init * z, t, cond)
        return start.to(x.dtype) + x


class FloatCondDenoiserNet(nn.Module):
    """``F(x_in: (B, dim), c_noise: (B,), cond: (B, cond_dim)) -> (B, dim)``."""

    def __init__(self, dim: int, cond_dim: int, *, hidden: int = 256, depth: int = 4) -> None:
        super().__init__()
        _check(dim=dim, cond_dim=cond_dim, hidden=hidden, depth=depth)
        self.dim, self.cond_dim = dim, cond_dim
        freqs = math.pi * 2.0 ** torch.linspace(-2.0, 4.0, _FOURIER)
        self.register_buffer("freqs", freqs, persistent=False)
        self.trunk = _Trunk(dim + 1 + 2 * _FOURIER + cond_dim, hidden, depth)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            raise ValueError("FloatCondDenoiserNet needs its condition tensor (B, cond_dim)")
        n = x_in.shape[0]
        x = x_in.reshape(n, self.dim)
        c = c_noise.to(x.dtype).reshape(n, 1)
        arg = c * self.freqs.to(x.dtype)
        h = torch.cat([x, c, arg.sin(), arg.cos(), cond.to(x.dtype).reshape(n, self.cond_dim)], 1)
        return self.out(self.trunk(h)).reshape(x_in.shape)


class TeacherResidualDenoiser(nn.Module):
    """``D(x_t, t, c) = D_T(x_t, t, c) + c_out(s) F(x_in, c_noise, c)`` on ``teacher.schedule``.

    EDM preconditioning (Karras et al. 2022, Table 1) at the VE level ``s = sigma / alpha``:
    ``x_in = (x_t / alpha) / sqrt(s^2 + sigma_data^2)``, ``c_noise = log(s) / 4``,
    ``c_out = s sigma_data / sqrt(s^2 + sigma_data^2)``. ``F`` starts at zero, so the critic
    starts at the teacher; the teacher gets no gradient.
    """

    def __init__(self, teacher, net: FloatCondDenoiserNet, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.teacher, self.net, self.sigma_data = teacher, net, sigma_data
        self.schedule = teacher.schedule

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        alpha, sigma = self.schedule.alpha_sigma(t)
        s, sd = (sigma / alpha)[:, None], self.sigma_data
        root = torch.sqrt(s**2 + sd**2)
        x_in = x_t / alpha[:, None] / root
        with torch.no_grad():
            base = self.teacher.denoise(x_t, t, cond).to(x_t.dtype)
        return base + (s * sd / root) * self.net(x_in, 0.25 * torch.log(s[:, 0]), cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.denoise(x_t, t, cond)
