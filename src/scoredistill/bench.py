"""``scoredistill bench --suite onestep``: methods × testbeds × seeds, mean ± std, teacher rows.

Each cell is a ``distill`` run (its folder is kept under ``DIR/runs/``); the table puts every
method's metrics (mean ± std over seeds) next to the teacher's DDIM and DPM-Solver++(2M) rows at
1–16 NFE on the same testbed. ``--quick`` cuts every run to a smoke budget: it checks that the
suite runs, not how good the methods are.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .eval.report import COLUMNS, format_value
from .io import atomic_write_json

__all__ = ["SUITES", "run_suite"]

SUITES: dict[str, tuple[str, ...]] = {
    "onestep": ("dmd2-ring8", "vsd-ring8", "sid-ring8"),
}
QUICK = [
    "train.steps=150",
    "train.eval_every=0",
    "critic.init_steps=100",
    "train.eval_samples=1000",
]
SEEDS = (0, 1, 2)


def _cell(preset: str, seed: int, sets: list[str], out: Path) -> dict[str, float]:
    from .distill import resolve, run_distill

    cfg, objective = resolve(preset, [*sets, f"train.seed={seed}"])
    return run_distill(cfg, objective, out)


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = [k for k in runs[0] if isinstance(runs[0][k], float | int)]
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in runs]
        out[k] = statistics.fmean(vals)
        out[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def _teacher_rows(testbed_name: str, n: int) -> list[dict]:
    from .eval.baseline import baseline_rows
    from .teachers.testbeds import get_testbed

    rows, _ = baseline_rows(get_testbed(testbed_name), ("ddim", "dpmpp-2m"), (1, 2, 4, 8, 16), n, 0)
    return rows


def _markdown(results: dict[str, Any]) -> str:
    keys = [k for k, _ in COLUMNS if k != "wall_s"]
    lines = []
    for testbed, block in results["testbeds"].items():
        cols = [k for k in keys if any(k in r for r in block["methods"].values())]
        lines += [f"### {testbed}", "", "| row | NFE | " + " | ".join(cols) + " | wall s |"]
        lines.append("|---|---:|" + "---:|" * (len(cols) + 1))
        for name, r in block["methods"].items():
            cells = [f"{format_value(r[k])} ± {format_value(r[k + '_std'])}" for k in cols]
            lines.append(
                f"| **{name}** | {r['nfe']:.0f} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} |"
            )
        for r in block["teacher"]:
            cells = [format_value(r.get(k, "")) for k in cols]
            lines.append(
                f"| {r['sampler']} | {r['nfe']} | " + " | ".join(cells) + f" | {r['wall_s']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def run_suite(
    suite: str,
    out: Path,
    *,
    quick: bool = False,
    extra: list[str] | None = None,
    seeds: tuple[int, ...] = SEEDS,
) -> dict:
    """Run every preset of ``suite`` for each seed; write ``results.json`` and ``results.md``."""
    from .distill import PRESETS

    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    sets = [*(QUICK if quick else []), *(extra or [])]
    results: dict[str, Any] = {"suite": suite, "quick": quick, "seeds": list(seeds), "testbeds": {}}
    for preset in SUITES[suite]:
        testbed = PRESETS[preset]["testbed"]
        runs = [_cell(preset, s, sets, out / "runs" / f"{preset}-seed{s}") for s in seeds]
        block = results["testbeds"].setdefault(testbed, {"methods": {}, "teacher": []})
        block["methods"][preset] = _summary(runs)
        if not block["teacher"]:
            block["teacher"] = _teacher_rows(testbed, int(runs[0]["n"]))
    atomic_write_json(out / "results.json", results)
    (out / "results.md").write_text(_markdown(results))
    print(_markdown(results))
    print(json.dumps({"wrote": [str(out / "results.json"), str(out / "results.md")]}))
    return results
