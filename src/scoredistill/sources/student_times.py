"""Student time grids: the times of a few-step student (and a teacher-initialised one-step
student's start), from the sampler grid or from VE noise levels ``sigma/alpha`` that mean the
same on every schedule. ``sources.generators`` re-exports them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..samplers import time_grid
from ..schedules import Schedule, log_snr, t_from_log_snr

__all__ = ["default_student_times", "times_at_ve_levels"]


def _t_at_ve_level(schedule: Schedule, s: float, name: str = "sigma_init") -> float:
    """The time where ``sigma/alpha = s`` (``lambda = -2 log s``); raises naming ``name`` if
    out of range."""
    t = t_from_log_snr(schedule, torch.tensor(-2.0 * math.log(s), dtype=torch.float64))
    got = float(torch.exp(-0.5 * log_snr(schedule, t)))
    if not math.isclose(got, s, rel_tol=1e-4):
        raise ValueError(
            f"{name}={s} (the VE level sigma/alpha) is outside schedule "
            f"{schedule.name!r}'s range; the nearest level is {got:.4g}"
        )
    return float(t)


def times_at_ve_levels(schedule: Schedule, sigmas: Sequence[float]) -> tuple[float, ...]:
    """The times where ``sigma/alpha`` equals each of ``sigmas`` (a student grid given by its
    noise levels, the same on every schedule); raises if one is out of the schedule's range."""
    return tuple(_t_at_ve_level(schedule, float(s), "level") for s in sigmas)


def default_student_times(
    schedule: Schedule, steps: int, spacing: str | None = None, t_top: float | None = None
) -> tuple[float, ...]:
    """``steps`` decreasing times, the first ``t_max``: the sampler grid ``samplers.time_grid``
    (``spacing=None``: the schedule's default) with ``steps + 1`` points minus its last
    (``t_min``, almost clean). ``spacing="uniform"`` on a VP table gives ``999 t`` = 999, 749,
    500, 250: DMD2's SDXL steps ``[999, 749, 499, 249]`` (note b2).

    ``t_top`` (< ``t_max``) starts the grid lower: the same grid with ``[t_min, t_max]`` mapped
    affinely onto ``[t_min, t_top]`` (the UNet path's ``lcm_timesteps`` below a top timestep does
    the same on the native table); on EDM, whose ``t`` is Karras' rho = 7 grid, that is the
    Karras grid from ``sigma(t_top)`` down to ``sigma_min``."""
    grid = time_grid(schedule, steps + 1, spacing)[:-1]
    if t_top is not None:
        lo, hi = schedule.t_min, schedule.t_max
        if not lo < t_top <= hi:
            raise ValueError(f"t_top must lie in ({lo}, {hi}], got {t_top}")
        grid = lo + (grid - lo) * ((t_top - lo) / (hi - lo))
    return tuple(float(t) for t in grid)
