"""Re-state run tables with issue 15's local metric (``mmd_local``: unbiased MMD² with RBF kernels
at 0.01, 0.1 and 1 × the median squared distance, ``eval.metrics.local_bandwidths``).

Each ``--group LABEL=GLOB[,GLOB]`` is one table row: the run folders the globs match (one per seed).
A row reads each run's ``metrics.json`` (``--steps K``: its ``by_steps[K]``, for consistency
runs); ``--rescore`` also re-scores each run's ``samples.npz`` with the library's own call
(``testbed_metrics`` on the run's testbed, its ``eval_samples`` and labels, reference seed
``train.seed + 1``, as ``runs/distill.py`` and ``runs/consistency.py`` do) and records how far
the stored numbers are from the re-scored ones::

    OMP_NUM_THREADS=1 python benchmarks/restate_mmd_local.py --rescore \\
        --group "disback=runs/db-disback-ring8-s*" --group "dmd2=runs/db-dmd2-ring8-s*"

``--baseline FILE`` prints a ``scoredistill baseline`` result (``baseline.json``) with the
columns of the tables in ``docs/benchmarks.md`` plus ``local MMD²``. JSON goes to ``--json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from scoredistill.eval.metrics import testbed_metrics
from scoredistill.eval.report import COLUMNS, format_value
from scoredistill.teachers.testbeds import get_testbed

KEYS = ("mmd_local", "mmd", "sw2", "within_3std", "mode_coverage")
# the baseline tables' columns: the report's, as published (no within-3-std column there)
_PUBLISHED = {"within_3std", "forget_mass", "retain_acc"}
BASELINE_COLS = tuple(c for c in COLUMNS if c[0] not in _PUBLISHED)


def rescore(run: Path) -> dict[str, float]:
    """The run's ``samples.npz`` scored as the run scored it (same n, labels, reference seed)."""
    cfg = json.loads((run / "config.json").read_text())
    testbed = get_testbed(cfg["testbed"], schedule=cfg.get("schedule"))
    n, seed = int(cfg["train"]["eval_samples"]), int(cfg["train"]["seed"])
    with np.load(run / "samples.npz") as data:
        x = torch.as_tensor(data["x"][:n], dtype=torch.float64)
        labels = torch.as_tensor(data["labels"][:n]) if "labels" in data else None
    return testbed_metrics(testbed, x, labels=labels, seed=seed + 1)


def run_row(run: Path, steps: str | None, do_rescore: bool) -> dict:
    """One seed: the stored metrics (of ``steps`` if given) and, if asked, the re-scored ones."""
    cfg = json.loads((run / "config.json").read_text())
    stored = json.loads((run / "metrics.json").read_text())
    top = stored
    if steps is not None:
        stored = stored["by_steps"][steps]
    row = {"run": str(run), "seed": cfg["train"]["seed"], "testbed": cfg["testbed"]}
    row |= {k: stored.get(k) for k in KEYS}
    if do_rescore:
        fresh = rescore(run)
        # samples.npz is the draw behind the top-level metrics (a consistency run's sample_steps)
        row["rescored"] = {k: fresh[k] for k in KEYS}
        row["max_abs_diff_vs_stored"] = max(
            abs(fresh[k] - top[k]) for k in ("mmd", "mmd_local", "sw2") if k in top
        )
    return row


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g}"


def group_table(groups: dict[str, list[dict]]) -> str:
    head = "| row | seeds | " + " | ".join(KEYS) + " | mmd_local per seed |"
    lines = [head, "|---|---:|" + "---:|" * len(KEYS) + "---|"]
    for label, rows in groups.items():
        cells = [
            mean_std([r[k] for r in rows]) if all(r[k] is not None for r in rows) else "–"
            for k in KEYS
        ]
        per_seed = ", ".join(f"s{r['seed']} {r['mmd_local']:.4g}" for r in rows)
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines)


def baseline_table(path: Path) -> str:
    rows = json.loads(path.read_text())["rows"]
    cols = [(k, t) for k, t in BASELINE_COLS if any(k in r for r in rows)]
    lines = ["| sampler | NFE | " + " | ".join(t for _, t in cols) + " |"]
    lines.append("|---|---:|" + "---:|" * len(cols))
    for r in rows:
        vals = [format_value(r[k]) if k in r else "" for k, _ in cols]
        lines.append(f"| {r['sampler']} | {r['nfe']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", action="append", default=[], metavar="LABEL=GLOB[,GLOB]")
    parser.add_argument("--steps", default=None, help="read metrics.json's by_steps[STEPS]")
    parser.add_argument("--rescore", action="store_true")
    parser.add_argument("--baseline", type=Path, action="append", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    groups: dict[str, list[dict]] = {}
    for spec in args.group:
        label, _, patterns = spec.rpartition("=")
        found = [p for pattern in patterns.split(",") for p in sorted(glob.glob(pattern))]
        runs = [Path(p) for p in found if (Path(p) / "metrics.json").exists()]
        if not runs:
            raise SystemExit(f"--group {spec!r}: no run folder with a metrics.json matches")
        groups[label] = [run_row(r, args.steps, args.rescore) for r in runs]
    if groups:
        print(group_table(groups))
    for path in args.baseline:
        print(f"\n{path}\n\n" + baseline_table(path))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"steps": args.steps, "groups": groups}, indent=1))
    diffs = [r["max_abs_diff_vs_stored"] for rows in groups.values() for r in rows if args.rescore]
    if diffs:
        print(f"\nre-scored samples.npz vs stored metrics.json: max |diff| {max(diffs):.3g}")


if __name__ == "__main__":
    main()
