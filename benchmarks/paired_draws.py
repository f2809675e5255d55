"""A finished ``distill`` student against the teacher's best sampler, draw by draw.

One evaluation draw of a few-step student is noisy (its re-noising is random, and on the 2-D
testbeds MMD² at n = 2000 has a noise std of ~1e-3), so a single-draw comparison with a
single-draw teacher cell can go either way. This scores the run's EMA (latest checkpoint,
rebuilt from its ``config.json``) on ``--draws`` independent draws; on each draw the teacher's
every sampler × grid cell at ``--nfe`` (``eval.teacher_best``) is scored against the **same**
reference draw. The teacher's row per metric is its best cell, the one whose mean over the draws
is lowest (a sampler chosen once, as "the best sampler at this NFE"; taking the minimum over the
cells on each draw instead would pick the luckiest of ~23 noisy cells every time)::

    OMP_NUM_THREADS=1 python benchmarks/paired_draws.py runs/s38/r8-4sreg-s1 --nfe 8 \\
        --draws 5 --json runs/s38/r8-4sreg-s1/paired8.json

Draw ``d`` samples from seed ``train.seed + 1000 (d + 1)`` and scores against the exact
reference from that seed + 1 (a run's own evaluation uses ``train.seed + 12345``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from scoredistill.eval.metrics import testbed_metrics
from scoredistill.eval.teacher_best import KEYS, grid_rows
from scoredistill.runs.distill import _label_sampler, trained_student
from scoredistill.sources.generators import rollout


def _student_row(gen, testbed, n: int, seed: int) -> dict[str, float]:
    rng = torch.Generator().manual_seed(seed)
    draw_labels = _label_sampler(testbed)
    labels = draw_labels(n, rng) if draw_labels else None
    with torch.no_grad():
        z = gen.sample_latent(n, rng)
        x = rollout(gen, z, labels, rng)
    return testbed_metrics(testbed, x.double(), labels=labels, seed=seed + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--nfe", type=int, default=8, help="the teacher's budget")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg, testbed, gen = trained_student(args.run)
    students, cells = [], {}
    seeds = [cfg.train.seed + 1000 * (d + 1) for d in range(args.draws)]
    for seed in seeds:
        students.append(_student_row(gen, testbed, args.n, seed))
        for row in grid_rows(cfg.testbed, [args.nfe], args.n, seed, progress=False):
            cells.setdefault(f"{row['sampler']} {row['grid']}", []).append(row)
    best = {
        k: min(cells, key=lambda c, k=k: statistics.fmean(r[k] for r in cells[c])) for k in KEYS
    }
    draws = [
        {
            "seed": seed,
            "student": {k: students[d][k] for k in (*KEYS, "within_3std") if k in students[d]},
            "teacher": {k: {"value": cells[best[k]][d][k], "cell": best[k]} for k in KEYS},
        }
        for d, seed in enumerate(seeds)
    ]
    print(
        f"{args.run}: student ({getattr(gen, 'nfe', 1)} NFE) vs the teacher's best {args.nfe}-NFE"
    )
    print("cell per metric: " + ", ".join(f"{k} {c}" for k, c in best.items()) + "\n")
    print("| draw | " + " | ".join(f"{k} student / teacher" for k in KEYS) + " | within 3σ |")
    print("|---:|" + "---|" * len(KEYS) + "---:|")
    for d, row in enumerate(draws):
        cells = [f"{row['student'][k]:.3g} / {row['teacher'][k]['value']:.3g}" for k in KEYS]
        print(
            f"| {d} | "
            + " | ".join(cells)
            + f" | {row['student'].get('within_3std', float('nan')):.3f} |"
        )
    summary = {}
    for k in KEYS:
        diff = [r["student"][k] - r["teacher"][k]["value"] for r in draws]
        below = sum(x < 0 for x in diff)
        summary[k] = {
            "student_mean": statistics.fmean(r["student"][k] for r in draws),
            "teacher_mean": statistics.fmean(r["teacher"][k]["value"] for r in draws),
            "draws_below": below,
        }
    print()
    for k, s in summary.items():
        print(
            f"{k}: student {s['student_mean']:.4g}, teacher best {s['teacher_mean']:.4g} "
            f"(mean over draws); student below on {s['draws_below']} of {len(draws)} draws"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"run": str(args.run), "nfe": args.nfe, "draws": draws, "summary": summary})
        )


if __name__ == "__main__":
    main()
