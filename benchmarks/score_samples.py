"""Score any ``samples.npz`` (``x: (N, D)``, optional ``labels``) against an exact testbed with
every metric of ``eval.metrics`` — including issue 15's peer metric (``mmd_local``: RBF kernels
at 0.01, 0.1 and 1 × the median squared distance) and the fraction of samples within 3 std of a
mode — so a run of ours and a peer's run are compared in one command, scored the same way::

    OMP_NUM_THREADS=1 python benchmarks/score_samples.py --testbed ring8 \\
        runs/a/samples.npz peer/samples.npz --n 3000 --json scores.json

``--testbed`` is a name (``scoredistill testbeds``) or a mixture ``.npz``. The first ``--n``
samples of each file are scored against ``--n`` exact draws (seeded); the table goes to stdout,
the numbers to ``--json``.

``--outliers`` adds ``eval.outliers``' columns (2-D testbeds): the samples outside 3 std split into
**bridges** (on the segment between their two most responsible modes: the mass a one-step map
continuous in its noise leaves between disconnected modes) and **tails** (a mode's blur), and
the **core width** of those inside (RMS whitened deviation per axis; exact 2-D samples 0.974).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from scoredistill.eval.metrics import testbed_metrics
from scoredistill.eval.outliers import outlier_stats
from scoredistill.teachers.testbeds import get_testbed

KEYS = ("mmd_local", "mmd", "sw2", "within_3std", "mode_coverage", "spread_ratio")
OUTLIER_KEYS = ("bridges", "tails", "core_width")


def scores(testbed, x, labels, seed: int, outliers: bool) -> dict[str, float]:
    out = testbed_metrics(testbed, x, labels=labels, seed=seed)
    return out | outlier_stats(testbed.truth, x, labels) if outliers else out


def score(testbed, path: Path, n: int, seed: int, outliers: bool = False) -> dict[str, float]:
    with np.load(path) as data:
        x = torch.as_tensor(data["x"][:n], dtype=torch.float64)
        labels = torch.as_tensor(data["labels"][:n]) if "labels" in data else None
    if x.shape[0] < n:
        raise SystemExit(f"{path}: holds {x.shape[0]} samples, fewer than --n {n}")
    return scores(testbed, x, labels, seed, outliers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--testbed", required=True)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--outliers", action="store_true", help="bridges, tails, core width")
    args = parser.parse_args()
    keys = KEYS + OUTLIER_KEYS if args.outliers else KEYS
    testbed = get_testbed(args.testbed)
    exact = testbed.truth.sample(
        args.n, rng=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64
    )
    rows = {"exact samples (floor)": scores(testbed, exact, None, args.seed, args.outliers)}
    rows |= {str(f): score(testbed, f, args.n, args.seed, args.outliers) for f in args.files}
    print("| samples | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{m[k]:.4g}" for k in keys) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"testbed": args.testbed, "n": args.n, "rows": rows}))


if __name__ == "__main__":
    main()
