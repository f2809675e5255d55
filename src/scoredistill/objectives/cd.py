"""CD: discrete consistency distillation (Song et al. 2023, "Consistency Models", Alg. 2, eq. 7)
with LCM's skipping-step DDIM teacher solver (Luo et al. 2023, "Latent Consistency Models",
eq. 8-9, Alg. 1).

The teacher's time range ``[t_min, t_max]`` carries a sampler grid of ``grid + 1`` times
``t_0 = t_max > ... > t_grid = t_min`` (the schedule's default spacing: Karras' on edm). A start
index ``n`` is drawn from ``{0, k, 2k, ..., grid - k}`` (``k = skip``), ``x_0`` from the data and

    x_{t_n}     = alpha_n x_0 + sigma_n eps
    x^_{t_{n+k}} = alpha_{n+k} D + sigma_{n+k} (x_{t_n} - alpha_n D) / sigma_n,  D = D_teacher(x_{t_n}, t_n)
    L           = d( f_theta(x_{t_n}, t_n), f_theta-(x^_{t_{n+k}}, t_{n+k}) )

(one exact-for-frozen-D DDIM step per skip, eq. 8 of LCM without guidance; ``solver="exact"``
replaces it by the exact PF-ODE map of an exact teacher, ``teachers.pf_ode``, far slower: an
ablation without solver error). ``f_theta-`` is the target network, an EMA of the student with
decay ``target_decay`` that the loop keeps (LCM: 0.95); ``d`` is the mean square (LCM's ``l2``
default, a mean over the batch and the dimensions) or the pseudo-Huber ``sqrt(d^2 + c^2) - c``.
The boundary condition ``f(x, t_min) = x`` is the student's (``c_skip``/``c_out``,
``sources.consistency.BoundaryConsistency``).

Defaults, read in ``huggingface/diffusers`` ``examples/consistency_distillation/
train_lcm_distill_sd_wds.py``: ``num_ddim_timesteps = 50`` of 1000 (``skip = 1000 // 50 = 20``),
``ema_decay = 0.95``, ``loss_type = "l2"``, ``huber_c = 0.001``. LCM's guidance scale embedding
(``w ~ U[5, 15]``) is left out: the exact testbeds are distilled at their own law (w = 1).
A ``skip`` that does not divide ``grid`` is refused: the last DDIM jump would not end on
``t_min``, the end where the boundary condition holds.

``spacing="table"`` is LCM's own grid on a teacher's discrete table of ``grid`` entries
(``t = k / (grid - 1)``, a diffusers teacher's native schedule): the starts are the
``DDIMSolver`` timesteps ``k = j skip - 1``, ``j = 1..grid/skip`` (19, 39, ..., 999), each jumping
to ``k - skip`` clamped at 0 (``train_lcm_distill_sd_wds.py``: ``timesteps = start_timesteps -
topk``, ``torch.where(timesteps < 0, 0, ...)``), so the last jump is 19 -> 0 and the boundary sits
at ``k = 0``; these are the ``original_inference_steps = grid/skip`` timesteps of
``LCMScheduler``.

``top_log_snr`` tops the grid: only starts whose log-SNR ``log(alpha^2 / sigma^2)`` is at least
``top_log_snr`` are drawn (None, LCM's default: all); on the SNR, so the cut means the same on
every schedule. ``presets/consistency_unet.py`` uses -5.4, just below Stable Diffusion's
k = 999 (-5.36 on ``scaled_linear``, the table LCM was built on): its grid there is LCM's own,
while on a cosine table (``squaredcos_cap_v2``, sqrt(abar_999) = 4.9e-5, log-SNR -19.8: the
eps-network's x0 at k = 999 multiplies its error by 2e4 and saturates at the clip) the grid tops
at k = 939 (log-SNR -4.73; 959 has -5.55) and the exported ``LCMScheduler`` runs on the
teacher's table cut after 940 entries (``docs/consistency.md``, "A grid topped below k = 999").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..config import ConfigError, PositiveFloat, PositiveInt, UnitFloat
from ..samplers import time_grid
from ..schedules import log_snr
from ..teachers.pf_ode import pf_ode_map
from ._ingredients import Loss

__all__ = ["CD", "ddim_step", "table_times"]


@dataclass(frozen=True)
class CD:
    grid: PositiveInt = 1000  # teacher discretisation N (DDPM's 1000 timesteps, LCM)
    skip: PositiveInt = 20  # LCM's skipping step k = 1000 // num_ddim_timesteps (50)
    target_decay: UnitFloat = 0.95  # EMA decay of the target network (LCM's ema_decay)
    distance: Literal["l2", "huber"] = "l2"  # LCM's loss_type
    huber_c: PositiveFloat = 0.001  # LCM's huber_c
    solver: Literal["ddim", "exact"] = "ddim"  # exact: the exact PF-ODE map (exact teachers)
    # schedule: the sampler grid (time_grid); table: LCM's grid on a table of `grid` entries
    spacing: Literal["schedule", "table"] = "schedule"
    # the drawn starts' minimal log-SNR; None: every start (module docstring)
    top_log_snr: float | None = None

    def __post_init__(self) -> None:
        if self.grid % self.skip:
            raise ConfigError(
                f"config key 'skip' must divide grid = {self.grid} (got "
                f"{self.skip}): the DDIM jumps of {self.skip} grid steps would not end on "
                f"t_min; valid: a divisor such as {_divisors(self.grid)}"
            )

    def starts(self, schedule) -> int:
        """The number of solver starts kept on ``schedule``: those with log-SNR ``>=
        top_log_snr`` (the lowest ones); ``ConfigError`` naming ``top_log_snr`` when none is."""
        if self.top_log_snr is None:
            return self.grid // self.skip
        lam = log_snr(schedule, self.times(schedule)[: self.grid : self.skip])
        m = int((lam >= self.top_log_snr).sum())
        if m == 0:
            raise ConfigError(
                f"config key 'objective.top_log_snr': no solver start has log-SNR >= "
                f"{self.top_log_snr} (the lowest start's is {float(lam[-1]):.3g})"
            )
        return m

    def times(self, schedule) -> Tensor:
        """The ``grid + 1`` teacher times, ``t_max`` first (float64)."""
        if self.spacing == "table":
            return table_times(schedule, self.grid)
        return time_grid(schedule, self.grid + 1)

    def loss(
        self,
        x0: Tensor,
        cond: Tensor | None,
        *,
        student,
        target,
        teacher,
        rng: torch.Generator,
        step: int = 0,
    ) -> Loss:
        """``x0: (B, D)`` data; ``student`` and ``target`` are ``f(x_t, t, cond)`` on
        ``teacher.schedule`` (``target`` without gradients)."""
        t, t_next, x_t, _ = self.draw(x0, teacher, rng)
        with torch.no_grad():
            x_next = self.solve(teacher, x_t, t, t_next, cond)
            f_target = target(x_next, t_next.to(x0.dtype), cond)
        f = student(x_t, t.to(x0.dtype), cond)
        per = self.distance_per_sample(f - f_target)
        return Loss(per.mean(), {"distance": per.mean().item()})

    def draw(
        self, x0: Tensor, teacher, rng: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(t_n, t_{n+k}, x_{t_n}, n)``: a start index ``n`` per row, its time and the next
        solver time (float64, ``(B,)``), and the noised data ``x_{t_n}: (B, D)``."""
        ts = self.times(teacher.schedule)
        kept = self.starts(teacher.schedule)
        dropped = self.grid // self.skip - kept  # the top starts a topped grid leaves out
        draw = torch.randint(kept, (x0.shape[0],), generator=rng)
        starts = (draw + dropped) * self.skip
        t, t_next = ts[starts], ts[starts + self.skip]
        alpha, sigma = (c.to(x0.dtype) for c in teacher.schedule.alpha_sigma(t))
        eps = torch.randn(x0.shape, generator=rng, dtype=x0.dtype)
        return t, t_next, alpha[:, None] * x0 + sigma[:, None] * eps, starts

    def solve(self, teacher, x_t: Tensor, t: Tensor, t_next: Tensor, cond) -> Tensor:
        """The teacher's step ``x_{t_n} -> x^_{t_{n+k}}`` (DDIM or the exact PF-ODE map)."""
        if self.solver == "exact":
            return pf_ode_map(teacher, x_t, t, t_next, cond=cond)
        return ddim_step(teacher, x_t, t, t_next, cond)

    def distance_per_sample(self, diff: Tensor) -> Tensor:
        """``d`` per row of ``diff: (B, D)``: mean square or pseudo-Huber."""
        if self.distance == "huber":
            return (torch.sqrt(diff**2 + self.huber_c**2) - self.huber_c).mean(1)
        return (diff**2).mean(1)


def ddim_step(teacher, x_t: Tensor, t: Tensor, t_next: Tensor, cond: Tensor | None) -> Tensor:
    """One deterministic DDIM step per sample (Song et al. 2021, eq. 12, eta = 0), ``t, t_next:
    (B,)``: ``x' = alpha' D + sigma' (x_t - alpha D) / sigma``."""
    a, s = (c.to(x_t.dtype)[:, None] for c in teacher.schedule.alpha_sigma(t))
    a2, s2 = (c.to(x_t.dtype)[:, None] for c in teacher.schedule.alpha_sigma(t_next))
    d = teacher.denoise(x_t, t.to(x_t.dtype), cond)
    return a2 * d + s2 * (x_t - a * d) / s


def table_times(schedule, grid: int) -> Tensor:
    """LCM's ``grid + 1`` times on a discrete table of ``grid`` entries, ``t = k / (grid - 1)``:
    ``k = grid - 1, grid - 2, ..., 0`` and a last ``0`` (LCM's clamp of ``k - skip < 0``), float64.
    ``ValueError`` unless ``schedule`` is such a table spanning ``[0, 1]``."""
    n = getattr(schedule, "n", None)
    if n != grid or (schedule.t_min, schedule.t_max) != (0.0, 1.0):
        raise ValueError(
            f"spacing 'table' needs a schedule of {grid} table entries on t in [0, 1] (a "
            f"diffusers teacher's native table); got n={n}, [{schedule.t_min}, {schedule.t_max}]"
        )
    k = (grid - 1 - torch.arange(grid + 1, dtype=torch.float64)).clamp(min=0)
    return k / (grid - 1)


def _divisors(n: int) -> str:
    """A few divisors of ``n`` for the error message."""
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0 and d <= 50)
