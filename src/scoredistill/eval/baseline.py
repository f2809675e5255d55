"""The teacher's sampler × NFE table: every student is read against these rows.

``sample_cell`` samples and times one (sampler, NFE) cell; ``baseline_rows`` runs a grid of them;
``exact_rows`` scores exact samples the same way several times (the metrics' floor and noise).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..parametrization import guided
from ..samplers import nfe_to_steps, sample
from .metrics import testbed_metrics

__all__ = [
    "EXACT_REPEATS",
    "baseline_rows",
    "cell_metrics",
    "class_prior",
    "draw_labels",
    "exact_rows",
    "sample_cell",
]

EXACT_REPEATS = 5


def draw_labels(testbed, n: int, rng: torch.Generator, fixed: int | None = None) -> Tensor | None:
    """Class labels ``(n,)`` for a conditional testbed: ``fixed`` or drawn from the class prior."""
    truth = testbed.truth
    if not testbed.conditional:
        if fixed is not None:
            raise ValueError(f"a class was given but testbed {testbed.name!r} is unconditional")
        return None
    if fixed is not None:
        if not 0 <= fixed < truth.num_classes:
            raise ValueError(f"class must lie in [0, {truth.num_classes - 1}], got {fixed}")
        return torch.full((n,), fixed, dtype=torch.long)
    return torch.multinomial(class_prior(truth), n, replacement=True, generator=rng)


def class_prior(truth) -> Tensor:
    """``(C,)`` float64 class weights of a labelled mixture: its component weights summed per class."""
    prior = torch.zeros(truth.num_classes, dtype=torch.float64)
    return prior.index_add_(0, truth.labels, truth.weights)


def _denoiser(testbed, cfg: float):
    if cfg == 1.0:
        return testbed.teacher.denoise
    if not testbed.conditional:
        raise ValueError(f"--cfg needs a conditional testbed; {testbed.name!r} has no classes")
    return guided(testbed.teacher.denoise, cfg)


def sample_cell(
    testbed,
    sampler: str,
    nfe: int,
    n: int,
    seed: int,
    *,
    cfg: float = 1.0,
    spacing=None,
    fixed=None,
) -> tuple[Tensor, Tensor | None, int, float]:
    """Sample and time one cell; returns ``(x, labels, nfe_used, wall_s)``."""
    rng = torch.Generator().manual_seed(seed)
    labels = draw_labels(testbed, n, rng, fixed)
    start = time.perf_counter()
    with torch.no_grad():
        x, used = sample(
            testbed.teacher,
            sampler,
            nfe,
            n,
            rng=rng,
            cond=labels,
            spacing=spacing,
            denoise=_denoiser(testbed, cfg),
        )
    return x, labels, used, time.perf_counter() - start


def cell_metrics(testbed, x: Tensor, labels: Tensor | None, seed: int) -> dict[str, float]:
    """The testbed metrics of one cell, with the reference drawn from ``seed + 1``."""
    return testbed_metrics(
        testbed, x.reshape(x.shape[0], -1).double(), labels=labels, seed=seed + 1
    )


def baseline_rows(
    testbed,
    samplers: Sequence[str],
    nfes: Sequence[int],
    n: int,
    seed: int,
    *,
    cfg: float = 1.0,
    spacing=None,
) -> tuple[list[dict], dict[str, dict[str, Tensor]]]:
    """Rows ``{sampler, nfe, metrics..., wall_s}`` and sample panels per sampler and NFE."""
    # Heun spends 2 NFE a step: budgets 1 and 2 give the same run; keep one of each
    cells = list(dict.fromkeys((s, nfe_to_steps(s, k)[1]) for s in samplers for k in nfes))
    rows, panels = [], {s: {} for s in samplers}
    for sampler, nfe in tqdm(cells, desc=f"baseline {testbed.name}", unit="run", file=sys.stderr):
        x, labels, used, wall = sample_cell(
            testbed, sampler, nfe, n, seed, cfg=cfg, spacing=spacing
        )
        rows.append(
            {
                "sampler": sampler,
                "nfe": used,
                **cell_metrics(testbed, x, labels, seed),
                "wall_s": wall,
            }
        )
        panels[sampler][f"NFE={used}"] = x if testbed.image_shape is None else x[:64]
    return rows, panels


def exact_rows(testbed, n: int, seed: int) -> list[dict]:
    """Exact samples scored the same way, ``EXACT_REPEATS`` times: the metrics' floor (mean)
    and their noise (std), against which every sampler row is read."""
    runs = []
    for r in range(EXACT_REPEATS):
        rng = torch.Generator().manual_seed(10_000 + 7919 * seed + r)
        labels = draw_labels(testbed, n, rng)
        x = testbed.truth.sample(n, rng=rng, cond=labels)
        runs.append(
            testbed_metrics(testbed, x.double(), labels=labels, seed=20_001 + 7919 * seed + r)
        )
    keys = [k for k in runs[0] if k != "n"]
    vals = {k: torch.tensor([run[k] for run in runs], dtype=torch.float64) for k in keys}
    return [
        {
            "sampler": "exact",
            "nfe": 0,
            **{k: v.mean().item() for k, v in vals.items()},
            "n": n,
            "wall_s": 0.0,
        },
        {"sampler": "exact-std", "nfe": 0, **{k: v.std().item() for k, v in vals.items()}},
    ]
