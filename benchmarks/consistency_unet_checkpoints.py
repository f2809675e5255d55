"""Score the kept checkpoints of consistency-UNet runs at several student step counts.

A run keeps its last two checkpoints (``train.common.save_checkpoint``, ``keep = 2``); this
scores the EMA and the online student of each on the run's own evaluation draw
(``runs.consistency_unet._score_steps``, n = 1000, score seed = seed + 1), which shows whether a
run improved or degraded between them (the in-training evaluation only draws 1-step samples).

    OMP_NUM_THREADS=1 python benchmarks/consistency_unet_checkpoints.py runs/scmunet/s0 runs/scmunet/s1

Prints one line per (run, checkpoint, network) and writes
``benchmarks/out/consistency_unet_checkpoints.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from scoredistill.runs import unet
from scoredistill.runs.consistency_unet import ConsistencyUNetConfig, _score_steps
from scoredistill.sources.diffusers_consistency import LCMConsistency, TrigFlowLCM


def _network(teacher, state: dict, which: str, method: str, sigma_data: float):
    lcm = LCMConsistency(teacher)
    net = TrigFlowLCM(lcm, sigma_data) if method == "scm" else lcm
    prefix = f"model/{which}/"
    net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return net.eval().requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/out/consistency_unet_checkpoints.json")
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        cfg = json.loads((run / "config.json").read_text())
        teacher = unet.load_teacher(ConsistencyUNetConfig(teacher=cfg["teacher"]))
        seed, sd = cfg["train"]["seed"], cfg["student"].get("sigma_data", 0.5)
        for ckpt in sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:])):
            state = load_file(ckpt / "state.safetensors")
            for which in ("ema", "student"):
                net = _network(teacher, state, which, cfg["method"], sd)
                for steps in args.steps:
                    row, _, _ = _score_steps(net, teacher, steps, args.n, seed, seed + 1)
                    rows.append({"run": str(run), "step": int(ckpt.name[5:]), "net": which,
                                 "steps": steps, **row})  # fmt: skip
                    print(f"{run} {ckpt.name} {which} {steps}-step: FD {row['fd']:.1f} "
                          f"precision {row['precision']:.2f} class acc {row['class_acc']:.3f}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    with torch.no_grad():
        main()
