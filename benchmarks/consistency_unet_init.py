"""The untrained consistency student: the teacher's own denoiser run by LCM's multistep sampler.

``cd-unet`` and ``scm-unet`` start from a copy of the teacher (``LCMConsistency``), and at the
start ``f`` is the teacher's x0 estimate; the LCM sampler with that ``f`` is a stochastic
few-step sampler of the teacher. This script scores it on the same draws the runs score
(``runs.consistency_unet._score_steps``, n = 1000, score seed = seed + 1), so a trained student
is compared with its own starting point, not only with the teacher's deterministic samplers.

    OMP_NUM_THREADS=1 python benchmarks/consistency_unet_init.py --seeds 0 1 2 --steps 1 2 4

Prints a table and writes ``benchmarks/out/consistency_unet_init.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from scoredistill.runs import unet
from scoredistill.runs.consistency_unet import ConsistencyUNetConfig, _score_steps
from scoredistill.sources.diffusers_consistency import LCMConsistency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="", help="a diffusers folder (default: bundled)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/out/consistency_unet_init.json")
    args = ap.parse_args()
    cfg = ConsistencyUNetConfig(teacher=args.teacher)
    teacher = unet.load_teacher(cfg)
    student = LCMConsistency(teacher).eval().requires_grad_(False)
    rows = []
    for seed in args.seeds:
        for steps in args.steps:
            row, _, _ = _score_steps(student, teacher, steps, args.n, seed, seed + 1)
            rows.append({"seed": seed, "steps": steps, **row})
            keys = ("fd", "precision", "recall", "class_acc")
            print(f"seed {seed} steps {steps}: " + "  ".join(f"{k} {row[k]:.3f}" for k in keys))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    with torch.no_grad():
        main()
