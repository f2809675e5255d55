"""``report.md`` and ``samples.png`` of a consistency run (``runs.consistency``).

The report places the student at 1, 2 and 4 steps among the teacher's samplers (DDIM,
DPM-Solver++(2M), Heun at 1-16 NFE; the same ``n`` and seeds as ``scoredistill baseline``),
names the teacher's best sampler at each NFE, and lists the exact consistency error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["best_rows", "save_figure", "write_report"]


def best_rows(rows: list[dict], nfe: int, key: str = "mmd") -> dict | None:
    """The teacher row with the lowest ``key`` at ``nfe`` evaluations (None: no such row)."""
    found = [r for r in rows if r["nfe"] == nfe and r["sampler"] not in ("exact", "exact-std")]
    return min(found, key=lambda r: r[key]) if found else None


def _placement(cfg, metrics: dict, testbed) -> tuple[str, list[dict]]:
    from ..eval.baseline import baseline_rows, exact_rows
    from ..eval.report import baseline_markdown

    n, seed = cfg.train.eval_samples, cfg.train.seed
    teacher, _ = baseline_rows(testbed, cfg.eval.teacher_samplers, cfg.eval.teacher_nfe, n, seed)
    rows = list(teacher)
    for steps, m in metrics["by_steps"].items():
        name = f"**student ({cfg.method}, {steps} step{'s' if steps != '1' else ''})**"
        rows.append({**m, "sampler": name, "nfe": int(steps), "wall_s": m["sample_s"]})
    rows.sort(key=lambda r: (r["nfe"], r["sampler"]))
    rows.extend(exact_rows(testbed, n, seed))
    table = {"testbed": testbed.name, "schedule": cfg.schedule, "n": n, "seed": seed, "rows": rows}
    return baseline_markdown(table), teacher


def _best_lines(metrics: dict, teacher: list[dict]) -> list[str]:
    """One line per student step count: its MMD² beside the teacher's best at 1x, 2x, 4x NFE."""
    from ..eval.report import format_value

    lines = []
    for steps, m in metrics["by_steps"].items():
        parts = []
        for factor in (1, 2, 4):
            best = best_rows(teacher, int(steps) * factor)
            if best is not None:
                parts.append(f"{best['sampler']}@{best['nfe']} {format_value(best['mmd'])}")
        lines.append(
            f"- {steps} step(s): MMD² {format_value(m['mmd'])}, SW2 {format_value(m['sw2'])}, "
            f"spread {format_value(m['spread_ratio'])}; teacher's best: " + ", ".join(parts)
        )
    return lines


def write_report(out: Path, cfg, metrics: dict, history: list, testbed) -> None:
    from ..eval.report import COLUMNS, format_value

    placement, teacher = _placement(cfg, metrics, testbed)
    keys = [k for k, _ in COLUMNS if k in metrics and k != "wall_s"]
    k = cfg.student.sample_steps
    lines = [
        f"# {cfg.method} on {cfg.testbed}",
        "",
        f"Objective: `{cfg.objective}`; sigma_d = {metrics['sigma_data']:.4g} (the mixture's "
        f"data std unless set); training {metrics['wall_s']:.1f} s.",
        "",
        f"EMA student at {k} step(s) over training:",
        "",
        "| step | " + " | ".join(keys) + " |",
        "|---:|" + "---:|" * len(keys),
    ]
    for row in [*history, {"step": cfg.train.steps, **metrics}]:
        lines.append(f"| {row['step']} | " + " | ".join(format_value(row[c]) for c in keys) + " |")
    lines += [
        "",
        "## Against the teacher's best sampler (MMD²)",
        "",
        *_best_lines(metrics, teacher),
    ]
    lines += [
        "",
        "## Exact consistency error",
        "",
        "Mean ||f(x, sigma) - f*(x, sigma)|| at x = x_0 + sigma eps, f* the exact PF-ODE "
        "consistency function; `denoiser`: the teacher's one-NFE denoiser in place of f.",
        "",
        "| sigma | student | teacher denoiser |",
        "|---:|---:|---:|",
    ]
    for level, errs in metrics["consistency"].items():
        lines.append(
            f"| {level.split('=')[1]} | {format_value(errs['student'])} | "
            f"{format_value(errs['denoiser'])} |"
        )
    lines += ["", "## Where the student lands among the teacher's samplers", "", placement, ""]
    (out / "report.md").write_text("\n".join(lines))


def save_figure(
    path: Path, testbed, draws: dict[int, torch.Tensor], labels: Any, n: int, seed: int
) -> None:
    """The student at each step count beside exact data (one panel each)."""
    from ..eval.plots import save_panels

    rng = torch.Generator().manual_seed(seed + 777)
    panels = {f"student, {k} step(s) (EMA)": x for k, x in sorted(draws.items())}
    panels["exact data"] = testbed.truth.sample(n, rng=rng, cond=labels)
    save_panels(testbed, panels, path, labels=labels)
