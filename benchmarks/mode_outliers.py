"""Where do a sampler's samples outside 3 std of a mode lie? ``eval.outliers.outlier_stats``
splits them into **bridges** (on the segment between their two most responsible modes: mass a
continuous one-step map leaves between disconnected modes) and **tails** (a mode's blur), and
measures the **core width** of the samples inside 3 std (RMS whitened deviation per axis; exact
2-D samples read 0.974, lower is a core narrower than the truth)::

    OMP_NUM_THREADS=1 python benchmarks/mode_outliers.py --testbed ring8 \\
        runs/a/samples.npz runs/b/samples.npz --json outliers.json

``--testbed`` is a name (``scoredistill testbeds``) or a mixture ``.npz``. The first row scores
``--n`` exact draws (the floor); the table goes to stdout, the numbers to ``--json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from scoredistill.eval.outliers import outlier_stats
from scoredistill.teachers.testbeds import get_testbed

KEYS = ("within_3std", "bridges", "tails", "core_width")


def _load(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    with np.load(path) as data:
        x = torch.as_tensor(data["x"][:n], dtype=torch.float64)
        labels = torch.as_tensor(data["labels"][:n]) if "labels" in data else None
    if x.shape[0] < n:
        raise SystemExit(f"{path}: holds {x.shape[0]} samples, fewer than --n {n}")
    return x, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--testbed", required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    truth = get_testbed(args.testbed).truth
    exact = truth.sample(args.n, rng=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    rows = {"exact samples (floor)": outlier_stats(truth, exact)}
    rows |= {str(f): outlier_stats(truth, *_load(f, args.n)) for f in args.files}
    print("| samples | " + " | ".join(KEYS) + " |")
    print("|---|" + "---:|" * len(KEYS))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[key]:.3f}" for key in KEYS) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"testbed": args.testbed, "n": args.n, "rows": rows}))


if __name__ == "__main__":
    main()
