"""Where a few-step student gains or loses quality: the output after each of its steps.

Loads a finished ``distill`` run of a few-step student (its EMA at the latest checkpoint), draws
one batch of ``z`` and re-noising noise, and scores ``forward(z, k=k)`` (the sample after step
``k``, the same draws for every ``k``) with every metric of ``eval.metrics``::

    OMP_NUM_THREADS=1 python benchmarks/few_step_outputs.py runs/s37/p4/reg4-s0 \\
        --preset dmd2-4step-ring8 --set objective.regression_weight=4 --set train.steps=3000

``--preset`` / ``--set`` must resolve to the run's ``config.json`` (checked), so that the
student is rebuilt as it was trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from scoredistill.config import to_dict
from scoredistill.eval.metrics import testbed_metrics
from scoredistill.runs.distill import DistillConfig, _label_sampler, resolve, trained_student
from scoredistill.train.common import latest_checkpoint

SHOW = ("mmd", "mmd_local", "sw2", "within_3std", "spread_ratio", "mode_coverage")


def _same_config(cfg: DistillConfig, saved: dict) -> bool:
    """``cfg`` is the saved run's config; a key the saved file lacks (written before the key
    existed) must hold its default."""
    new, default = (json.loads(json.dumps(to_dict(c))) for c in (cfg, DistillConfig()))
    added = new.keys() - saved.keys()
    return all(new[k] == default[k] for k in added) and {k: new.get(k) for k in saved} == saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg, _ = resolve(args.preset, args.sets)
    if not _same_config(cfg, json.loads((args.run / "config.json").read_text())):
        raise SystemExit(f"{args.run}: --preset/--set do not resolve to its config.json")
    _, testbed, gen = trained_student(args.run, cfg)
    checkpoint = latest_checkpoint(args.run / "checkpoints")
    rows, draw_labels = {}, _label_sampler(testbed)
    for k in range(1, gen.nfe + 1):
        rng = torch.Generator().manual_seed(cfg.train.seed + 12345)
        labels = draw_labels(args.n, rng) if draw_labels else None
        z = gen.sample_latent(args.n, rng)
        with torch.no_grad():
            x = gen(z, labels, rng=rng, k=k)
        rows[k] = testbed_metrics(testbed, x.double(), labels=labels, seed=cfg.train.seed + 1)
    print(f"{checkpoint}\n\n| after step | " + " | ".join(SHOW) + " |")
    print("|---:|" + "---:|" * len(SHOW))
    for k, m in rows.items():
        print(f"| {k} | " + " | ".join(f"{m[key]:.4g}" for key in SHOW) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"run": str(args.run), "steps": rows}))


if __name__ == "__main__":
    main()
