"""The exact teacher's best sampler at each NFE: the row every student is read against.

Issue 15's rule: a student is compared with the teacher's **best** sampler at each NFE, the
minimum over DDIM, DPM-Solver++(2M), Heun and Euler, each on its best time grid. The grids are
the spacings of ``samplers.time_grid`` (``uniform``, ``logsnr``, ``karras``) on two schedules:
``edm`` (its uniform t is Karras' rho = 7 grid, so ``edm/karras`` repeats it and is skipped) and
``vp-cosine`` (its uniform t is DDIM's "trailing" grid). The exact denoiser is the same on both;
only where the evaluations sit (and, for Euler and Heun, the ODE's variable) differs.

``grid_rows`` scores every sampler × grid × NFE cell; ``best_table`` takes the best row *per
metric* within each NFE budget (Heun's odd budgets count toward the next even one), so "beats
the best 4-NFE sampler" means below every cell that spends at most 4 evaluations;
``beaten_keys`` names the metrics on which a student's row is below that budget's best.
``benchmarks/teacher_best.py`` prints the table; ``bench --suite onestep`` uses it.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from typing import Any

from tqdm.auto import tqdm

from ..samplers import SPACINGS
from ..teachers.testbeds import get_testbed
from .baseline import cell_metrics, sample_cell
from .image_baseline import best_rows

__all__ = [
    "KEYS",
    "SAMPLERS",
    "SCHEDULES",
    "beaten_keys",
    "best_table",
    "cell_name",
    "grid_rows",
]

SAMPLERS = ("ddim", "dpmpp-2m", "heun", "euler")
SCHEDULES = ("edm", "vp-cosine")
KEYS = ("mmd_local", "mmd", "sw2")  # lower is better for each


def _cells(nfes: Sequence[int]) -> list[tuple[str, str, str, int]]:
    """Every (schedule, sampler, spacing, nfe) cell, without the repeated ``edm/karras`` grid."""
    return [
        (schedule, sampler, spacing, nfe)
        for schedule in SCHEDULES
        for sampler in SAMPLERS
        for spacing in SPACINGS
        if (schedule, spacing) != ("edm", "karras")
        for nfe in nfes
    ]


def _grid(schedule: str, spacing: str) -> str:
    return f"{schedule}/{spacing}"


def cell_name(row: dict[str, Any]) -> str:
    """A cell's name, ``"<sampler> <schedule>/<spacing>"`` (what ``grid_rows(only=...)`` takes)."""
    return f"{row['sampler']} {row['grid']}"


def grid_rows(
    name: str,
    nfes: Sequence[int],
    n: int,
    seed: int,
    *,
    progress: bool = True,
    only: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Every sampler × schedule × spacing × NFE cell of testbed ``name`` (a name or a mixture
    ``.npz``), or the cells named in ``only`` (``cell_name``), ``n`` samples from ``seed``,
    scored against exact draws from ``seed + 1``: rows ``{sampler, grid, nfe, metrics...}``."""
    testbeds = {s: get_testbed(name, schedule=s) for s in SCHEDULES}
    cells = [
        (schedule, sampler, spacing, nfe)
        for schedule, sampler, spacing, nfe in _cells(nfes)
        if only is None or cell_name({"sampler": sampler, "grid": _grid(schedule, spacing)}) in only
    ]
    rows = []
    for schedule, sampler, spacing, nfe in tqdm(
        cells, desc=f"teacher best {name}", unit="cell", file=sys.stderr, disable=not progress
    ):
        testbed = testbeds[schedule]
        x, labels, used, _ = sample_cell(testbed, sampler, nfe, n, seed, spacing=spacing)
        rows.append(
            {
                "sampler": sampler,
                "grid": _grid(schedule, spacing),
                "nfe": used,
                **cell_metrics(testbed, x, labels, seed),
            }
        )
    return rows


def best_table(
    rows: list[dict[str, Any]], nfes: Sequence[int], keys: Sequence[str] = KEYS
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{key: {nfe: best row}}``: the lowest ``key`` among the rows spending ≤ nfe evaluations."""
    return {key: best_rows(rows, nfes, key=key) for key in keys}


def beaten_keys(
    student: dict[str, Any], best: dict[str, dict[str, dict[str, Any]]], nfe: int
) -> list[str]:
    """The metrics on which ``student`` is strictly below the teacher's best row at ``nfe``."""
    return [
        key
        for key, per_nfe in best.items()
        if key in student and str(nfe) in per_nfe and student[key] < per_nfe[str(nfe)][key]
    ]
