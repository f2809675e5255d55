"""Few-step students against the teacher's best 4- and 8-NFE cells on the same reference draw.

Reads each run's ``metrics.json`` ``by_steps`` (the final EMA student scored at 1-4 steps on the
run's own draw, ``runs.consistency``) and the teacher cells that ``benchmarks/consistency_grid.py
--teacher`` wrote for the same testbed and seed (its ``run`` draw is the runs' draw), and prints
one line per (run, steps) with MMD², local MMD², SW2 and spread, then whether the student is
below the best 4-NFE cell (and the 8-NFE cell) on all three metrics::

    OMP_NUM_THREADS=1 python benchmarks/consistency_grid.py RUNS... --teacher --json cells.json
    python benchmarks/steps_table.py RUNS... --cells cells.json --json out.json

Runs of a seed whose teacher cells are missing are refused (one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scoredistill.io import atomic_write_json

METRICS = ("mmd", "mmd_local", "sw2")


def teacher_cells(paths: list[Path]) -> dict[tuple[str, int, int], dict[str, float]]:
    """``(testbed, seed, nfe) -> {metric: value}`` on the ``run`` draw."""
    cells = {}
    for path in paths:
        for c in json.loads(path.read_text()):
            cells[(c["testbed"], int(c["seed"]), int(c["nfe"]))] = c["run"]
    return cells


def run_rows(run: Path, cells: dict) -> list[dict]:
    """One row per step count of ``run``'s ``by_steps``, with the paired teacher cells."""
    cfg = json.loads((run / "config.json").read_text())
    tb, seed = cfg["testbed"], int(cfg["train"]["seed"])
    missing = [n for n in (4, 8) if (tb, seed, n) not in cells]
    if missing:
        raise KeyError(f"{run}: no teacher cell for testbed {tb}, seed {seed}, NFE {missing}")
    rows = []
    by_steps = json.loads((run / "metrics.json").read_text())["by_steps"]
    for k, m in sorted(by_steps.items(), key=lambda kv: int(kv[0])):
        row = {"run": str(run), "testbed": tb, "seed": seed, "steps": int(k)}
        row |= {key: m[key] for key in (*METRICS, "spread_ratio")}
        for n in (4, 8):
            row[f"below_{n}"] = all(m[key] < cells[(tb, seed, n)][key] for key in METRICS)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--cells", nargs="+", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cells = teacher_cells(args.cells)
    try:
        rows = [r for run in args.runs for r in run_rows(run, cells)]
    except (KeyError, FileNotFoundError) as err:
        print(f"steps_table: {err}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r['run']:<48} {r['steps']} steps  mmd {r['mmd']:.4g}  local {r['mmd_local']:.4g}"
              f"  sw2 {r['sw2']:.4g}  spread {r['spread_ratio']:.2f}"
              f"  below best 4 NFE: {r['below_4']}  8 NFE: {r['below_8']}")  # fmt: skip
    for (tb, seed, n), c in sorted(cells.items()):
        print(
            f"teacher {tb} seed {seed} best {n} NFE  "
            + "  ".join(f"{k} {c[k]:.4g}" for k in METRICS)
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, rows, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
