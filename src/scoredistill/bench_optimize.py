"""Benchmark suites of ``scoredistill optimize`` (``bench --suite sds3d`` / ``particles``).

``sds3d``: every ``*-views`` preset (methods × the view-biased and view-prompted teachers, the
per-camera ceiling and the reward-guided variant); Janus rate, front fraction, PSNR at held-out
cameras, occupancy IoU, wall time, mean ± std over seeds. ``particles``: SDS and VSD particles on
``digits`` and ``ring8`` with the exact-testbed metrics, next to exact samples of the same size.
Finished run folders are read back, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .eval.report import format_value, mean_std
from .io import atomic_write_json, finished_run
from .optimize_presets import PRESETS
from .optimize_report import KEYS_3D, KEYS_PARTICLES

__all__ = ["OPTIMIZE_SUITES", "QUICK_OPTIMIZE", "run_optimize_suite"]

OPTIMIZE_SUITES: dict[str, tuple[str, ...]] = {
    "sds3d": tuple(n for n in PRESETS if "-views" in n),
    "particles": tuple(n for n in PRESETS if "-particles-" in n),
}
QUICK_OPTIMIZE = [
    "train.steps=100",
    "train.eval_every=0",
    "train.checkpoint_every=1000",
    "train.critic_warmup=20",
]


def _cell(preset: str, seed: int, sets: list[str], out: Path) -> dict[str, Any]:
    from .optimize import resolve, run_optimize

    finished = finished_run(out)
    if finished is not None:
        return finished
    cfg, objective = resolve(preset, [*sets, f"train.seed={seed}"])
    return run_optimize(cfg, objective, out)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"seeds": len(runs), **mean_std(runs)}


def _markdown(results: dict[str, Any]) -> str:
    blocks: dict[str, list[str]] = {}
    for name, r in results["presets"].items():
        views = "janus_rate" in r
        keys = (*KEYS_3D, "wall_s") if views else (*KEYS_PARTICLES, "wall_s")
        if views:
            head = "| preset | " + " | ".join(keys) + " |"
        else:
            head = "| preset | " + " | ".join(keys) + " | exact mode_tv | exact spread |"
        lines = blocks.setdefault(head, [head, "|---|" + "---:|" * (head.count("|") - 2)])
        cells = [f"{format_value(r[k])} ± {format_value(r[k + '_std'])}" for k in keys]
        if not views:
            cells += [format_value(r["exact_mode_tv"]), format_value(r["exact_spread_ratio"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = ",".join(str(s) for s in results["seeds"])
    intro = f"Suite `{results['suite']}`, seeds {seeds}, mean ± std over seeds."
    return "\n\n".join([intro, *("\n".join(b) for b in blocks.values())]) + "\n"


def run_optimize_suite(
    suite: str,
    out: Path,
    *,
    quick: bool = False,
    extra: list[str] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    presets: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run every preset of ``suite`` (or the given subset) per seed; write results.json/.md."""
    names = OPTIMIZE_SUITES[suite]
    unknown = sorted(set(presets or ()) - set(names))
    if unknown:
        raise ValueError(f"presets {unknown} are not in suite {suite!r}: {', '.join(names)}")
    sets = [*(QUICK_OPTIMIZE if quick else []), *(extra or [])]
    results: dict[str, Any] = {"suite": suite, "quick": quick, "seeds": list(seeds), "presets": {}}
    for preset in presets or names:
        runs = [_cell(preset, s, sets, out / "runs" / f"{preset}-seed{s}") for s in seeds]
        results["presets"][preset] = _summary(runs)
        atomic_write_json(out / "results.json", results)  # partial results survive a kill
    (out / "results.md").write_text(_markdown(results))
    print(_markdown(results))
    print(json.dumps({"wrote": [str(out / "results.json"), str(out / "results.md")]}))
    return results
