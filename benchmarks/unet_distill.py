"""The real-model benchmark on the bundled diffusers teacher (``assets/teachers/digits-unet``).

Three parts, one JSON and one markdown file each under ``--out``:

1. ``teacher``: the teacher's sampler × NFE table through the adapter (DDIM, DPM-Solver++(2M),
   Heun, Euler on the teacher's own grid) **and** through diffusers' own ``DDIMScheduler``
   (trailing), FD / class accuracy / precision / recall of ``--n`` samples, the real floor.
2. ``students``: ``scoredistill bench --suite unet`` (dmd2-unet, sid-unet, dmd2-4step-unet ×
   seeds), through the one bench runner.
3. ``overhead``: seconds per DMD2 generator update (5 critic updates) and peak RSS of the
   library loop against a bare loop doing the same forward/backward passes on the same
   networks, each in its own process, measured side by side.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/unet_distill.py --out runs/bench-unet
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

NFES = (1, 2, 4, 8, 16, 32, 50)


def teacher_table(out: Path, n: int, seed: int, teacher_dir: str | None) -> dict:
    from scoredistill.eval.features import real_floor
    from scoredistill.eval.image_baseline import diffusers_ddim_rows, image_rows
    from scoredistill.eval.report import format_value
    from scoredistill.runs.unet import UNetDistillConfig, load_teacher, score

    teacher = load_teacher(UNetDistillConfig(teacher=teacher_dir or ""))
    samplers = ("ddim", "dpmpp-2m", "heun", "euler")
    rows = image_rows(teacher, samplers, NFES, n, seed, score)
    rows += diffusers_ddim_rows(teacher, NFES, n, seed, score)
    floor = real_floor(n, seed=seed)
    keys = ("fd", "class_acc", "precision", "recall", "wall_s")
    lines = ["| sampler | NFE | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for r in [*rows, {"sampler": "real data (floor)", "nfe": "–", **floor, "wall_s": 0.0}]:
        lines.append(
            f"| {r['sampler']} | {r['nfe']} | "
            + " | ".join(format_value(r[k]) for k in keys)
            + " |"
        )
    result = {"n": n, "seed": seed, "rows": rows, "floor": floor}
    (out / "teacher.json").write_text(json.dumps(result, indent=2))
    (out / "teacher.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def _networks(teacher_dir: str | None, batch: int):
    from scoredistill.runs.unet import UNetDistillConfig, load_teacher
    from scoredistill.sources.diffusers import DiffusersGenerator, make_diffusers_critic

    teacher = load_teacher(UNetDistillConfig(teacher=teacher_dir or ""))
    torch.manual_seed(0)
    return teacher, DiffusersGenerator(teacher), make_diffusers_critic(teacher)


def _library(teacher_dir: str | None, steps: int, batch: int, tmp: Path) -> float:
    from scoredistill.objectives import OBJECTIVES
    from scoredistill.train.two_player import TwoPlayerConfig, train_two_player

    teacher, gen, critic = _networks(teacher_dir, batch)
    cfg = TwoPlayerConfig(
        steps=steps, batch_size=batch, critic_updates=5, eval_every=0, checkpoint_every=10**6,
        log_every=10**6, ema_halflife=20.0,
    )  # fmt: skip
    k = teacher.num_classes
    tmp.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train_two_player(
        cfg, objective=OBJECTIVES["dmd"](), generator=gen, critic=critic, teacher=teacher,
        sample_latent=lambda n, rng: gen.sample_latent(n, rng),
        sample_cond=lambda n, rng: torch.randint(k, (n,), generator=rng),
        evaluate=lambda g: {}, out_dir=tmp,
    )  # fmt: skip
    return (time.perf_counter() - start) / steps


def _bare(teacher_dir: str | None, steps: int, batch: int) -> float:
    """The same passes written out: per update 5 × (student forward without grad, critic
    denoising loss forward/backward, Adam step), then student forward/backward through the
    teacher's and the critic's forward, Adam step. Raw UNet calls, no adapter, no logging."""
    teacher, gen, critic = _networks(teacher_dir, batch)
    unet_t, unet_g, unet_c = teacher.model, gen.denoiser.model, critic.denoiser.model
    opt_g = torch.optim.Adam(unet_g.parameters(), 1e-4)
    opt_c = torch.optim.Adam(unet_c.parameters(), 1e-4)
    abar = torch.tensor(teacher.scheduler.alphas_cumprod, dtype=torch.float32)
    shape, k = (batch, *teacher.shape), teacher.num_classes

    def x0(unet, x, t, y):
        a = abar[t].sqrt().reshape(-1, 1, 1, 1)
        return (x - (1 - a**2).sqrt() * unet(x, t.float(), class_labels=y).sample) / a

    start = time.perf_counter()
    for _ in range(steps):
        for _ in range(5):
            y, t = torch.randint(k, (batch,)), torch.randint(20, 980, (batch,))
            with torch.no_grad():
                x = x0(unet_g, torch.randn(shape), torch.full((batch,), 999), y)
            a = abar[t].sqrt().reshape(-1, 1, 1, 1)
            x_t = a * x + (1 - a**2).sqrt() * torch.randn(shape)
            loss = (x0(unet_c, x_t, t, y) - x).square().mean()
            opt_c.zero_grad()
            loss.backward()
            opt_c.step()
        y, t = torch.randint(k, (batch,)), torch.randint(20, 980, (batch,))
        x = x0(unet_g, torch.randn(shape), torch.full((batch,), 999), y)
        a = abar[t].sqrt().reshape(-1, 1, 1, 1)
        x_t = a * x + (1 - a**2).sqrt() * torch.randn(shape)
        with torch.no_grad():
            g = x0(unet_c, x_t, t, y) - x0(unet_t, x_t, t, y)
        loss = 0.5 * (x - (x - g).detach()).square().sum() / batch
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    return (time.perf_counter() - start) / steps


def overhead(out: Path, steps: int, batch: int, teacher_dir: str | None) -> dict:
    result = {}
    for mode in ("bare", "library"):
        cmd = [sys.executable, __file__, "--part", f"_{mode}", "--steps", str(steps)]
        cmd += ["--batch", str(batch), "--out", str(out)]
        cmd += ["--teacher", teacher_dir] if teacher_dir else []
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        result[mode] = json.loads(line.strip().splitlines()[-1])
    result["ratio_time"] = result["library"]["s_per_step"] / result["bare"]["s_per_step"]
    result["ratio_rss"] = result["library"]["peak_rss_mib"] / result["bare"]["peak_rss_mib"]
    (out / "overhead.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--part",
        default="all",
        choices=["all", "teacher", "students", "overhead", "_bare", "_library"],
    )
    p.add_argument("--teacher", default=None, help="a diffusers folder (default: bundled)")
    p.add_argument("--n", type=int, default=1000, help="samples per teacher cell")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=20, help="updates timed by the overhead part")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part in ("_bare", "_library"):
        torch.manual_seed(0)
        s = (
            _bare(args.teacher, args.steps, args.batch)
            if args.part == "_bare"
            else _library(args.teacher, args.steps, args.batch, out / "_overhead_run")
        )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"s_per_step": s, "peak_rss_mib": rss}))
        return
    if args.part in ("all", "teacher"):
        teacher_table(out, args.n, 0, args.teacher)
    if args.part in ("all", "overhead"):
        overhead(out, args.steps, args.batch, args.teacher)
    if args.part in ("all", "students"):
        from scoredistill.bench import run_suite

        extra = [f"teacher={args.teacher}"] if args.teacher else []
        seeds = tuple(int(s) for s in args.seeds.split(","))
        run_suite("unet", out / "students", quick=args.quick, extra=extra, seeds=seeds)


if __name__ == "__main__":
    main()
