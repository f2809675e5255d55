"""Step time and peak memory of the real-model path (``distill-sd``), fp32 against bf16.

For a lent GPU: one prepared command that times the text-to-image distillation loop on an
SD-1.5-sized pipeline (the shapes of SD 1.5: UNet blocks 320/640/1280/1280 at 64×64 latents,
cross-attention 768, a 12-layer CLIP text encoder of width 768, the 4-level VAE; random weights
built from configs and saved by diffusers itself, so nothing is downloaded), or on ``--teacher
DIR``::

    python benchmarks/gpu_step_time.py --work /tmp/gpu-bench --json $OUT/gpu_step_time.json

Each (preset, precision) is one ``scoredistill distill`` run of ``--steps`` generator updates
with every step logged (``train.log_every=1``), no evaluation inside the loop and no export; the
step time is the median of the logged ``wall_s`` differences after ``--warmup`` steps (one
generator update plus ``train.critic_updates`` critic updates), the memory the largest
``cuda_max_mib`` the loop logged (``torch.cuda.max_memory_allocated``; absent on a CPU).
``--tiny`` builds a small pipeline instead (a CPU check of the script itself).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

PROMPTS = ["a photo of a cat", "a red car on a street", "a bowl of fruit", "a mountain lake"]
SD15 = {"unet": (320, 640, 1280, 1280), "latent": 64, "cross": 768, "heads": 8,
        "vae": (128, 256, 512, 512), "text_width": 768, "text_layers": 12}  # fmt: skip
TINY = {"unet": (32, 64), "latent": 8, "cross": 32, "heads": 8, "vae": (16, 32),
        "text_width": 32, "text_layers": 2}  # fmt: skip


def build_pipeline(folder: Path, shape: dict) -> Path:
    """A ``StableDiffusionPipeline`` of ``shape`` with random weights, saved by diffusers."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    from scoredistill.train.sd_text import make_clip_text

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    levels = len(shape["unet"])
    unet = UNet2DConditionModel(
        sample_size=shape["latent"], block_out_channels=shape["unet"],
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=shape["cross"], attention_head_dim=shape["heads"],
        norm_num_groups=min(32, shape["unet"][0]),
    )  # fmt: skip
    f = len(shape["vae"]) - 1
    vae = AutoencoderKL(
        block_out_channels=shape["vae"], down_block_types=("DownEncoderBlock2D",) * (f + 1),
        up_block_types=("UpDecoderBlock2D",) * (f + 1), latent_channels=4, layers_per_block=2,
        norm_num_groups=min(32, shape["vae"][0]), sample_size=shape["latent"] * 2**f,
    )  # fmt: skip
    text_cfg = SimpleNamespace(max_length=77, text_width=shape["text_width"],
                               text_layers=shape["text_layers"], seed=0)  # fmt: skip
    tokenizer, text_encoder = make_clip_text(text_cfg)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def time_run(teacher: Path, prompts: Path, preset: str, precision: str, args) -> dict:
    """One ``distill`` run; its per-step times and peak memory from ``metrics.jsonl``."""
    from scoredistill.cli import main

    out = args.work / f"{preset}-{precision}"
    sets = [f"train.steps={args.steps}", f"train.batch_size={args.batch}", "train.log_every=1",
            "train.eval_every=0", "train.checkpoint_every=100000", "eval.samples=4",
            "eval.nfe=[1]", 'eval.samplers=["ddim"]', "eval.panel_nfe=1", "export=false",
            f"precision={precision}"]  # fmt: skip
    argv = ["distill", "--preset", preset, "--teacher", str(teacher), "--prompts", str(prompts),
            "--out", str(out)] + [a for s in sets for a in ("--set", s)]  # fmt: skip
    t0 = time.perf_counter()
    code = main(argv)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if not r.get("eval") and "wall_s" in r]
    dt = [b["wall_s"] - a["wall_s"] for a, b in itertools.pairwise(steps)]
    dt = dt[args.warmup :] or dt
    mem = [r["cuda_max_mib"] for r in steps if "cuda_max_mib" in r]
    return {"preset": preset, "precision": precision, "exit": code, "batch": args.batch,
            "step_s": statistics.median(dt) if dt else None, "steps_timed": len(dt),
            "peak_mib": max(mem) if mem else None, "run_s": time.perf_counter() - t0}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, default=None, help="default: an SD-1.5-sized build")
    p.add_argument("--work", type=Path, default=Path("runs/gpu-bench"))
    p.add_argument("--presets", nargs="+", default=["dmd2-sd", "swiftbrush-sd"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tiny", action="store_true", help="a small pipeline: checks the script")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    teacher = a.teacher or build_pipeline(a.work / "teacher", TINY if a.tiny else SD15)
    prompts = a.work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    rows = [time_run(teacher, prompts, preset, prec, a) for preset in a.presets
            for prec in a.precisions]  # fmt: skip
    print(f"device: {device}; teacher: {teacher}; batch {a.batch}")
    print("| preset | precision | s / step | peak MiB | exit |\n|---|---|---:|---:|---:|")
    for r in rows:
        step = f"{r['step_s']:.3f}" if r["step_s"] is not None else "—"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "—"
        print(f"| {r['preset']} | {r['precision']} | {step} | {peak} | {r['exit']} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                      "rows": rows}, indent=2))  # fmt: skip
    sys.exit(max(r["exit"] for r in rows))


if __name__ == "__main__":
    main()
