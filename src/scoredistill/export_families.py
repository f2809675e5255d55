"""The stock diffusers scheduler that reproduces a flow or EDM student, and the student's grid on it.

A ``DiffusersGenerator`` rolls out ``x = D(x_t, t_j)``, re-noising with fresh noise between
steps. For a flow or EDM teacher, ``stock_scheduler`` names the stock scheduler (diffusers 0.42)
whose sampling loop computes exactly that, and ``stock_grid`` gives the student the times and the
prior scale of that loop, so ``export.py`` can write the scheduler and nothing else:

- flow: ``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)`` with the teacher's config.
  ``step`` forms ``x0 = x - sigma·v`` and returns ``(1 - sigma_next)·x0 + sigma_next·randn(g)``
  (``x0`` itself at the last step, ``sigma_next = 0``) (``scheduling_flow_match_euler_discrete.py``,
  ``step``). Its grid is ``set_timesteps(K)``'s: ``N·linspace(sigma_max, sigma_min, K)`` of the
  already shifted training sigmas (``sigma_max = 1``, ``sigma_min`` = shifted ``1/N``), shifted
  once more (``set_timesteps``, step 2): it starts at ``sigma = 1`` (pure noise; the prior is
  plain ``randn``) and for K >= 2 ends at ``sigma_min`` shifted twice (0.0089 for shift 3,
  N = 1000: K = 2 spends its second step almost at the data). The class has no
  ``init_noise_sigma`` and no ``scale_model_input``. ``use_dynamic_shifting`` needs ``mu`` (the
  image size) in ``set_timesteps``, which no stock pixel pipeline passes: not reproducible.
- edm: ``EDMEulerScheduler`` with ``final_sigmas_type="zero"``, K = 1 only. ``set_timesteps(1)``
  gives the Karras ramp at 0, ``sigma_max`` (``_compute_karras_sigmas``; the ``exponential``
  schedule gives ``sigma_min``: not reproducible); ``step`` returns ``x + (x - x0)/sigma·(0 -
  sigma)`` = ``x0`` up to float32 rounding at the scale of ``x`` (``step``); the prior is
  ``randn·init_noise_sigma`` with ``init_noise_sigma = sqrt(sigma_max² + 1)``, not
  ``sigma_max``. For K > 1 the Euler step moves deterministically to the next sigma (fresh noise
  only with ``s_churn > 0``, which the pipelines do not pass): not reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .schedules import t_from_log_snr
from .teachers.diffusers import DiffusersTeacher

__all__ = ["EDM_MULTISTEP", "check_grid", "stock_grid", "stock_scheduler", "why_not_stock"]

EDM_MULTISTEP = (
    "EDMEulerScheduler reproduces only K = 1: its deterministic Euler step cannot re-noise with "
    "fresh noise between steps"
)
GRID_RTOL = 1e-6  # float32 scheduler timesteps vs float64 ones: ~8 float32 ulps


def why_not_stock(teacher: DiffusersTeacher, steps: int) -> str:
    """Why no stock scheduler reproduces a ``steps``-step student of this flow/EDM teacher
    ("" when one does)."""
    cfg = dict(teacher.scheduler.config)
    if teacher.family == "flow" and cfg.get("use_dynamic_shifting", False):
        return (
            "use_dynamic_shifting needs the image size (mu) in set_timesteps; no pipeline passes it"
        )
    if teacher.family == "edm" and steps != 1:
        return f"{EDM_MULTISTEP} (K = {steps})"
    if teacher.family == "edm" and cfg.get("sigma_schedule", "karras") != "karras":
        return "EDMEulerScheduler's exponential schedule puts a one-step grid at sigma_min"
    return "" if teacher.family in ("flow", "edm") else f"not a flow/EDM teacher: {teacher.family}"


def stock_scheduler(teacher: DiffusersTeacher, steps: int) -> Any | None:
    """A fresh stock scheduler after ``set_timesteps(steps)`` whose loop is the student's
    rollout (module docstring), or None (``why_not_stock`` says why)."""
    from diffusers import EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

    if why_not_stock(teacher, steps):
        return None
    cfg = dict(teacher.scheduler.config)
    if teacher.family == "flow":
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg, stochastic_sampling=True)
    else:
        sched = EDMEulerScheduler.from_config(cfg, final_sigmas_type="zero")
    sched.set_timesteps(steps)
    return sched


def _native_log_snr(family: str, sigmas: Tensor) -> Tensor:
    """Native log-SNR (float64) of scheduler sigmas: flow ``x = (1-s) x0 + s eps`` (``-inf`` at
    ``s = 1``), EDM ``x = x0 + sigma eps``."""
    s = sigmas.to(torch.float64)
    return 2 * ((1 - s).log() - s.log()) if family == "flow" else -2 * s.log()


def _native_input_scale(teacher: DiffusersTeacher, t: Tensor) -> float:
    """``x_native / x_t`` at library time ``t`` (``DiffusersTeacher.denoise``:
    ``hypot(alpha_n, sigma_n) / hypot(alpha, sigma)``)."""
    a, s = teacher.schedule.alpha_sigma(t.to(torch.float64).reshape(1))
    a_n, s_n, _ = teacher.native_level(2 * (a.log() - s.log()))
    return math.hypot(float(a_n), float(s_n)) / math.hypot(float(a), float(s))


def stock_grid(teacher: DiffusersTeacher, steps: int) -> tuple[list[float], float] | None:
    """``(ts, init_scale)``: the stock scheduler's sigmas as times of ``teacher.schedule`` (equal
    log-SNR, decreasing) and the scale ``c`` of ``x_t = c·z`` at ``ts[0]`` that makes the native
    input the scheduler's prior ``init_noise_sigma·z`` (1 for flow); None where no stock scheduler
    reproduces the student."""
    sched = stock_scheduler(teacher, steps)
    if sched is None:
        return None
    ts = t_from_log_snr(teacher.schedule, _native_log_snr(teacher.family, sched.sigmas[:steps]))
    prior = float(getattr(sched, "init_noise_sigma", 1.0))
    return ts.tolist(), prior / _native_input_scale(teacher, ts[:1])


def check_grid(teacher: DiffusersTeacher, ts: tuple[float, ...], init_scale: float) -> Any:
    """The stock scheduler for a student with times ``ts`` and prior scale ``init_scale``, after
    checking that it feeds the network the same timesteps and prior; ``ValueError`` naming what
    differs (or why no stock scheduler exists) otherwise."""
    steps = len(ts)
    sched = stock_scheduler(teacher, steps)
    if sched is None:
        raise ValueError(
            f"no stock scheduler reproduces this student: {why_not_stock(teacher, steps)}"
        )
    t = torch.tensor(ts, dtype=torch.float64)
    a, s = teacher.schedule.alpha_sigma(t)
    _, _, native = teacher.native_level(2 * (a.log() - s.log()))
    want = sched.timesteps.to(torch.float64)
    prior = float(getattr(sched, "init_noise_sigma", 1.0))
    got_prior = init_scale * _native_input_scale(teacher, t[:1])
    if not torch.allclose(native, want, rtol=GRID_RTOL, atol=0) or not math.isclose(
        got_prior, prior, rel_tol=GRID_RTOL
    ):
        raise ValueError(
            f"the student's native timesteps {native.tolist()} and prior {got_prior:.6g}·z differ "
            f"from {type(sched).__name__}'s {want.tolist()} and {prior:.6g}·z: build the "
            "generator from this teacher, whose schedule must reach the scheduler's sigmas"
        )
    return sched
