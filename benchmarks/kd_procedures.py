"""KD procedures × 3 seeds: the evidence table of docs/kd_procedures.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kd_procedures.py run PRESET[:k=v,...] ...
    .venv/bin/python benchmarks/kd_procedures.py table

``run`` writes ``runs/kd_procedures/<tag>/seed<S>/`` (config.json, metrics.json, report.md,
PNGs) for seeds 0, 1, 2 and appends the scalar metrics to ``runs/kd_procedures/summary.jsonl``;
``table`` prints mean ± std (sample std over seeds) of every metric that has a ``baseline_``
counterpart, next to it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from scoredistill.runs.kd_procedures import run_procedure

ROOT = Path("runs/kd_procedures")
SEEDS = (0, 1, 2)


def run(specs: list[str]) -> None:
    """``PRESET`` or ``PRESET:key=value,key=value`` per argument; every seed in ``SEEDS``."""
    for spec in specs:
        name, _, extra = spec.partition(":")
        sets = [s for s in extra.split(",") if s]
        tag = name + ("-" + "-".join(s.replace("=", "") for s in sets) if sets else "")
        for seed in SEEDS:
            metrics = run_procedure(name, [*sets, f"seed={seed}"], ROOT / tag / f"seed{seed}")
            flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            with open(ROOT / "summary.jsonl", "a") as f:
                f.write(json.dumps({"tag": tag, "seed": seed, **flat}) + "\n")
            print(tag, seed, f"{metrics['wall_s']:.1f}s", flush=True)


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f} (n=1)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table() -> None:
    """Markdown rows: tag | metric | mean ± std | baseline mean ± std | wall s."""
    latest: dict[tuple[str, int], dict] = {}  # a rerun of (tag, seed) replaces the earlier row
    for line in (ROOT / "summary.jsonl").read_text().splitlines():
        row = json.loads(line)
        latest[row["tag"], row["seed"]] = row
    by: dict[str, list[dict]] = defaultdict(list)
    for (tag, _), row in latest.items():
        by[tag].append(row)
    print("| run | metric | method | baseline | wall s |\n|---|---|---:|---:|---:|")
    for tag, rows in by.items():
        wall = _fmt([r["wall_s"] for r in rows])
        for key in rows[0]:
            if f"baseline_{key}" in rows[0]:
                method = _fmt([r[key] for r in rows])
                base = _fmt([r[f"baseline_{key}"] for r in rows])
                print(f"| `{tag}` | {key} | {method} | {base} | {wall} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(sys.argv[2:])
    elif sys.argv[1:2] == ["table"]:
        table()
    else:
        sys.exit(__doc__)
