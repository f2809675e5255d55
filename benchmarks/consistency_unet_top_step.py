"""Samples of exported consistency-UNet pipelines started at several top timesteps (or grids).

Loads each run's ``pipeline/`` with plain ``DiffusionPipeline.from_pretrained`` (the stock
``ConsistencyModelPipeline`` + ``LCMScheduler`` a user gets), draws one-step samples from the
run's own fixed evaluation noise and labels (``runs.unet.student_draw``'s seed) with
``timesteps=[k]`` for each ``k`` of ``--tops``, and scores them as the run scores its draw
(``runs.unet.score``: FD, precision / recall, class accuracy of the digits feature network,
score seed = seed + 1). The pipeline's own default (no ``timesteps``) is the first row of each run.
A ``--tops`` entry with commas is a whole few-step grid (``939,479``: two steps, the pipeline's
``timesteps=[939, 479]``); ``--steps 2`` makes the default row the pipeline's 2-step grid.

This is the measurement behind "a grid topped below k = 999" (``docs/consistency.md``): on a
cosine table sqrt(abar_999) = 4.9e-5, so an eps-network's x0 at k = 999 amplifies its error 2e4×.

    OMP_NUM_THREADS=1 python benchmarks/consistency_unet_top_step.py runs/s40/cd-s0 runs/s40/scm-s0 \
        --tops 999 979 959 939 899

Prints a table and writes ``--json`` (default ``benchmarks/out/consistency_unet_top_step.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from scoredistill.eval.image_baseline import best_rows, image_rows
from scoredistill.runs import unet
from scoredistill.runs.consistency_unet import ConsistencyUNetConfig


def draw(
    pipe, n: int, labels, grid: list[int] | None, rng: torch.Generator, steps: int = 1
) -> torch.Tensor:
    """``(n, dim)`` samples in [-1, 1] of ``pipe`` at ``timesteps=grid`` (``None``: the
    scheduler's own ``steps``-step grid); the pipeline draws its noise from a copy of ``rng``
    (``latents`` cannot be passed: the pipeline's shape check assumes 3 channels)."""
    extra = {"timesteps": grid} if grid is not None else {"num_inference_steps": steps}
    g = torch.Generator().set_state(rng.get_state())
    images = pipe(batch_size=n, class_labels=labels, generator=g, output_type="pt", **extra).images
    return (images * 2 - 1).flatten(1)


def _print(run: Path, name: str, row: dict) -> None:
    print(f"{run!s:32} {name:>12} {row['fd']:8.1f} {row['precision']:9.3f} "
          f"{row['recall']:7.3f} {row['class_acc']:9.3f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--tops", nargs="+", default=["999", "979", "959", "939", "899"])
    ap.add_argument("--steps", type=int, default=1, help="steps of the default row")
    ap.add_argument(
        "--draw",
        type=int,
        default=12345,
        help="the noise and labels are seeded seed + DRAW (12345: the run's own evaluation draw)",
    )
    ap.add_argument(
        "--teacher-nfe",
        type=int,
        default=0,
        help="also the teacher's best cell within this NFE on the same draw seed (0: none)",
    )
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--json", default="benchmarks/out/consistency_unet_top_step.json")
    args = ap.parse_args()
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()  # LCMScheduler warns when a custom grid does not start at 999
    rows, teacher_best = [], {}
    print(f"{'run':32} {'grid':>12} {'FD':>8} {'precision':>9} {'recall':>7} {'class acc':>9}")
    for run in args.runs:
        cfg = json.loads((run / "config.json").read_text())
        teacher = unet.load_teacher(ConsistencyUNetConfig(teacher=cfg["teacher"]))
        pipe = DiffusionPipeline.from_pretrained(run / "pipeline", local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        seed = cfg["train"]["seed"]
        rng = torch.Generator().manual_seed(seed + args.draw)  # 12345: runs.unet.student_draw's
        sample_cond = unet._label_sampler(teacher)
        labels = sample_cond(args.n, rng) if sample_cond else None
        for top in [None, *args.tops]:
            grid = None if top is None else [int(k) for k in top.split(",")]
            x = draw(pipe, args.n, labels, grid, rng, args.steps)
            row = {"run": str(run), "top": grid, **unet.score(teacher, x, labels, seed + 1)}
            rows.append(row)
            name = f"default@{args.steps}" if top is None else top
            _print(run, name, row)
        if args.teacher_nfe:  # runs of one teacher and seed share its cells: computed once
            key = (json.dumps(cfg["teacher"], sort_keys=True), tuple(cfg["eval"]["samplers"]), seed)
            if key not in teacher_best:
                cells = image_rows(
                    teacher, cfg["eval"]["samplers"], [args.teacher_nfe], args.n,
                    seed + args.draw, unet.score,
                )  # fmt: skip
                teacher_best[key] = best_rows(cells, [args.teacher_nfe])[str(args.teacher_nfe)]
            best = teacher_best[key]
            rows.append({"run": str(run), "teacher": True, **best})
            _print(run, f"teacher@{args.teacher_nfe}", best)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    with torch.no_grad():
        main()
