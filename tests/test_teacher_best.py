"""The teacher's best-sampler table (issue 15): every cell, the best row per metric and budget."""

from __future__ import annotations

import pytest

from scoredistill.eval.baseline import baseline_rows
from scoredistill.eval.teacher_best import (
    KEYS,
    SAMPLERS,
    beaten_keys,
    best_table,
    cell_name,
    grid_rows,
)
from scoredistill.teachers.testbeds import get_testbed


def _row(sampler: str, nfe: int, mmd: float, sw2: float) -> dict:
    return {"sampler": sampler, "grid": "g", "nfe": nfe, "mmd": mmd, "sw2": sw2}


def test_best_is_the_lowest_of_each_metric_within_each_budget():
    rows = [_row("a", 2, 0.5, 0.1), _row("b", 4, 0.2, 0.3), _row("c", 8, 0.1, 0.4)]
    best = best_table(rows, [2, 4, 8], keys=("mmd", "sw2"))
    assert best["mmd"]["2"]["sampler"] == "a"
    assert best["mmd"]["4"]["sampler"] == "b"  # a 2-NFE row competes at 4 too
    assert best["mmd"]["8"]["sampler"] == "c"
    assert best["sw2"]["8"]["sampler"] == "a"  # per metric, not per row
    assert beaten_keys({"mmd": 0.15, "sw2": 0.2}, best, 4) == ["mmd"]
    assert beaten_keys({"mmd": 0.15, "sw2": 0.2}, best, 8) == []
    assert beaten_keys({"mmd": 0.2}, best, 4) == []  # ties do not beat
    assert beaten_keys({"mmd": 0.0}, best, 16) == []  # no budget 16 in the table


def test_grid_rows_cover_every_sampler_and_grid_and_repeat_the_baseline_cells():
    n, seed = 200, 3
    rows = grid_rows("ring8", [4], n, seed, progress=False)
    grids = {r["grid"] for r in rows}
    # edm/karras is edm/uniform (Karras' rho = 7 grid) and is not repeated
    assert grids == {
        "edm/uniform",
        "edm/logsnr",
        "vp-cosine/uniform",
        "vp-cosine/logsnr",
        "vp-cosine/karras",
    }
    assert {r["sampler"] for r in rows} == set(SAMPLERS)
    assert len(rows) == len(grids) * len(SAMPLERS)
    assert all(set(KEYS) <= set(r) for r in rows)
    # an independent computation of one cell: the plain baseline table on the same schedule
    same, _ = baseline_rows(
        get_testbed("ring8", schedule="vp-cosine"), ("ddim",), (4,), n, seed, spacing="uniform"
    )
    cell = next(r for r in rows if r["sampler"] == "ddim" and r["grid"] == "vp-cosine/uniform")
    assert cell["mmd"] == pytest.approx(same[0]["mmd"], abs=1e-12)
    best = best_table(rows, [4])
    for key in KEYS:
        assert best[key]["4"][key] == min(r[key] for r in rows)


def test_grid_rows_only_computes_the_named_cells_and_equals_the_full_table():
    n, seed = 200, 5
    full = {cell_name(r): r for r in grid_rows("ring8", [4], n, seed, progress=False)}
    names = {"ddim vp-cosine/uniform", "euler edm/logsnr"}
    some = grid_rows("ring8", [4], n, seed, progress=False, only=names)
    assert {cell_name(r) for r in some} == names
    for row in some:
        for key in KEYS:
            assert row[key] == pytest.approx(full[cell_name(row)][key], abs=1e-12)
    assert grid_rows("ring8", [4], n, seed, progress=False, only=set()) == []
