"""LoRA vs full players on a text-to-image teacher: weights in memory and time per iteration
(``docs/text_to_image.md``, "LoRA vs full")::

    OMP_NUM_THREADS=1 python benchmarks/sd_lora_vs_full.py --json runs/sd_lora_vs_full.json

Three player sets on the same teacher (default: the bundled ``digits-sd``), built by the run's
own ``runs.sd.build_players``: full student + full critic (DMD2's SD recipe), full student +
LoRA critic, LoRA student + LoRA critic on one base (SwiftBrush here). One iteration = one VSD
critic step and one generator step at batch 32 (Adam), as ``train.two_player`` does. The
iterations of the three sets are interleaved, so load on a shared machine hits them alike; the
median is reported. Memory is counted exactly from the tensors: distinct parameter storage of
teacher + players (a shared base counts once) plus gradient and Adam's two moments of every
trained value (fp32).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from scoredistill.objectives import VSD
from scoredistill.runs.sd import LoraPlayer, SDDistillConfig, SDStudentConfig, build_players
from scoredistill.runs.sd import load_teacher as load_sd_teacher

SETS = {
    "full student + full critic": (False, False),
    "full student + LoRA critic": (False, True),
    "LoRA student + LoRA critic (one base)": (True, True),
}


def _players(base: SDDistillConfig, lora_student: bool, lora_critic: bool):
    cfg = replace(
        base,
        student=SDStudentConfig(lora=lora_student, lora_rank=64, lora_alpha=108.0),
        critic=LoraPlayer(lora=lora_critic, lora_rank=64, lora_alpha=108.0),
    )
    teacher = load_sd_teacher(cfg)
    gen, critic = build_players(cfg, teacher)
    return teacher, gen, critic


def _mib(teacher, gen, critic) -> dict[str, float]:
    storages, trained = {}, 0
    for module in (teacher.model, teacher.vae, teacher.text_encoder, gen, critic):
        for p in module.parameters():
            storages[p.untyped_storage().data_ptr()] = p.numel() * p.element_size()
    for module in (gen, critic):
        trained += sum(p.numel() for p in module.parameters() if p.requires_grad)
    weights = sum(storages.values()) / 2**20
    return {"weights_MiB": weights, "grad_and_adam_MiB": 3 * 4 * trained / 2**20,
            "trained_params": trained}  # fmt: skip


def _iteration(obj, teacher, gen, critic, opts, batch: int, rng) -> None:
    opt_g, opt_c = opts
    labels = torch.randint(teacher.num_classes, (batch,), generator=rng)
    with torch.no_grad():
        x = gen(gen.sample_latent(batch, rng), labels, rng=rng)
    opt_c.zero_grad(set_to_none=True)
    obj.critic_loss(x, labels, critic=critic, rng=rng).value.backward()
    opt_c.step()
    critic.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    x = gen(gen.sample_latent(batch, rng), labels, rng=rng)
    obj.generator_loss(x, labels, teacher=teacher, critic=critic, rng=rng).value.backward()
    opt_g.step()
    critic.requires_grad_(True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="", help="an SD-layout folder (default: bundled)")
    p.add_argument("--prompts", default="")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    base = SDDistillConfig(teacher=a.teacher, prompts=a.prompts)
    obj, rng = VSD(guidance=4.5), torch.Generator().manual_seed(0)
    runs = {}
    for name, (ls, lc) in SETS.items():
        torch.manual_seed(0)
        teacher, gen, critic = _players(base, ls, lc)
        opts = (
            torch.optim.Adam(gen.parameters(), 1e-4),
            torch.optim.Adam(critic.parameters(), 1e-3),
        )
        runs[name] = {
            "parts": (teacher, gen, critic, opts),
            "times": [],
            **_mib(teacher, gen, critic),
        }
        _iteration(obj, teacher, gen, critic, opts, a.batch, rng)  # warm-up
    for _ in range(a.iters):
        for run in runs.values():
            teacher, gen, critic, opts = run["parts"]
            start = time.perf_counter()
            _iteration(obj, teacher, gen, critic, opts, a.batch, rng)
            run["times"].append(time.perf_counter() - start)
    rows = []
    for name, run in runs.items():
        row = {"players": name, **{k: v for k, v in run.items() if k not in ("parts", "times")},
               "median_s": statistics.median(run["times"])}  # fmt: skip
        rows.append(row)
        print(f"{name:40s} weights {row['weights_MiB']:6.2f} MiB  grad+Adam "
              f"{row['grad_and_adam_MiB']:6.2f} MiB  trained {row['trained_params']:>9,}  "
              f"{row['median_s']:.3f} s/iter", flush=True)  # fmt: skip
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
