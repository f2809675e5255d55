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

Two checks on what the draws can show. Exact samples scored in the student's place on every
draw (their own seed, the same reference) give what a **perfect** student would read: where the
teacher's cell is level with them, no student can be shown below it on these draws. The summary
gives the **paired** differences student − teacher and exact − teacher with their standard errors
(the student and the teacher's cells see the same reference, and both start from the same normal
draws, so the difference is measured far better than either number). Choosing the best of ~23
cells on the very draws it is judged on favours the teacher (the luckiest cell wins); with
``--select S`` the cell is chosen on the first ``S`` draws and compared on the other
``--draws − S`` only (only the chosen cells are sampled there)::

    OMP_NUM_THREADS=1 python benchmarks/paired_draws.py RUN --nfe 8 --draws 20 --select 5

A consistency run (sCM, rCM, CD, Hyper-SD, SANA-Sprint) samples at the step count ``--steps``
gives, from the same seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from scoredistill.eval.baseline import draw_labels
from scoredistill.eval.metrics import testbed_metrics
from scoredistill.eval.teacher_best import KEYS, cell_name, grid_rows
from scoredistill.runs.consistency import student_noise
from scoredistill.runs.distill import trained_student
from scoredistill.sources.generators import rollout

# Kept beside the three metrics: a student pulled to the mode centres (a reward hack) reads well
# on all three but shows here, as a spread ratio below 1 and a mean log p above the exact draws'.
_SHAPE = ("within_3std", "spread_ratio", "logp")


def _distill_sampler(gen, testbed):
    """``(n, rng) -> (x, labels)`` of a ``distill`` run's EMA student (its own step count)."""

    def sample(n: int, rng: torch.Generator):
        labels = draw_labels(testbed, n, rng)  # None on an unconditional testbed
        return rollout(gen, gen.sample_latent(n, rng), labels, rng), labels

    return sample


def _consistency_sampler(student, testbed, steps: int):
    """``(n, rng) -> (x, labels)`` of a consistency run's EMA student at ``steps`` steps."""

    def sample(n: int, rng: torch.Generator):
        z, labels = student_noise(testbed, n, rng)
        return student.sample(z, labels, steps=steps, rng=rng), labels

    return sample


def load(run: Path, steps: int | None):
    """``(cfg, testbed, sample, nfe)`` of a finished run folder: a ``distill`` run (its EMA
    student, its own step count) or a consistency run (sCM, rCM, CD, Hyper-SD, SANA-Sprint:
    its EMA student at ``steps`` steps, which it needs)."""
    if "student" not in json.loads((run / "config.json").read_text()):
        cfg, testbed, gen = trained_student(run)
        return cfg, testbed, _distill_sampler(gen, testbed), getattr(gen, "nfe", 1)
    if steps is None:
        raise SystemExit(f"{run} is a consistency run: give --steps")
    from consistency_grid import load_run

    cfg, testbed, student, _ = load_run(run)
    return cfg, testbed, _consistency_sampler(student, testbed, steps), steps


def _student_row(sample, testbed, n: int, seed: int) -> dict[str, float]:
    """The student's draw from ``seed`` (the teacher cells' seed, so both start from the same
    normal draws), scored against the reference from ``seed + 1``."""
    with torch.no_grad():
        x, labels = sample(n, torch.Generator().manual_seed(seed))
    return testbed_metrics(testbed, x.double(), labels=labels, seed=seed + 1)


def _std(values) -> float:
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _exact_row(testbed, n: int, seed: int) -> dict[str, float]:
    """Exact samples in the student's place (their own seed, the same reference draw): what a
    perfect student would score, so a gap to the teacher smaller than this row's noise cannot
    show on these draws."""
    rng = torch.Generator().manual_seed(seed + 500)
    labels = draw_labels(testbed, n, rng)
    x = testbed.truth.sample(n, rng=rng, cond=labels)
    return testbed_metrics(testbed, x.double(), labels=labels, seed=seed + 1)


def _best_cells(cells: dict[str, list[dict]], draws: range) -> dict[str, str]:
    """Per metric, the cell with the lowest mean over ``draws``."""
    return {
        k: min(cells, key=lambda c, k=k: statistics.fmean(cells[c][d][k] for d in draws))
        for k in KEYS
    }


def _summary(draws: list[dict]) -> dict[str, dict[str, float]]:
    """Per metric: means, draws below, the exact draws' mean and spread, and the paired
    differences (student − teacher, exact − teacher, student − exact on the same reference draw) with their
    standard errors: the student shares each teacher cell's noise and reference, so the paired
    difference is measured far better than either number alone."""
    out = {}
    for k in KEYS:
        student = [r["student"][k] for r in draws]
        teacher = [r["teacher"][k]["value"] for r in draws]
        exact = [r["exact"][k] for r in draws]
        out[k] = {
            "student_mean": statistics.fmean(student),
            "teacher_mean": statistics.fmean(teacher),
            "draws_below": sum(s < t for s, t in zip(student, teacher, strict=True)),
            "exact_mean": statistics.fmean(exact),
            "exact_std": _std(exact),
            **_paired("diff", student, teacher),
            **_paired("exact_diff", exact, teacher),
            **_paired("from_exact", student, exact),
        }
    return out


def shape_means(draws: list[dict]) -> dict[str, tuple[float, float]]:
    """``{key: (student mean, exact mean)}`` over the draws for each of ``_SHAPE`` the rows hold
    (files written before stop 43 hold ``within_3std`` only)."""
    return {
        k: tuple(statistics.fmean(r[who][k] for r in draws) for who in ("student", "exact"))
        for k in _SHAPE
        if all(k in r["student"] and k in r["exact"] for r in draws)
    }


def _paired(name: str, a: list[float], b: list[float]) -> dict[str, float]:
    """``{name}_mean`` and ``{name}_se``: the mean of ``a − b`` draw by draw and its standard
    error."""
    diff = [x - y for x, y in zip(a, b, strict=True)]
    return {f"{name}_mean": statistics.fmean(diff), f"{name}_se": _std(diff) / len(diff) ** 0.5}


def _print(draws: list[dict], summary: dict, head: str, best: dict[str, str]) -> None:
    print(head)
    print("cell per metric: " + ", ".join(f"{k} {c}" for k, c in best.items()) + "\n")
    print("| draw | " + " | ".join(f"{k} student / teacher" for k in KEYS) + " | within 3σ |")
    print("|---:|" + "---|" * len(KEYS) + "---:|")
    for row in draws:
        cells = [f"{row['student'][k]:.3g} / {row['teacher'][k]['value']:.3g}" for k in KEYS]
        within = row["student"].get("within_3std", float("nan"))
        print(f"| {row['draw']} | " + " | ".join(cells) + f" | {within:.3f} |")
    print()
    for k, (student, exact) in shape_means(draws).items():
        print(f"{k}: student {student:.4g}, exact draws {exact:.4g} (mean over draws)")
    for k, s in summary.items():
        print(
            f"{k}: student {s['student_mean']:.4g}, teacher best {s['teacher_mean']:.4g} "
            f"(mean over draws); student below on {s['draws_below']} of {len(draws)} draws; "
            f"exact draws {s['exact_mean']:.4g} ± {s['exact_std']:.2g} (a perfect student); "
            f"student − teacher {s['diff_mean']:.3g} ± {s['diff_se']:.2g}, exact − teacher "
            f"{s['exact_diff_mean']:.3g} ± {s['exact_diff_se']:.2g} (paired mean ± its std error)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--nfe", type=int, default=8, help="the teacher's budget")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument(
        "--select",
        type=int,
        default=0,
        help="choose the teacher's best cell on the first SELECT draws and compare on the rest "
        "(0: choose and compare on every draw)",
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=None, help="a consistency run's step count")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not 0 <= args.select < args.draws:
        parser.error(f"--select must be in [0, --draws): got {args.select} with {args.draws}")
    cfg, testbed, sample, nfe = load(args.run, args.steps)
    seeds = [cfg.train.seed + 1000 * (d + 1) for d in range(args.draws)]
    cells: dict[str, list[dict]] = {}
    for seed in seeds[: args.select or args.draws]:  # every cell on the selection draws
        for row in grid_rows(cfg.testbed, [args.nfe], args.n, seed, progress=False):
            cells.setdefault(cell_name(row), []).append(row)
    picked = range(args.select) if args.select else range(args.draws)
    best = _best_cells(cells, picked)
    compared = range(args.select, args.draws) if args.select else picked
    draws = []
    for d in compared:
        seed = seeds[d]
        student, exact = (
            _student_row(sample, testbed, args.n, seed),
            _exact_row(testbed, args.n, seed),
        )
        if args.select:  # only the chosen cells on the comparison draws
            rows = grid_rows(
                cfg.testbed, [args.nfe], args.n, seed, progress=False, only=set(best.values())
            )
            teacher = {cell_name(r): r for r in rows}
        else:
            teacher = {c: cells[c][d] for c in best.values()}
        draws.append(
            {
                "draw": d,
                "seed": seed,
                "student": {k: student[k] for k in (*KEYS, *_SHAPE) if k in student},
                "teacher": {k: {"value": teacher[best[k]][k], "cell": best[k]} for k in KEYS},
                "exact": {k: exact[k] for k in (*KEYS, *_SHAPE) if k in exact},
            }
        )
    summary = _summary(draws)
    chosen = f"chosen on draws 0-{args.select - 1}" if args.select else "chosen on these draws"
    head = f"{args.run}: student ({nfe} NFE) vs the teacher's best {args.nfe}-NFE cell ({chosen})"
    _print(draws, summary, head, best)
    if args.json is not None:
        payload = {"run": str(args.run), "nfe": args.nfe, "select": args.select}
        args.json.write_text(json.dumps(payload | {"draws": draws, "summary": summary}))


if __name__ == "__main__":
    main()
