"""Re-score finished text-to-image runs against the teacher's best sampler over all four samplers.

Runs made before the text-to-image eval included Heun took the teacher's best row over DDIM,
DPM-Solver++(2M) and Euler only. This script samples the missing sampler (``--samplers``,
default Heun, on every grid) with each run's own config (seed, guidance, sample count, NFEs;
so its draws are paired with the run's), and takes the best of those rows and the run's stored
best rows at each NFE: the minimum over all four samplers. It prints the student's FD beside
it::

    OMP_NUM_THREADS=1 python benchmarks/sd_teacher_rows.py runs/sd2-sidlsg-s0 runs/sd2-sidlsg-s1 \\
        --json runs/sd_teacher_rows.json

The student's numbers are read from the run's ``metrics.json``; only the teacher is re-sampled.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scoredistill.config import from_dict
from scoredistill.eval.image_baseline import best_rows
from scoredistill.runs.sd import SDDistillConfig, load_teacher, teacher_rows


def rescore(run: Path, samplers: tuple[str, ...]) -> dict:
    data = json.loads((run / "config.json").read_text())
    data.pop("preset", None)
    cfg = from_dict(SDDistillConfig, {**data, "eval": {**data["eval"], "samplers": samplers}})
    metrics = json.loads((run / "metrics.json").read_text())
    rows = teacher_rows(cfg, load_teacher(cfg), float(metrics["guidance"]))
    old = metrics.get("teacher_best", {})
    best = best_rows([*rows, *old.values()], cfg.eval.nfe)
    return {
        "run": str(run),
        "student_fd": metrics["fd"],
        "student_acc": metrics.get("class_acc"),
        "best": best,
        "best_before": {k: v["fd"] for k, v in old.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--samplers", nargs="+", default=["heun"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = [rescore(r, tuple(args.samplers)) for r in args.runs]
    print("| run | student FD | NFE | teacher best (all samplers) | sampler, grid | before |")
    print("|---|---:|---:|---:|---|---:|")
    for r in results:
        for nfe, row in r["best"].items():
            before = r["best_before"].get(nfe, float("nan"))
            print(
                f"| {Path(r['run']).name} | {r['student_fd']:.1f} | {nfe} | {row['fd']:.1f} "
                f"| {row['sampler']}, {row['spacing']} | {before:.1f} |"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
