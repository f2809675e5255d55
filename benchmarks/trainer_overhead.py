"""Trainer overhead: DMD2 steps through ``train_two_player`` vs a bare hand-written loop.

Both do the same tensor work (5 critic DSM steps on fresh generator samples, one generator
step, an EMA update) from the same initial weights on ``ring8``; the trainer adds Accelerate,
gradient clipping, the non-finite guard, logging and its final checkpoint. Runs are interleaved
(bare, trainer, bare, trainer, ...) so machine noise hits both alike; the ratio of the medians is
the figure, with the median of the per-pair ratios beside it. Target (issue 3): ratio <= 1.10.

    .venv/bin/python benchmarks/trainer_overhead.py --steps 100 --repeats 3 --out runs/bench-overhead
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scoredistill.objectives import DMD
from scoredistill.sources.critic import make_critic
from scoredistill.sources.generators import OneStepGenerator
from scoredistill.teachers.testbeds import get_testbed
from scoredistill.train.common import ema_decay, ema_update
from scoredistill.train.two_player import TwoPlayerConfig, train_two_player


def _nets(testbed):
    torch.manual_seed(0)
    gen = OneStepGenerator(testbed.dim, hidden=256, depth=3)
    critic = make_critic(testbed.dim, schedule=testbed.teacher.schedule, hidden=256, depth=4)
    return gen, critic


def bare_loop(cfg: TwoPlayerConfig, testbed, gen, critic) -> float:
    """The same work as the trainer, written out with nothing around it; returns seconds."""
    obj, rng = DMD(), torch.Generator().manual_seed(cfg.seed)
    ema = copy.deepcopy(gen).requires_grad_(False)
    opt_g = torch.optim.Adam(gen.parameters(), cfg.lr_generator, betas=(0.0, 0.999))
    opt_c = torch.optim.Adam(critic.parameters(), cfg.lr_critic, betas=(0.0, 0.999))
    decay, start = ema_decay(cfg.ema_halflife), time.perf_counter()
    for _ in range(cfg.steps):
        for _ in range(cfg.critic_updates):
            with torch.no_grad():
                x = gen(gen.sample_latent(cfg.batch_size, rng))
            loss = obj.critic_loss(x, None, critic=critic, rng=rng).value
            opt_c.zero_grad(set_to_none=True)
            loss.backward()
            opt_c.step()
        critic.requires_grad_(False)
        x = gen(gen.sample_latent(cfg.batch_size, rng))
        loss = obj.generator_loss(x, None, teacher=testbed.teacher, critic=critic, rng=rng).value
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        critic.requires_grad_(True)
        ema_update(ema, gen, decay)
    return time.perf_counter() - start


def trainer_loop(cfg: TwoPlayerConfig, testbed, gen, critic, out: Path) -> float:
    result = train_two_player(
        cfg,
        objective=DMD(),
        generator=gen,
        critic=critic,
        teacher=testbed.teacher,
        sample_latent=gen.sample_latent,
        sample_cond=None,
        evaluate=lambda g: {},
        out_dir=out,
    )
    return result["wall_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-overhead"))
    args = ap.parse_args()
    testbed = get_testbed("ring8")
    cfg = TwoPlayerConfig(
        steps=args.steps,
        batch_size=args.batch,
        eval_every=0,
        checkpoint_every=10**9,  # only the final checkpoint, as a user's run would write
        log_every=25,
    )
    bare, trainer = [], []
    for r in range(args.repeats):
        bare.append(bare_loop(cfg, testbed, *_nets(testbed)))
        with tempfile.TemporaryDirectory() as tmp:
            trainer.append(trainer_loop(cfg, testbed, *_nets(testbed), Path(tmp)))
        print(f"repeat {r}: bare {bare[-1]:.2f} s, trainer {trainer[-1]:.2f} s", flush=True)
    ratio = statistics.median(trainer) / statistics.median(bare)
    pair = statistics.median(t / b for t, b in zip(trainer, bare, strict=True))
    row = {
        "steps": args.steps,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "bare_s": bare,
        "trainer_s": trainer,
        "ratio_of_medians": ratio,
        "median_pair_ratio": pair,  # each pair ran back to back: drift cancels
    }
    print("| steps | bare s (median) | trainer s (median) | ratio of medians | median pair ratio |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {args.steps} | {statistics.median(bare):.2f} | "
        f"{statistics.median(trainer):.2f} | {ratio:.3f} | {pair:.3f} |"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
