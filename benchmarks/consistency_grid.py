"""Few-step TrigFlow students (sCM, rCM, SANA-Sprint) re-scored on other intermediate-angle grids.

A trained run's EMA student (``model/ema/`` of its last checkpoint, the network
``runs.consistency.run`` evaluates) is rebuilt with ``runs.consistency._build_student`` and
scored with ``runs.consistency._score`` (n = ``train.eval_samples``, ``testbed_metrics``), at
the run's default grid (``sources.consistency.MID_ANGLES``) and at each candidate grid of
``GRIDS``. A TrigFlow angle is the VE level ``sigma = sigma_d tan(theta)``, so an angle grid means
the same ``sigma / sigma_d`` on every testbed; the log-uniform grids are defined in
``sigma / sigma_d`` and mapped by ``mid_from_ratios``. ``--steps 1`` has no grid: the one-step
student on the same three draws.

Three draws per run (``_score``'s ``seed``: student noise ``seed + 12345``, reference draw
``seed + 1``):

- ``run``: the run's own seed, default grid only; it must reproduce ``metrics.json``'s
  ``by_steps`` (checked; the script stops otherwise);
- ``select``: seed + 1000, every grid; the grid with the lowest mean rank over MMD², local MMD²
  and SW2 (ties: MMD²) is selected, per run and step count;
- ``eval``: seed + 2000, a fresh draw, every grid; the reported numbers.

    OMP_NUM_THREADS=1 python benchmarks/consistency_grid.py runs/ctb/rcm-digits-s0 --steps 2 4

Prints one line per (run, steps, grid) and writes ``--json`` (default
``benchmarks/out/consistency_grid.json``). ``--teacher``: instead, the teacher's best 4- and
8-NFE cells (``TEACHER_BEST``) on the same three draws of each run's seed (for seed 0 the
``run`` draw is the one the documented table used).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from scoredistill.config import from_dict
from scoredistill.eval.baseline import cell_metrics, sample_cell
from scoredistill.runs.consistency import ConsistencyConfig, _build_student, _score
from scoredistill.sources.consistency import MID_ANGLES, mid_from_ratios
from scoredistill.teachers.testbeds import get_testbed
from scoredistill.teachers.trigflow import mixture_sigma_data
from scoredistill.train.common import latest_checkpoint, module_state

METRICS = ("mmd", "mmd_local", "sw2")
SELECT, EVAL = 1000, 2000  # seed offsets of the selection and evaluation draws
R = math.tan  # sigma / sigma_d of an angle


def _log_uniform(first: float, last: float, count: int) -> tuple[float, ...]:
    """``count`` angles whose ``sigma / sigma_d`` fall log-uniformly from ``first`` to ``last``."""
    return mid_from_ratios([first * (last / first) ** (i / (count - 1)) for i in range(count)])


def _grids() -> dict[int, dict[str, tuple[float, ...]]]:
    """Candidate intermediate angles per step count (first entry: the default ``MID_ANGLES``)."""
    two = {f"{a:.1f}": (a,) for a in (1.3, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5)}
    three = {
        "1.1,0.6": (1.1, 0.6), "1.1,0.4": (1.1, 0.4), "1.0,0.5": (1.0, 0.5),
        "1.0,0.3": (1.0, 0.3), "0.9,0.4": (0.9, 0.4), "1.2,0.7": (1.2, 0.7),
        "log r(1.1)..0.2": _log_uniform(R(1.1), 0.2, 2),
    }  # fmt: skip
    four = {
        "1.1,0.6,0.3": (1.1, 0.6, 0.3), "1.1,0.7,0.4": (1.1, 0.7, 0.4),
        "1.0,0.5,0.2": (1.0, 0.5, 0.2), "1.1,0.8,0.5": (1.1, 0.8, 0.5),
        "0.9,0.5,0.2": (0.9, 0.5, 0.2), "1.3,0.8,0.4": (1.3, 0.8, 0.4),
        **{f"log r(1.1)..{last}": _log_uniform(R(1.1), last, 3)
           for last in (0.05, 0.1, 0.2, 0.4, 0.7)},
        "log r(1.3)..0.2": _log_uniform(R(1.3), 0.2, 3),
        # rCM's 3-step grid with a last level below it (added in stop 30, after the first pass)
        "1.3,1.0,0.2": (1.3, 1.0, 0.2), "1.3,1.0,0.1": (1.3, 1.0, 0.1),
    }  # fmt: skip
    named = {2: two, 3: three, 4: four}
    one = {1: {"default": ()}}  # one step: no intermediate angle, only the fresh draws
    return one | {k: {"default": MID_ANGLES[k], **v} for k, v in named.items()}


GRIDS = _grids()


# the teacher's best 4- and 8-NFE cells at n = 2000 (docs/consistency.md, "The teacher's best
# sampler (n = 2000, best row per metric)"; grid25: benchmarks/out/teacher_best_grid25.json):
# (sampler, schedule/spacing) of each metric's best row; re-scored on the same draws as students
_VPU = "vp-cosine/uniform"
TEACHER_BEST: dict[str, dict[int, tuple[tuple[str, str], ...]]] = {
    "cond2d": {4: (("euler", _VPU), ("ddim", _VPU)), 8: (("ddim", _VPU), ("euler", _VPU))},
    "gmm64": {4: (("euler", _VPU),), 8: (("euler", _VPU),)},
    "digits": {4: (("dpmpp-2m", "edm/uniform"),), 8: (("dpmpp-2m", "vp-cosine/logsnr"),)},
    "grid25": {4: (("euler", _VPU),), 8: (("euler", _VPU),)},
}


def teacher_rows(name: str, seed: int, n: int) -> list[dict]:
    """The teacher's best cells of testbed ``name`` on the three draws of run seed ``seed``
    (sampling seed ``s``, reference ``s + 1``: the reference draws of the students' rows)."""
    rows = []
    for nfe, cells in TEACHER_BEST.get(name, {}).items():
        for sampler, grid in cells:
            schedule, spacing = grid.split("/")
            testbed = get_testbed(name, schedule=schedule)
            row = {"testbed": name, "seed": seed, "nfe": nfe, "sampler": sampler, "grid": grid}
            for draw, s in (("run", seed), ("select", seed + SELECT), ("eval", seed + EVAL)):
                x, labels, _, _ = sample_cell(testbed, sampler, nfe, n, s, spacing=spacing)
                row[draw] = _row(cell_metrics(testbed, x, labels, s))
            rows.append(row)
            print(f"teacher {name} s{seed} {nfe} NFE {sampler} {grid}: run {_fmt(row['run'])}  "
                  f"eval {_fmt(row['eval'])}", flush=True)  # fmt: skip
    return rows


def load_run(run: Path):
    """``(cfg, testbed, ema student, stored metrics)`` of a finished TrigFlow run folder."""
    cfg = from_dict(ConsistencyConfig, json.loads((run / "config.json").read_text()))
    stored = json.loads((run / "metrics.json").read_text())
    testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
    sigma_d = cfg.student.sigma_data or mixture_sigma_data(testbed.truth)
    student = _build_student(cfg, testbed, sigma_d)
    ckpt = latest_checkpoint(run / "checkpoints")
    if ckpt is None or ckpt.name != f"step-{cfg.train.steps}":
        raise SystemExit(f"{run}: no final checkpoint step-{cfg.train.steps} (found {ckpt})")
    student.load_state_dict(module_state(ckpt, "ema"))
    return cfg, testbed, student.eval().requires_grad_(False), stored


def _row(metrics: dict) -> dict:
    return {k: float(metrics[k]) for k in METRICS}


def _select(scores: dict[str, dict]) -> str:
    """The grid of lowest mean rank over ``METRICS`` (ties: lowest MMD²)."""
    names = list(scores)
    ranks = dict.fromkeys(names, 0.0)
    for m in METRICS:
        for i, name in enumerate(sorted(names, key=lambda g: scores[g][m])):
            ranks[name] += i / len(METRICS)
    return min(names, key=lambda g: (ranks[g], scores[g]["mmd"]))


def score_run(run: Path, steps: list[int], tol: float) -> list[dict]:
    cfg, testbed, student, stored = load_run(run)
    n, seed, sd = cfg.train.eval_samples, cfg.train.seed, student.sigma_data
    rows = []
    for k in steps:
        row = {"run": str(run), "method": cfg.method, "testbed": cfg.testbed, "seed": seed}
        row |= {"steps": k, "sigma_data": sd, "n": n}
        top = cfg.student.sample_top  # the run's first angle (None: sCM's)
        run_draw = _row(_score(student, testbed, k, n, seed, None, top)[0])
        if str(k) in stored["by_steps"]:
            want = _row(stored["by_steps"][str(k)])
            diff = max(abs(run_draw[m] - want[m]) for m in METRICS)
            row["reproduced_max_abs_diff"] = diff
            if diff > tol:
                raise SystemExit(f"{run} {k}-step: re-scored {run_draw} != stored {want}")
        row["run_draw_default"] = run_draw
        grids = {}
        for name, mid in GRIDS[k].items():
            grids[name] = {
                "mid": list(mid), "sigma_over_sigma_d": [R(a) for a in mid],
                "select": _row(_score(student, testbed, k, n, seed + SELECT, mid, top)[0]),
                "eval": _row(_score(student, testbed, k, n, seed + EVAL, mid, top)[0]),
            }  # fmt: skip
        row["grids"], row["selected"] = grids, _select({g: v["select"] for g, v in grids.items()})
        rows.append(row)
        _print(row)
    return rows


def _fmt(m: dict) -> str:
    return f"{m['mmd']:.2e} / {m['mmd_local']:.2e} / {m['sw2']:.4f}"


def _print(row: dict) -> None:
    head = f"{Path(row['run']).name} {row['steps']}-step"
    print(f"{head} run draw (default): {_fmt(row['run_draw_default'])}", flush=True)
    for name, g in row["grids"].items():
        mark = " <- selected" if name == row["selected"] else ""
        r = ",".join(f"{x:.2f}" for x in g["sigma_over_sigma_d"])
        print(f"  {name:>18} (s/sd {r}): select {_fmt(g['select'])}  eval {_fmt(g['eval'])}{mark}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4], choices=sorted(GRIDS))
    ap.add_argument("--tol", type=float, default=1e-9, help="reproduction tolerance (abs)")
    ap.add_argument("--json", default="benchmarks/out/consistency_grid.json")
    ap.add_argument("--teacher", action="store_true", help="only the teacher's best cells")
    args = ap.parse_args()
    start, rows = time.perf_counter(), []
    for run in args.runs:
        if args.teacher:
            cfg = json.loads((run / "config.json").read_text())
            rows += teacher_rows(cfg["testbed"], cfg["train"]["seed"], cfg["train"]["eval_samples"])
        else:
            rows += score_run(run, args.steps, args.tol)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))  # after every run
    print(f"wrote {args.json} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
