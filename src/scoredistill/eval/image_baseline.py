"""The teacher's sampler × NFE table for image teachers (diffusers folders), scored by a metric
function, and the best sampler at each NFE: what a student is compared with.

``image_rows`` runs the library's samplers (DDIM, DPM-Solver++(2M), Heun, Euler) through the
teacher adapter on the teacher's own time grid; ``diffusers_ddim_rows`` runs diffusers' own
``DDIMScheduler`` on the same network (the two must agree within noise: the adapter is then
exact). Each cell draws its noise and labels from ``seed``, so rows are paired across samplers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..samplers import SPACINGS, nfe_to_steps, sample

__all__ = [
    "accuracy_front",
    "best_at_accuracy",
    "best_rows",
    "diffusers_ddim_rows",
    "draw_labels",
    "image_rows",
]

Score = Callable[[Any, Tensor, Tensor | None, int], dict[str, Any]]


def draw_labels(teacher: Any, n: int, rng: torch.Generator) -> Tensor | None:
    """Uniform class labels ``(n,)`` for a class-conditional teacher, else None."""
    k = int(getattr(teacher, "num_classes", 0))
    return torch.randint(k, (n,), generator=rng) if k else None


def image_rows(
    teacher: Any,
    samplers: Sequence[str],
    nfes: Sequence[int],
    n: int,
    seed: int,
    score: Score,
    *,
    spacings: Sequence[str] = SPACINGS,
    chunk: int = 500,
) -> list[dict[str, Any]]:
    """Rows ``{sampler, spacing, nfe, <metrics>, wall_s}`` for every sampler × time grid × NFE
    budget, so that the best grid of each sampler is in the table (Heun spends 2 NFE a step:
    odd budgets collapse; one evaluation has one grid, so NFE 1 runs once per sampler)."""
    cells = list(
        dict.fromkeys(
            (s, g if nfe_to_steps(s, k)[0] > 1 else spacings[0], nfe_to_steps(s, k)[1])
            for s in samplers
            for g in spacings
            for k in nfes
        )
    )
    rows = []
    for sampler, spacing, nfe in tqdm(cells, desc="teacher samplers", unit="cell", file=sys.stderr):
        rng = torch.Generator().manual_seed(seed)
        labels = draw_labels(teacher, n, rng)
        start = time.perf_counter()
        with torch.no_grad():
            parts = []
            for lo in range(0, n, chunk):
                m = min(chunk, n - lo)
                c = None if labels is None else labels[lo : lo + m]
                parts.append(sample(teacher, sampler, nfe, m, rng=rng, cond=c, spacing=spacing)[0])
        x = torch.cat(parts)
        wall = time.perf_counter() - start
        row = {"sampler": sampler, "spacing": spacing, "nfe": nfe}
        rows.append({**row, **score(teacher, x, labels, seed), "wall_s": wall})
    return rows


def diffusers_ddim_rows(
    teacher: Any, nfes: Sequence[int], n: int, seed: int, score: Score
) -> list[dict[str, Any]]:
    """The same table through diffusers' own ``DDIMScheduler`` (η = 0, ``trailing`` spacing so
    the first step starts at the table's last timestep, as the adapter's samplers do)."""
    from diffusers import DDIMScheduler

    rows = []
    model = teacher.model
    for nfe in nfes:
        sched = DDIMScheduler.from_config(teacher.scheduler.config, timestep_spacing="trailing")
        sched.set_timesteps(nfe)
        rng = torch.Generator().manual_seed(seed)
        labels = draw_labels(teacher, n, rng)
        x = torch.randn(n, *teacher.shape, generator=rng)
        y = teacher.class_labels(labels, n, x.device)
        start = time.perf_counter()
        with torch.no_grad():
            for t in sched.timesteps:
                out = model(x, t.float().expand(n), class_labels=y).sample[:, : x.shape[1]]
                x = sched.step(out, t, x, use_clipped_model_output=True).prev_sample
        wall = time.perf_counter() - start
        row = {
            "sampler": "diffusers-ddim",
            "spacing": "trailing",
            "nfe": nfe,
            **score(teacher, x.flatten(1), labels, seed),
        }
        rows.append({**row, "wall_s": wall})
    return rows


def best_rows(
    rows: list[dict[str, Any]],
    budgets: Sequence[int] | None = None,
    key: str = "fd",
    *,
    maximize: bool = False,
) -> dict[str, dict[str, Any]]:
    """The teacher's best row (lowest ``key``; highest with ``maximize``) within each NFE budget:
    ``{budget: row}``, the best over every sampler and grid that uses at most ``budget``
    evaluations (Heun's odd budgets count toward the next even one). ``budgets`` defaults to the
    NFEs in ``rows``."""
    scored = [r for r in rows if key in r]
    budgets = sorted(set(budgets or (int(r["nfe"]) for r in scored)))
    pick = max if maximize else min
    best: dict[str, dict[str, Any]] = {}
    for b in budgets:
        within = [r for r in scored if int(r["nfe"]) <= b]
        if within:
            best[str(b)] = pick(within, key=lambda r: r[key])
    return best


def best_at_accuracy(
    rows: list[dict[str, Any]],
    budget: int,
    accuracy: float,
    key: str = "fd",
    acc_key: str = "class_acc",
) -> dict[str, Any] | None:
    """The teacher's best row (lowest ``key``) among those within ``budget`` NFE whose
    ``acc_key`` is at least ``accuracy``: the comparison "at equal prompt accuracy" (rows may
    span several guidance scales, so a student is met by the teacher at its own accuracy, not
    at the student's guidance). None when no row is that accurate."""
    within = [
        r for r in rows
        if key in r and acc_key in r and int(r["nfe"]) <= budget and r[acc_key] >= accuracy
    ]  # fmt: skip
    return min(within, key=lambda r: r[key]) if within else None


def accuracy_front(
    rows: list[dict[str, Any]], budget: int, key: str = "fd", acc_key: str = "class_acc"
) -> list[dict[str, Any]]:
    """The Pareto front of ``(acc_key ↑, key ↓)`` among rows within ``budget`` NFE, by
    increasing accuracy: no row on it is beaten on both by another row of the budget."""
    within = [r for r in rows if key in r and acc_key in r and int(r["nfe"]) <= budget]
    front: list[dict[str, Any]] = []
    for r in sorted(within, key=lambda r: (-r[acc_key], r[key])):
        if not front or r[key] < front[-1][key]:
            front.append(r)
    return front[::-1]
