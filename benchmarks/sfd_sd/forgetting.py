"""Prompt forgetting of finished distill-sd runs (any method): reload each run's EMA student from
its last checkpoint and score it with ``runs.sd.prompt_forgetting`` (the metric an sfd-sd run
writes to ``metrics.json['forgetting']``), so an SFD student and a plain SiD-LSG student are read
the same way. Usage: python sfd_sd_forgetting.py RUN... [--forget P] [--safe P] [--json OUT]"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from scoredistill.config import from_dict
from scoredistill.runs.sd import SDDistillConfig, build_players, load_teacher, prompt_forgetting
from scoredistill.train.common import module_state

STEP = os.environ.get("CKPT", "")


def forgetting_of(run: Path, forget: str, safe: str) -> dict:
    cfg = from_dict(SDDistillConfig, json.loads((run / "config.json").read_text()))
    teacher = load_teacher(cfg)
    gen, _ = build_players(cfg, teacher)
    ckpt = (
        run
        / "checkpoints"
        / (STEP or json.loads((run / "checkpoints/latest.json").read_text())["path"])
    )
    gen.load_state_dict(module_state(ckpt, "ema"))
    prompts = list(teacher.prompt_table.prompts)
    f, s = prompts.index(forget), prompts.index(safe)
    out = prompt_forgetting(gen.eval(), teacher, f, s, cfg.eval.samples, cfg.train.seed)
    metrics = json.loads((run / "metrics.json").read_text())
    keep = ("fd", "precision", "recall", "class_acc", "wall_s")
    return {"run": str(run), "method": cfg.method, "seed": cfg.train.seed,
            **{k: metrics.get(k) for k in keep}, **out}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--forget", default="a handwritten 3")
    ap.add_argument("--safe", default="a handwritten 8")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    rows = [forgetting_of(r, args.forget, args.safe) for r in args.runs]
    for r in rows:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
