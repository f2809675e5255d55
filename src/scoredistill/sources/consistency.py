"""Consistency-model students: networks ``f(x_t, t) -> x_0`` with the boundary condition built in.

- ``TrigFlowStudent`` (sCM; Lu & Song 2024, eq. 9): in TrigFlow coordinates
  ``x_hat = cos(theta) x_0 + sin(theta) sigma_d z``,

      f(x_hat, theta) = cos(theta) x_hat - sin(theta) sigma_d F(x_hat / sigma_d, c_noise(theta)),

  so ``f(x, 0) = x`` exactly; a learned log-variance ``u(theta)`` (the adaptive weighting of
  sCM's eq. 12) rides along. ``F`` is the library's ``MLPDenoiserNet``. Departure: sCM feeds
  ``c_noise = theta`` to positional embeddings; here ``c_noise = log(sigma_d tan theta) / 64``
  (``time_scale``), a log-SNR time: fine resolution where sharp modes (std 0.05) live, near
  theta = 0. The scale is measured, not derived: EDM's ``1/4`` put the MLP's Fourier features
  (up to 16 pi per unit of c) at 4 rad per unit of log sigma, the JVP tangent followed them and
  training stalled (ring8, 600 steps: consistency error at sigma = 0.5 0.48, the untrained
  value); ``1/32`` and ``1/64`` reached 0.25 and 0.22, identity time ``theta / 8`` 0.44
  (``docs/consistency.md``). ``cos sin dc/dtheta = time_scale``: the JVP stays bounded.
- ``BoundaryConsistency`` (CD; Song et al. 2023, "Consistency Models", eq. 7 and App. C;
  ``openai/consistency_models`` ``cm/karras_diffusion.py::get_scalings_for_boundary_condition``):
  on the teacher's schedule, in the VE view ``x = x_t / alpha``, ``s = sigma / alpha``,

      f(x_t, t) = c_skip(s) x + c_out(s) F(c_in(s) x, log(s) / 4),
      c_skip = sigma_d^2 / ((s - s_min)^2 + sigma_d^2),  c_out = (s - s_min) sigma_d / sqrt(s^2 + sigma_d^2),

  ``c_in = 1 / sqrt(s^2 + sigma_d^2)``, so ``f(x, t_min) = x`` at ``s_min = s(t_min)``.

Both draw few-step samples by Song et al.'s multistep sampler (2023, Alg. 1): ``x = f(x_T, T)``,
then for each later time re-noise ``x_tau = alpha x + sigma eps`` and apply ``f`` again. Both
answer ``at_level(x_ve, s)`` (the clean estimate at VE level ``s`` for ``x_ve = x_0 + s eps``), the
one call the exact consistency error needs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..samplers import time_grid
from ..schedules import Schedule
from ..teachers.mlp import MLPDenoiserNet

__all__ = [
    "MID_ANGLES",
    "SIGMA_MAX",
    "TIME_SCALE",
    "BoundaryConsistency",
    "TrigFlowStudent",
    "mid_from_ratios",
    "trigflow_angles",
]

SIGMA_MAX = 80.0  # the noise end of every sampler (EDM's sigma_max; rCM's --sigma_max 80)
_LOG_S = (math.log(1e-5), math.log(1e5))  # keeps c_noise finite at theta = 0 and pi/2
TIME_SCALE = 1 / 64  # c_noise = log(sigma_d tan theta) * this (module docstring: measured)
# intermediate angles of few-step TrigFlow sampling. 2 steps: 1.1 (FastGen, as issue 13 quotes
# it; not found in the stored FastGen code: unconfirmed). 3-4 steps: rCM's mid_t
# [1.3, 1.0, 0.6] (NVlabs/rcm rcm/inference/wan2pt1_t2v_rcm_infer.py, confirmed).
MID_ANGLES: dict[int, tuple[float, ...]] = {2: (1.1,), 3: (1.3, 1.0), 4: (1.3, 1.0, 0.6)}


def trigflow_angles(
    steps: int, sigma_d: float, mid: Sequence[float] | None = None, top: float | None = None
) -> list[float]:
    """The ``steps`` student angles: ``top`` (default ``atan(SIGMA_MAX / sigma_d)``, sCM's
    start) then ``mid`` (default ``MID_ANGLES``; other step counts: uniform in theta)."""
    if top is None:
        top = math.atan(SIGMA_MAX / sigma_d)
    elif not 0 < top <= math.pi / 2:
        raise ValueError(f"the first angle must lie in (0, pi/2]; got {top}")
    if mid is None:
        mid = MID_ANGLES.get(steps) or [top * (1 - i / steps) for i in range(1, steps)]
    mid = [float(m) for m in mid]
    falling = all(a > b for a, b in itertools.pairwise(mid))
    if len(mid) != steps - 1 or not falling or any(not 0 < m < top for m in mid):
        raise ValueError(
            f"{steps} steps need {steps - 1} strictly decreasing angles in (0, {top:.4f}); "
            f"got {mid}"
        )
    return [top, *mid]


def mid_from_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    """Intermediate angles of VE levels given as ``sigma / sigma_d``: ``theta = atan(ratio)``.
    A TrigFlow angle is the same ``sigma / sigma_d`` on every testbed (only the top angle
    ``atan(SIGMA_MAX / sigma_d)`` moves with ``sigma_d``)."""
    if any(not (math.isfinite(r) and r > 0) for r in ratios):
        raise ValueError(f"sigma / sigma_d ratios must be finite and > 0; got {list(ratios)}")
    return tuple(math.atan(float(r)) for r in ratios)


def _c_noise(s: Tensor, scale: float = 0.25) -> Tensor:
    """EDM's ``c_noise = log(s) / 4`` (``scale``) of the VE level ``s``, clamped."""
    return scale * torch.log(s).clamp(*_LOG_S)


class TrigFlowStudent(nn.Module):
    """sCM's network: ``F``, ``logvar`` and ``f`` (module docstring); ``x_hat: (B, D)``,
    ``theta: (B,)`` radians."""

    def __init__(
        self,
        dim: int,
        sigma_data: float,
        *,
        hidden: int = 256,
        depth: int = 4,
        num_classes: int = 0,
        time_scale: float = TIME_SCALE,
    ):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.dim, self.sigma_data, self.num_classes = dim, float(sigma_data), num_classes
        self.time_scale = float(time_scale)
        self.net = MLPDenoiserNet(dim, hidden, depth, num_classes)
        # u(theta): a linear head on the same Fourier features of c_noise (EDM2's logvar head
        # is MPFourier + MPConv on the noise level); starts at 0
        self.logvar_head = nn.Linear(1 + 2 * self.net.freqs.numel(), 1)
        nn.init.zeros_(self.logvar_head.weight)
        nn.init.zeros_(self.logvar_head.bias)

    def c_noise(self, theta: Tensor) -> Tensor:
        # |tan|: float32(pi/2) rounds *above* pi/2, where tan is a huge negative number; its
        # magnitude is the level there (the clamp then holds c_noise at theta = pi/2)
        return _c_noise(self.sigma_data * torch.tan(theta).abs(), self.time_scale)

    def F(self, x_hat: Tensor, theta: Tensor, cond: Tensor | None = None) -> Tensor:
        """``F(x_hat / sigma_d, theta)``, the raw network output ``(B, D)``."""
        return self.net(x_hat / self.sigma_data, self.c_noise(theta), cond)

    def logvar(self, theta: Tensor) -> Tensor:
        """The adaptive weighting's log-variance ``u(theta)``, shape ``(B,)``."""
        c = self.c_noise(theta).reshape(-1, 1)
        arg = c * self.net.freqs.to(c.dtype)
        return self.logvar_head(torch.cat([c, arg.sin(), arg.cos()], dim=1)).reshape(-1)

    def forward(self, x_hat: Tensor, theta: Tensor, cond: Tensor | None = None) -> Tensor:
        cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        return cos * x_hat - sin * self.sigma_data * self.F(x_hat, theta, cond)

    def at_level(self, x_ve: Tensor, s: Tensor, cond: Tensor | None = None) -> Tensor:
        theta = torch.atan(s / self.sigma_data).to(x_ve.dtype)
        return self(torch.cos(theta)[:, None] * x_ve, theta, cond)

    def sample(
        self,
        z: Tensor,
        cond: Tensor | None = None,
        *,
        steps: int = 1,
        rng: torch.Generator | None = None,
        mid: Sequence[float] | None = None,
        top: float | None = None,
    ) -> Tensor:
        """``steps``-step samples from ``z: (B, D) ~ N(0, I)``, started at angle ``top``
        (``trigflow_angles``) from ``x_hat = sigma_d z``: TrigFlow's marginal has std sigma_d
        at every angle when the data's is sigma_d, so pure noise is the start at any angle."""
        angles = trigflow_angles(steps, self.sigma_data, mid, top)
        x_hat = self.sigma_data * z
        for i, a in enumerate(angles):
            theta = torch.full((len(z),), a, dtype=z.dtype, device=z.device)
            x = self(x_hat, theta, cond)
            if i + 1 < len(angles):
                b = angles[i + 1]
                eps = torch.randn(z.shape, generator=rng, dtype=z.dtype)
                x_hat = math.cos(b) * x + math.sin(b) * self.sigma_data * eps
        return x


class BoundaryConsistency(nn.Module):
    """CD's consistency function on a teacher schedule (module docstring): ``forward(x_t, t,
    cond)``, ``x_t: (B, D)``, ``t: (B,)`` in ``[t_min, t_max]`` of ``schedule``."""

    def __init__(
        self,
        dim: int,
        schedule: Schedule,
        sigma_data: float,
        *,
        hidden: int = 256,
        depth: int = 4,
        num_classes: int = 0,
    ):
        super().__init__()
        self.dim, self.schedule, self.sigma_data = dim, schedule, float(sigma_data)
        self.num_classes = num_classes
        self.net = MLPDenoiserNet(dim, hidden, depth, num_classes)
        a, s = schedule.alpha_sigma(torch.tensor([schedule.t_min], dtype=torch.float64))
        self.s_min = float(s / a)

    def _scalings(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sd = self.sigma_data
        c_skip = sd**2 / ((s - self.s_min) ** 2 + sd**2)
        c_out = (s - self.s_min) * sd / torch.sqrt(s**2 + sd**2)
        return c_skip, c_out, 1 / torch.sqrt(s**2 + sd**2)

    def at_level(self, x_ve: Tensor, s: Tensor, cond: Tensor | None = None) -> Tensor:
        c_skip, c_out, c_in = (c[:, None] for c in self._scalings(s.to(x_ve.dtype)))
        return c_skip * x_ve + c_out * self.net(c_in * x_ve, _c_noise(s.to(x_ve.dtype)), cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.to(x_t.dtype))
        return self.at_level(x_t / alpha[:, None], sigma / alpha, cond)

    def times(self, steps: int) -> list[float]:
        """Student times: the schedule's sampler grid of ``steps + 1`` points without its last
        (``t_max`` first; on edm 2 steps are sigma = 80, 2.5)."""
        return [float(t) for t in time_grid(self.schedule, steps + 1)[:-1]]

    def sample(
        self,
        z: Tensor,
        cond: Tensor | None = None,
        *,
        steps: int = 1,
        rng: torch.Generator | None = None,
    ) -> Tensor:
        """Song et al.'s multistep sampler from ``x_T = sigma(t_max) z``."""
        ts = self.times(steps)
        x = torch.zeros_like(z)
        for i, t in enumerate(ts):
            tb = torch.full((len(z),), t, dtype=z.dtype, device=z.device)
            alpha, sigma = (c[:, None] for c in self.schedule.alpha_sigma(tb))
            noise = z if i == 0 else torch.randn(z.shape, generator=rng, dtype=z.dtype)
            x_t = alpha * x + sigma * noise  # x = 0 before the first step: x_T = sigma_max z
            x = self(x_t, tb, cond)
        return x
