"""SiD on ring8: ``sid_alpha`` × learning-rate ratio × time range (issue 15, item 7).

The ``sid-ring8`` preset restricts SiD's times to σ >= 0.32 (``objective.t_range=[0.3, 0.8]``)
because the paper's range (σ down to 0.002, ``SiD.t_range``'s default) diverged there. This grid
measures whether that choice is evidence: every cell is ``sid-ring8`` with the range set back
(``full``) or kept (``restricted``), ``objective.sid_alpha`` in {0.5, 1.0, 1.2} and the critic's
rate equal to the generator's 1e-4 (``eq``) or the preset's 1e-3 (``10to1``)::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sid_sweep.py --steps 500 --out runs/sidsweep
    python benchmarks/sid_sweep.py --collect --steps 500 --out runs/sidsweep   # read back only

A cell is the run folder ``OUT/<range>-a<alpha>-lr<ratio>-s<seed>`` (``bench.runner.run_cell``:
a finished folder is read back, a partial one resumes). ``diverged``: a non-finite final metric,
or the final MMD² above 1.5x the run's best evaluated MMD² by more than ``NOISE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import scoredistill.runs.distill as distill_run
from scoredistill.bench.runner import run_cell
from scoredistill.eval.report import format_value
from scoredistill.io import atomic_write_json, finished_run, json_safe
from scoredistill.objectives.sid import SiD
from scoredistill.presets.distill import PRESETS

KEYS = ("mmd", "mmd_local", "sw2", "within_3std", "mode_coverage")
RANGES = {
    "full": list(next(f.default for f in dataclasses.fields(SiD) if f.name == "t_range")),
    "restricted": list(PRESETS["sid-ring8"]["objective.t_range"]),
}
LR_CRITIC = {"eq": 1e-4, "10to1": 1e-3}  # the preset's generator rate is 1e-4 (_SID_LIKE)
NOISE = 3 * 0.0011  # 3x the std of MMD² over exact 2000-sample draws (docs/benchmarks.md, ring8)


def folder(out: Path, rng: str, alpha: float, lr: str, seed: int) -> Path:
    return out / f"{rng}-a{alpha:g}-lr{lr}-s{seed}"


def history(run: Path) -> list[tuple[int, float]]:
    """``(step, MMD²)`` of every evaluation logged in ``metrics.jsonl``."""
    points = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("eval") and "mmd" in rec:
            points[int(rec["step"])] = float(rec["mmd"])
    return sorted(points.items())


def summarise(run: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The final metrics, the MMD² history and the divergence flag of one run."""
    row = {k: float(metrics[k]) for k in KEYS}
    curve = history(run)
    best = min((v for _, v in curve if math.isfinite(v)), default=math.inf)
    final = row["mmd"]
    bad = not all(math.isfinite(v) for v in row.values())
    rising = final > 1.5 * best and final - best > NOISE
    rise = final / best if best > 0 else math.inf
    return {**row, "history": curve, "final_over_best": rise, "diverged": bool(bad or rising)}


def cell_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(runs), "diverged": sum(r["diverged"] for r in runs)}
    for k in (*KEYS, "final_over_best"):
        vals = [r[k] for r in runs]
        out[k] = statistics.fmean(vals)
        out[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def markdown(cells: dict[str, dict[str, Any]]) -> str:
    cols = (*KEYS, "final_over_best")
    head = "| range | α | lr G:critic | " + " | ".join(cols) + " | diverged |"
    lines = [head, "|---|---:|---|" + "---:|" * (len(cols) + 1)]
    for name, c in cells.items():
        rng, alpha, lr = name.split("/")
        s = c["stats"]
        vals = [f"{format_value(s[k])} ± {format_value(s[k + '_std'])}" for k in cols]
        ratio = "1:1" if lr == "eq" else "1:10"
        lines.append(f"| {rng} | {alpha} | {ratio} | {' | '.join(vals)} | "
                     f"{s['diverged']}/{s['seeds']} |")  # fmt: skip
    lines += ["", "Per seed (MMD² history at each evaluation; final SW2, coverage):", ""]
    lines += [
        "| cell | seed | MMD² history | SW2 | coverage | diverged |",
        "|---|---:|---|---:|---:|---|",
    ]
    for name, c in cells.items():
        for seed, r in c["runs"].items():
            hist = " → ".join(format_value(v) for _, v in r["history"])
            lines.append(f"| {name} | {seed} | {hist} | {format_value(r['sw2'])} | "
                         f"{r['mode_coverage']:.3f} | {r['diverged']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/sidsweep"))
    p.add_argument("--steps", type=int, default=1500, help="train.steps (the preset's: 1500)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--ranges", nargs="+", default=["full"], choices=list(RANGES))
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0, 1.2])
    p.add_argument("--lrs", nargs="+", default=list(LR_CRITIC), choices=list(LR_CRITIC))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--collect", action="store_true", help="only read back finished folders")
    a = p.parse_args()
    # each run's report.md places the student in the teacher's sampler table: ~20 s of CPU a run,
    # the same table in every cell (`scoredistill baseline --testbed ring8` prints it once)
    distill_run.placement = lambda *_: "(teacher table skipped by benchmarks/sid_sweep.py)"
    cells: dict[str, dict[str, Any]] = {}
    for rng in a.ranges:
        for alpha in a.alphas:
            for lr in a.lrs:
                runs = {}
                for seed in a.seeds:
                    where = folder(a.out, rng, alpha, lr, seed)
                    sets = [
                        f"objective.t_range={json.dumps(RANGES[rng])}",
                        f"objective.sid_alpha={alpha}",
                        f"train.lr_critic={LR_CRITIC[lr]}",
                        f"train.steps={a.steps}",
                        f"train.eval_every={a.eval_every}",
                    ]
                    m = finished_run(where) if a.collect else run_cell(
                        "distill", "sid-ring8", seed, sets, where
                    )  # fmt: skip
                    if m is not None:
                        runs[seed] = summarise(where, m)
                if runs:
                    name = f"{rng}/{alpha:g}/{lr}"
                    cells[name] = {"runs": runs, "stats": cell_stats(list(runs.values()))}
    text = markdown(cells)
    print(text)
    atomic_write_json(a.out / "sweep.json", json_safe({"steps": a.steps, "cells": cells}))
    (a.out / "sweep.md").write_text(text)


if __name__ == "__main__":
    main()
