"""A text-to-image teacher folder through **stock diffusers**: FD / prompt accuracy / precision /
recall by CFG scale and steps (``docs/text_to_image.md``, "The bundled teacher")::

    OMP_NUM_THREADS=1 python benchmarks/sd_teacher_cfg.py --json runs/sd_teacher_cfg.json

Samples come from ``DiffusionPipeline.from_pretrained(folder)`` itself (its saved DDIM scheduler,
``trailing`` spacing), 50 per digit with the prompt ``"a handwritten d"`` (500 in all), one
seeded generator; scored by the digits feature network against the 450 held-out digits
(prompt accuracy = the classifier's agreement with the prompt's digit). Prints a table, writes
JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from scoredistill.eval.features import image_metrics

BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "teachers" / "digits-sd" / "pipeline"


def run(folder: Path, scales: list[float], steps: list[int], per_digit: int, seed: int):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    digits = torch.arange(10).repeat_interleave(per_digit)
    prompts = [f"a handwritten {d}" for d in digits.tolist()]
    rows = []
    for k in steps:
        for w in scales:
            g = torch.Generator().manual_seed(seed)
            start = time.perf_counter()
            with torch.no_grad():
                out = pipe(prompts, num_inference_steps=k, guidance_scale=w, generator=g,
                           output_type="pt").images  # fmt: skip
            wall = time.perf_counter() - start
            x = out.mean(1, keepdim=True) * 2 - 1  # (N, 1, 8, 8) in [-1, 1]
            m = image_metrics(x, digits, seed=seed)
            rows.append({"steps": k, "cfg": w, **m, "wall_s": wall})
            print(f"steps {k:3d}  cfg {w:4.1f}  FD {m['fd']:7.1f}  acc {m['class_acc']:.3f}  "
                  f"P {m['precision']:.3f}  R {m['recall']:.3f}  ({wall:.1f} s)", flush=True)  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, default=BUNDLED)
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 4.0, 7.5])
    p.add_argument("--steps", type=int, nargs="+", default=[20])
    p.add_argument("--per-digit", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    rows = run(a.teacher, a.cfg, a.steps, a.per_digit, a.seed)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"teacher": str(a.teacher), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
