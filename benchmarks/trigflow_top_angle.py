"""Where a finished TrigFlow student (sCM, rCM, SANA-Sprint) goes wrong, angle by angle.

A TrigFlow student's sampler starts at ``theta_max = atan(80 / sigma_d)``, the largest angle.
sCM's training law (``log sigma ~ N(p_mean, p_std^2)``, ``theta = atan(sigma / sigma_d)``)
almost never draws it; SANA-Sprint's adversarial branch draws it half the time
(``largest_prob``; NVlabs/Sana ``train_scm_ladd.py``: the largest timestep enters the
adversarial term only), so there only the adversarial term trains the network. For every run
and every angle ``theta`` this prints:

- ``P(train >= theta)``: the share of sCM's training draws at or above ``theta`` (closed form);
- ``|F|``: the mean norm of the raw network output ``F(x_theta / sigma_d, theta)`` on exact data
  noised to ``theta``, and ``rms``: the RMS distance of ``f(x_theta, theta)`` to that data;
- the metrics of one-step samples started at ``theta`` from pure noise, ``f(sigma_d z, theta)``
  (``student.sample_top = theta``; the sampler's default start is ``theta_max``), with the same
  class labels as the data on a conditional testbed.

These are diagnoses on the run's own draws (seed ``train.seed``, reference ``seed + 1``;
``--draw K`` moves every draw to ``seed + K``, to read an angle chosen on one draw on another)::

    OMP_NUM_THREADS=1 python benchmarks/trigflow_top_angle.py runs/s29/sana-sprint-gmm64-adv0.1-s0 \\
        --json runs/top_angle.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from consistency_grid import load_run
from scoredistill.eval.baseline import cell_metrics, draw_labels
from scoredistill.sources.consistency import SIGMA_MAX

ANGLES = (None, 1.55, 1.53, 1.5, 1.45, 1.3, 1.1)  # None: the run's own theta_max


def train_share(theta: float, sigma_d: float, p_mean: float, p_std: float) -> float:
    """``P(theta_train >= theta)`` under ``log sigma ~ N(p_mean, p_std^2)``."""
    z = (math.log(sigma_d * math.tan(theta)) - p_mean) / p_std
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@torch.no_grad()
def probe(run: Path, n: int, draw: int = 0) -> list[dict]:
    cfg, testbed, student, _ = load_run(run)
    sd, seed = student.sigma_data, cfg.train.seed + draw
    scm = cfg.objective.get("scm", {})
    p_mean, p_std = float(scm.get("p_mean", -1.0)), float(scm.get("p_std", 1.4))
    rng = torch.Generator().manual_seed(seed)
    labels = draw_labels(testbed, n, rng)  # None on an unconditional testbed
    x0 = testbed.truth.sample(n, rng=rng, cond=labels)
    eps = torch.randn(x0.shape, generator=rng)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for angle in ANGLES:
        theta = math.atan(SIGMA_MAX / sd) if angle is None else angle
        t = torch.full((n,), theta)
        x_hat = math.cos(theta) * x0 + math.sin(theta) * sd * eps
        F = student.F(x_hat, t, labels)
        out = student(x_hat, t, labels)
        one_step = student.sample(z, labels, steps=1, top=theta)  # f(sigma_d z, theta)
        m = cell_metrics(testbed, one_step, labels, seed)
        rows.append({
            "run": str(run), "theta": theta, "top": angle is None,
            "train_share": train_share(theta, sd, p_mean, p_std),
            "F_norm": float(F.norm(dim=1).mean()),
            "rms_to_data": float((out - x0).pow(2).sum(1).mean().sqrt()),
            **{k: float(m[k]) for k in ("mmd", "mmd_local", "sw2", "spread_ratio")},
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished TrigFlow run folders")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument(
        "--draw", type=int, default=0, help="seed offset of every draw (0: the run's)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for run in args.runs for row in probe(run, args.n, args.draw)]
    print("| run | θ | P(train ≥ θ) | mean ‖F‖ | rms f − x0 | 1-step MMD² | local | SW2 | spread |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        theta = f"**{r['theta']:.3f}** (top)" if r["top"] else f"{r['theta']:.3f}"
        print(f"| {Path(r['run']).name} | {theta} | {r['train_share']:.1e} | {r['F_norm']:.2f} | "
              f"{r['rms_to_data']:.2f} | {r['mmd']:.4f} | {r['mmd_local']:.4f} | {r['sw2']:.3f} | "
              f"{r['spread_ratio']:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
