"""``scoredistill bench --suite onestep``: methods × testbeds × seeds, mean ± std, teacher rows
(``sds3d`` and ``particles`` run ``optimize`` presets: ``bench_optimize``; ``kd`` runs the
knowledge-distillation presets with their verdicts: ``kd.bench``).

Each cell is a ``distill`` run (its folder is kept under ``DIR/runs/``); the table puts every
method's metrics (mean ± std over seeds) next to the teacher's DDIM and DPM-Solver++(2M) rows at
1–16 NFE on the same testbed. ``--quick`` cuts every run to a 60-step smoke budget: it checks that
the suite runs and every method moves away from its untrained generator (``initial_mmd``), not how
good the methods are. Finished runs are read back from their folders, so re-running the same
command after an interruption continues the benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .bench_optimize import OPTIMIZE_SUITES
from .eval.report import COLUMNS, format_value, mean_std
from .io import atomic_write_json, finished_run
from .kd.bench import suite_presets

__all__ = ["SUITES", "run_suite"]


def _grid(methods: tuple[str, ...], testbeds: tuple[str, ...]) -> tuple[str, ...]:
    from .presets import PRESETS

    return tuple(f"{m}-{tb}" for tb in testbeds for m in methods if f"{m}-{tb}" in PRESETS)


_MAIN = ("dmd2", "dmd2-gan", "dmd", "vsd", "sid", "sim", "fdistill-js", "sfd")
SUITES: dict[str, tuple[str, ...]] = {
    # every method on every testbed (the README's leaderboard)
    "onestep": _grid(_MAIN, ("ring8", "grid25", "cond2d", "gmm64", "digits")),
    # f-distill's claim: forward-KL-like divergences keep the weights of rare modes
    "fdistill": _grid(
        ("dmd2", "fdistill-rkl", "fdistill-kl", "fdistill-js", "fdistill-sh"),
        ("ring8-unbalanced",),
    ),
    # score distillation as optimization (``bench_optimize``): sds3d, particles
    **OPTIMIZE_SUITES,
    # knowledge distillation: every kd preset beside its baseline, with a verdict (``kd.bench``)
    "kd": tuple(suite_presets()),
}
QUICK = [
    "train.steps=60",
    "train.batch_size=256",
    "train.eval_every=0",
    "train.checkpoint_every=1000",
    "critic.init_steps=60",
    "train.eval_samples=1000",
    "train.ema_halflife=10",  # the default 100-step half-life would hide a 60-step run
]
SEEDS = (0, 1, 2)


def _cell(preset: str, seed: int, sets: list[str], out: Path) -> dict[str, Any]:
    """One run; a finished run folder (``metrics.json`` present) is read back, so an interrupted
    benchmark resumes where it stopped."""
    from .distill import resolve, run_distill

    finished = finished_run(out)
    if finished is not None:
        return finished
    cfg, objective = resolve(preset, [*sets, f"train.seed={seed}"])
    return run_distill(cfg, objective, out)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return mean_std(
        [r | {"initial_mmd": r["initial"]["mmd"]} if "initial" in r else r for r in runs]
    )


def _teacher_rows(testbed_name: str, n: int) -> list[dict]:
    from .eval.baseline import baseline_rows
    from .teachers.testbeds import get_testbed

    rows, _ = baseline_rows(get_testbed(testbed_name), ("ddim", "dpmpp-2m"), (1, 2, 4, 8, 16), n, 0)
    return rows


def _mean_std(r: dict[str, Any], k: str) -> str:
    return f"{format_value(r[k])} ± {format_value(r[k + '_std'])}" if k in r else ""


def _markdown(results: dict[str, Any]) -> str:
    titles = {}
    for k, t in COLUMNS:
        if k != "wall_s":
            titles[k] = t
        if k == "mode_tv":  # mode weights of blurred samples: where f-distill's claim shows
            titles["mode_tv_assigned"] = "assigned TV↓"
    titles["initial_mmd"] = "untrained MMD²"
    lines = []
    for testbed, block in results["testbeds"].items():
        cols = [k for k in titles if any(k in r for r in block["methods"].values())]
        head = " | ".join(titles[k] for k in cols)
        lines += [f"### {testbed}", "", f"| row | NFE | {head} | wall s |"]
        lines.append("|---|---:|" + "---:|" * (len(cols) + 1))
        for name, r in block["methods"].items():
            cells = " | ".join(_mean_std(r, k) for k in cols)
            lines.append(f"| **{name}** | {r['nfe']:.0f} | {cells} | {r['wall_s']:.0f} |")
        for r in block["teacher"]:
            cells = " | ".join(format_value(r.get(k, "")) for k in cols)
            lines.append(f"| {r['sampler']} | {r['nfe']} | {cells} | {r['wall_s']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def run_suite(
    suite: str,
    out: Path,
    *,
    quick: bool = False,
    extra: list[str] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    presets: tuple[str, ...] | None = None,
) -> dict:
    """Run every preset of ``suite`` (or the given subset) for each seed; write ``results.json``
    and ``results.md``."""
    from .presets import PRESETS

    if suite in OPTIMIZE_SUITES:  # optimize runs, not distill runs: their own runner
        from .bench_optimize import run_optimize_suite

        return run_optimize_suite(
            suite, out, quick=quick, extra=extra, seeds=seeds, presets=presets
        )
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    if suite == "kd":  # supervised runs with their own table and verdicts
        from .kd.bench import run_kd_suite

        if extra:
            raise ValueError("--set is not supported by --suite kd; use each preset's fields")
        return run_kd_suite(out, quick=quick, seeds=seeds, presets=list(presets or []) or None)
    unknown = sorted(set(presets or ()) - set(SUITES[suite]))
    if unknown:
        raise ValueError(
            f"presets {unknown} are not in suite {suite!r}: {', '.join(SUITES[suite])}"
        )
    sets = [*(QUICK if quick else []), *(extra or [])]
    results: dict[str, Any] = {"suite": suite, "quick": quick, "seeds": list(seeds), "testbeds": {}}
    for preset in presets or SUITES[suite]:
        testbed = PRESETS[preset]["testbed"]
        runs = [_cell(preset, s, sets, out / "runs" / f"{preset}-seed{s}") for s in seeds]
        block = results["testbeds"].setdefault(testbed, {"methods": {}, "teacher": []})
        block["methods"][preset] = _summary(runs)
        if not block["teacher"]:
            block["teacher"] = _teacher_rows(testbed, int(runs[0]["n"]))
        atomic_write_json(out / "results.json", results)  # partial results survive a kill
    (out / "results.md").write_text(_markdown(results))
    print(_markdown(results))
    print(json.dumps({"wrote": [str(out / "results.json"), str(out / "results.md")]}))
    return results
