"""The exact teacher's best sampler at each NFE on any testbed: the row every student is read
against (issue 15). The cells and the best-per-metric rule are ``scoredistill.eval.teacher_best``
(DDIM, DPM-Solver++(2M), Heun, Euler × five time grids; best row per metric within each NFE
budget); this script prints them::

    OMP_NUM_THREADS=1 python benchmarks/teacher_best.py --testbeds ring8 grid25 cond2d gmm64 \\
        digits --nfe 4 8 --n 3000 --json benchmarks/out/teacher_best.json

``--testbeds`` takes names or mixture ``.npz`` files. Samples: ``--n`` (3000, the peer metric's
count), sampling seed ``--seed``, reference draw ``seed + 1`` (``eval.baseline.cell_metrics``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scoredistill.eval.teacher_best import best_table, grid_rows

SHOW = ("mmd_local", "mmd", "sw2", "within_3std", "mode_coverage")


def markdown(name: str, best: dict[str, dict[str, dict]]) -> str:
    rows = sorted(
        ((int(nfe), key, row) for key, per_nfe in best.items() for nfe, row in per_nfe.items()),
        key=lambda r: r[0],
    )
    lines = [
        f"### {name}",
        "",
        "| NFE | best by | sampler | grid | " + " | ".join(SHOW) + " |",
        "|---:|---|---|---|" + "---:|" * len(SHOW),
    ]
    for nfe, key, row in rows:
        cells = " | ".join(f"{row[k]:.4g}" for k in SHOW)
        lines.append(f"| {nfe} | {key} | {row['sampler']} | {row['grid']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbeds", nargs="+", default=["ring8"])
    parser.add_argument("--nfe", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = {"n": args.n, "seed": args.seed, "testbeds": {}}
    for name in args.testbeds:
        print(f"{name} ...", file=sys.stderr)
        rows = grid_rows(name, args.nfe, args.n, args.seed)
        best = best_table(rows, args.nfe)
        print(markdown(name, best) + "\n")
        out["testbeds"][name] = {"best": best, "rows": rows}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
