"""The exact consistency error of a student: how far ``f_theta(x_t, t)`` is from ``f*(x_t, t)``.

On an exact testbed the teacher's consistency function ``f*`` (the clean end of its PF-ODE
trajectory, ``teachers.pf_ode``) is computable to 1e-9, so a consistency model can be checked
as a function, not only through its samples. At each VE level ``s = sigma / alpha`` the points are
``x = x_0 + s eps`` (``x_0`` exact data; ``x_t = alpha x`` on any schedule), and

    cons_err      = E || f_theta(x, s) - f*(x, s) ||          (student)
    cons_err_den  = E || D(x, s) - f*(x, s) ||                 (the teacher's one-NFE denoiser)

The second row is what a student that merely learned the denoiser would score: a consistency
student should be below it at high noise, where ``D`` is the blurred mean and ``f*`` a sample.
A learned teacher has no exact score at sigma = 0; its trajectories end at EDM's
``sigma_min = 0.002`` instead (``S_END_LEARNED``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..teachers.pf_ode import pf_ode_map_ve
from ..teachers.trigflow import level_denoiser, level_score
from .baseline import draw_labels

__all__ = ["consistency_errors"]

S_END_LEARNED = 0.002  # EDM's sigma_min: where a learned teacher's flow is stopped
AtLevel = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def consistency_errors(
    testbed,
    f_at_level: AtLevel,
    levels: Sequence[float],
    n: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """``{f"sigma={s:g}": {"student": cons_err, "denoiser": cons_err_den}}`` for each level;
    ``f_at_level(x_ve: (n, D) float32, s: (n,), labels) -> (n, D)`` is the student."""
    rng = torch.Generator().manual_seed(seed + 4242)
    teacher, out = testbed.teacher, {}
    s_end = 0.0 if level_score(teacher) is not None else S_END_LEARNED
    for level in levels:
        labels = draw_labels(testbed, n, rng)
        x0 = testbed.truth.sample(n, rng=rng, cond=labels, dtype=torch.float64)
        s = torch.full((n,), float(level), dtype=torch.float64)
        x = x0 + s[:, None] * torch.randn(x0.shape, generator=rng, dtype=torch.float64)
        exact = pf_ode_map_ve(teacher, x, s, torch.full_like(s, s_end), cond=labels)
        with torch.no_grad():
            f = f_at_level(x.float(), s.float(), labels).double()
            d = level_denoiser(teacher)(x, torch.ones_like(s), s, labels)
        out[f"sigma={level:g}"] = {
            "student": (f - exact).norm(dim=1).mean().item(),
            "denoiser": (d - exact).norm(dim=1).mean().item(),
        }
    return out
