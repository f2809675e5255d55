"""DisBack's claim, "DMD2's final quality in fewer generator updates", read from paired runs.

Each seed has a DisBack run and a DMD2 run of the same preset budget with exact evaluations
every 100 generator steps (``train.eval_every=100``)::

    for s in 0 1 2; do for p in disback-ring8 dmd2-ring8; do
      OMP_NUM_THREADS=1 scoredistill distill --preset $p --seed $s --set train.eval_every=100 \\
          --out runs/db-$p-s$s
    done; done
    python benchmarks/disback_curves.py --runs runs --seeds 0 1 2 --json runs/disback_curves.json

For every seed it prints the final MMD² of both, and the first evaluated step at which each run
is at or below DMD2's final MMD² (``never`` when it does not get there). Variants (other
``backtrack.*`` settings) are given as extra ``--variant NAME=DIR_PATTERN`` with ``{s}`` for
the seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(run: Path) -> list[tuple[int, float]]:
    """``(step, MMD²)`` of every exact evaluation, the final one included."""
    points = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("eval") and "mmd" in record:
            points.append((int(record["step"]), float(record["mmd"])))
    return sorted(dict(points).items())


def first_at_or_below(points: list[tuple[int, float]], level: float) -> int | None:
    return next((step for step, mmd in points if mmd <= level), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--testbed", default="ring8")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PATTERN")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    variants = {"disback": f"db-disback-{args.testbed}-s{{s}}"}
    variants |= dict(v.split("=", 1) for v in args.variant)
    rows = []
    print("| seed | run | final MMD² | first step at or below DMD2's final |")
    print("|---:|---|---:|---:|")
    for seed in args.seeds:
        base = args.runs / f"db-dmd2-{args.testbed}-s{seed}"
        if not (base / "metrics.jsonl").exists():
            continue
        reference = curve(base)
        target = reference[-1][1]
        runs = {"dmd2": base} | {n: args.runs / p.format(s=seed) for n, p in variants.items()}
        for name, run in runs.items():
            if not (run / "metrics.jsonl").exists():
                continue
            points = curve(run)
            hit = first_at_or_below(points, target)
            rows.append(
                {"seed": seed, "run": name, "final": points[-1][1], "hit": hit, "curve": points}
            )
            shown = "never" if hit is None else str(hit)
            print(f"| {seed} | {name} | {points[-1][1]:.4f} | {shown} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
