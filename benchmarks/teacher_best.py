"""The exact teacher's best sampler at each NFE on any testbed: the row every student is read
against (issue 15: "min over DDIM, DPM-Solver++(2M), Heun, Euler, each on its best time grid").

Each cell is a sampler × time grid × NFE; the grids are the spacings of ``samplers.time_grid``
(``uniform``, ``logsnr``, ``karras``) on two schedules (``edm``: its uniform t is Karras'
rho = 7 grid, so ``edm/karras`` repeats it and is skipped; ``vp-cosine``: its uniform t is
DDIM's "trailing" grid). The exact denoiser is the same on both; only where the evaluations sit
(and, for Euler and Heun, the ODE's variable) differs. Within each NFE budget (Heun's odd budgets count toward
the next even one) the best row is taken separately for each metric in ``--keys``, so a student
"beats the best 4-NFE sampler" only if it is below every one of them::

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

from scoredistill.eval.baseline import cell_metrics, sample_cell
from scoredistill.eval.image_baseline import best_rows
from scoredistill.samplers import SPACINGS
from scoredistill.teachers.testbeds import get_testbed

SAMPLERS = ("ddim", "dpmpp-2m", "heun", "euler")
SCHEDULES = ("edm", "vp-cosine")
KEYS = ("mmd_local", "mmd", "sw2")
SHOW = ("mmd_local", "mmd", "sw2", "within_3std", "mode_coverage")


def grid_rows(name: str, nfes: list[int], n: int, seed: int) -> list[dict]:
    """Every sampler × schedule × spacing × NFE cell of testbed ``name``, scored."""
    rows = []
    for schedule in SCHEDULES:
        testbed = get_testbed(name, schedule=schedule)
        for sampler in SAMPLERS:
            for spacing in SPACINGS:
                if (schedule, spacing) == ("edm", "karras"):  # = edm/uniform
                    continue
                for nfe in nfes:
                    x, labels, used, _ = sample_cell(
                        testbed, sampler, nfe, n, seed, spacing=spacing
                    )
                    rows.append(
                        {
                            "sampler": sampler,
                            "grid": f"{schedule}/{spacing}",
                            "nfe": used,
                            **cell_metrics(testbed, x, labels, seed),
                        }
                    )
    return rows


def best_table(rows: list[dict], nfes: list[int]) -> dict[str, dict[str, dict]]:
    """``{key: {nfe: best row}}``: the minimum of each metric within each NFE budget."""
    return {key: best_rows(rows, nfes, key=key) for key in KEYS}


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
