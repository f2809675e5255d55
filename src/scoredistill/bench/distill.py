"""Distillation suites (``onestep``, ``fdistill``): each method's metrics, mean ± std over seeds,
next to the exact teacher's **best** sampler at 1, 2, 4 and 8 NFE on the same testbed (the lowest
of each metric over DDIM, DPM-Solver++(2M), Heun and Euler on five time grids,
``eval.teacher_best``; issue 15), with the metrics on which each method's mean is below the best
4- and 8-NFE rows."""

from __future__ import annotations

from typing import Any

from ..eval.report import COLUMNS, format_value, mean_std
from ..presets.distill import PRESETS

__all__ = ["DISTILL_SUITES", "table"]


def _grid(methods: tuple[str, ...], testbeds: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{m}-{tb}" for tb in testbeds for m in methods if f"{m}-{tb}" in PRESETS)


TEACHER_NFE = (1, 2, 4, 8)
_MAIN = (
    "dmd2",
    "dmd2-teacher-init",
    "dmd2-teacher-init-reg",  # + DMD v1's regression term (stop 36)
    "dmd2-gan",
    "dmd",
    "vsd",
    "sid",
    "sim",
    "fdistill-js",
    "sfd",
    "dmd2-4step",  # a 4-step student: read against the best 8-NFE rows (issue 15)
    "dmd2-4step-reg",  # + DMD v1's regression on every step (stop 38)
    "tdm",  # 4-step (issue 13)
    "phased-dmd",  # 4-step, two experts
    "disback",  # DMD2 after a recorded backtracking path
    "msd",  # one student per block of classes (conditional testbeds)
)
DISTILL_SUITES: dict[str, tuple[str, ...]] = {
    # every method on every testbed (the README's leaderboard)
    "onestep": _grid(_MAIN, ("ring8", "grid25", "cond2d", "gmm64", "digits")),
    # f-distill's claim: forward-KL-like divergences keep the weights of rare modes
    "fdistill": _grid(
        ("dmd2", "fdistill-rkl", "fdistill-kl", "fdistill-js", "fdistill-sh"),
        ("ring8-unbalanced",),
    ),
}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return mean_std(
        [r | {"initial_mmd": r["initial"]["mmd"]} if "initial" in r else r for r in runs]
    )


def _teacher_best(testbed_name: str, n: int) -> dict[str, Any]:
    """The best row per metric and NFE budget, and every cell it was taken from."""
    from ..eval.teacher_best import best_table, grid_rows

    rows = grid_rows(testbed_name, TEACHER_NFE, n, 0)
    return {"best": best_table(rows, TEACHER_NFE), "rows": rows}


def _beats(r: dict[str, Any], best: dict[str, Any], nfe: int) -> str:
    from ..eval.teacher_best import beaten_keys

    return ", ".join(beaten_keys(r, best, nfe)) or "none"


def _mean_std(r: dict[str, Any], k: str) -> str:
    return f"{format_value(r[k])} ± {format_value(r[k + '_std'])}" if k in r else ""


def _teacher_lines(best: dict[str, Any], cols: list[str]) -> list[str]:
    """Per NFE budget, the best cell by each metric with all its columns; a cell that is best
    by several metrics is one row naming them all."""
    lines = []
    for nfe in TEACHER_NFE:
        by_cell: dict[tuple, list[str]] = {}
        for key, per_nfe in best.items():
            if (r := per_nfe.get(str(nfe))) is not None:
                by_cell.setdefault((r["sampler"], r["grid"], r["nfe"]), []).append(key)
        for (sampler, grid, used), keys in by_cell.items():
            r = best[keys[0]][str(nfe)]
            cells = " | ".join(format_value(r.get(k, "")) for k in cols)
            lines.append(
                f"| teacher best by {', '.join(keys)}: {sampler}, {grid} | {used} | {cells} | | |"
            )
    return lines


def _markdown(testbeds: dict[str, Any]) -> str:
    titles = {}
    for k, t in COLUMNS:
        if k != "wall_s":
            titles[k] = t
        if k == "mode_tv":  # mode weights of blurred samples: where f-distill's claim shows
            titles["mode_tv_assigned"] = "assigned TV↓"
    titles["initial_mmd"] = "untrained MMD²"
    lines = []
    for testbed, block in testbeds.items():
        cols = [k for k in titles if any(k in r for r in block["methods"].values())]
        head = " | ".join(titles[k] for k in cols)
        lines += [
            f"### {testbed}",
            "",
            f"| row | NFE | {head} | wall s | below best 4 / 8 NFE on |",
        ]
        lines.append("|---|---:|" + "---:|" * (len(cols) + 1) + "---|")
        best = block["teacher"]["best"]
        for name, r in block["methods"].items():
            cells = " | ".join(_mean_std(r, k) for k in cols)
            below = f"{_beats(r, best, 4)} / {_beats(r, best, 8)}"
            lines.append(f"| **{name}** | {r['nfe']:.0f} | {cells} | {r['wall_s']:.0f} | {below} |")
        lines += [*_teacher_lines(best, cols), ""]
    return "\n".join(lines)


def table(runs: dict[str, list[dict[str, Any]]], quick: bool) -> tuple[str, dict[str, Any]]:
    """Per testbed: every preset's mean ± std beside the teacher's best rows (same sample size,
    computed once per testbed)."""
    testbeds: dict[str, Any] = {}
    for preset, cells in runs.items():
        name = str(cells[0].get("testbed", PRESETS[preset]["testbed"]))  # --set testbed=FILE
        block = testbeds.setdefault(name, {"methods": {}, "teacher": {}})
        block["methods"][preset] = _summary(cells)
        if not block["teacher"]:
            block["teacher"] = _teacher_best(name, int(cells[0]["n"]))
    return _markdown(testbeds), {"testbeds": testbeds}
