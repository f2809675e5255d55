"""Presets ``<method>-sd`` for ``scoredistill distill --teacher DIR --prompts FILE``.

``DIR`` is any local ``StableDiffusionPipeline``-layout folder (``teachers.diffusers_latent``);
``FILE`` a prompt list, one per line (distillation is data-free on prompts). Paper defaults are
cited beside each value; departures carry their reason. The budget is sized for the tiny
text-to-image teacher that ``scoredistill train-teacher --arch sd --data digits`` makes (a
~0.3M-parameter UNet on 4×4×4 latents): a few hundred generator updates on 2 CPU cores. On a
real SD checkpoint the papers' learning rates and budgets apply (set them with ``--set``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DESCRIPTIONS", "PRESETS", "QUICK"]

_CPU = {
    "train.steps": 300,
    "train.batch_size": 32,
    "train.eval_every": 100,
    "train.checkpoint_every": 100,
    "train.log_every": 10,
    "train.eval_samples": 256,
    "train.ema_halflife": 20.0,  # the papers' EMA half-lives exceed the CPU budget
}
# SwiftBrush (launch script of ``train_swiftbrush.py``): student lr 1e-6, LoRA critic lr 1e-3,
# LoRA rank 64 / alpha 108, CFG 4.5, one critic update per student update. The student here is
# a LoRA too (the CLI contract: one base in memory for teacher, critic and student).
# Departure: student lr 1e-4 (1e-6 does not move a student in a few hundred CPU steps; the
# pixel vsd-unet preset's rate).
_SWIFTBRUSH = {
    "method": "vsd",
    "train.critic_updates": 1,
    "train.lr_generator": 1e-4,
    "train.lr_critic": 1e-3,
    "objective.guidance": 4.5,
    "student.lora": True,
    "student.lora_rank": 64,
    "student.lora_alpha": 108.0,
    "critic.lora": True,
    "critic.lora_rank": 64,
    "critic.lora_alpha": 108.0,
}
# DMD2 on SD 1.5 (``tianweiy/DMD2`` experiments/sdv1.5/...dfake10_from_scratch.sh): generator
# and fake lr 1e-5, real (teacher) guidance 1.75, fake guidance 1, grad clip 10, 10 fake
# updates per generator update, full UNets; AdamW (0.9, 0.999, wd 0.01) as ``main/train_sd.py``.
# Departures: lr 2e-5 (the pixel dmd2-unet preset's CPU rate) and 5 fake updates per step
# (10 would halve the generator updates of the CPU budget).
_DMD2 = {
    "method": "dmd",
    "train.critic_updates": 5,
    "train.optimizer": "adamw",
    "train.weight_decay": 0.01,
    "train.beta1_generator": 0.9,
    "train.beta1_critic": 0.9,
    "train.lr_generator": 2e-5,
    "train.lr_critic": 2e-5,
    "train.grad_clip": 10.0,
    "objective.guidance": 1.75,
    # DMD2's SD runs draw min/max_step_percent 0.02/0.98 of SD's own 1000-step table (the
    # objective's default reference is its ImageNet Karras table)
    "objective.t_reference": "vp-scaled-linear",
}
# SiD-LSG on SD 1.5 (``mingyuanzhou/SiD-LSG`` run_sid.sh 'sd1.5'): LSG with kappa1 = kappa2 =
# kappa3 = kappa4 = 2, alpha 1, init_timestep 625, Adam, lr = glr = 1e-6, full UNets, batch
# 512; SiD's Adam betas (0, 0.999). Its time range is in SD's steps (t_reference: SD's table).
# Departure: lr 5e-5 (the pixel sid-unet preset's CPU rate).
_SID_LSG = {
    "method": "sid",
    "train.critic_updates": 1,
    "train.beta1_generator": 0.0,
    "train.beta1_critic": 0.0,
    "train.lr_generator": 5e-5,
    "train.lr_critic": 5e-5,
    "student.init_timestep": 625,
    "objective.sid_alpha": 1.0,
    "objective.guidance": 2.0,
    "objective.guidance_fake": 2.0,
    "objective.guidance_critic": 2.0,
    "objective.t_reference": "vp-scaled-linear",
}
# SiD-LSG's other reported scale (Zhou et al., arXiv 2406.01561, abstract: FID 8.15 at LSG scale
# 1.5, 9.56 with the higher CLIP score at 2): kappa1..4 = 1.5, the rest sid-lsg-sd's. On the
# bundled teacher it is the one-step student below the teacher's best 4-NFE FD at equal prompt
# accuracy on 3 seeds (docs/text_to_image.md, "At equal prompt accuracy").
_LSG_15 = {
    "objective.guidance": 1.5,
    "objective.guidance_fake": 1.5,
    "objective.guidance_critic": 1.5,
}
# Few-step SiD's Zero-CFG (Zhou, Gu, Wang 2025, arXiv 2505.12674, abstract): "disables CFG in
# the teacher and removes text conditioning in the fake score network" (κ4 = 1, κ2 = κ3 = 0; the
# fake's own DSM unguided, κ1 = 1, with SiD-LSG's 10 % prompt dropout so its unconditional branch
# is learned). The rest is sid-lsg-sd's (one step: the few-step mixture is not in this family).
_ZERO_CFG = {
    "objective.guidance": 1.0,
    "objective.guidance_fake": 0.0,
    "objective.guidance_critic": 1.0,
}
# SFD (Chen et al. 2025; objectives/sfd.py) forgetting one prompt of the list: its rows ask the
# teacher for ``safe_prompt`` while the fake keeps the prompt; every other prompt is distilled as
# sid-lsg-sd distils it, so SFD's base is SiD-LSG above (not SFD's own CIFAR-10 SiD, alpha 1.2,
# t in [38, 712] of the linear table): the one change is the forgotten prompt. Fake DSM weight
# on forget rows: the official 0.01 (SFD's default). The two digits are an example; any two
# prompts of the list work.
_SFD = {
    **{k.replace("objective.", "objective.base.", 1): v for k, v in _SID_LSG.items()},
    "method": "sfd",
    "objective.base.t_range": [0.0, 0.8],  # SiD's own default, as sid-lsg-sd runs it
    "forget_prompt": "a handwritten 3",
    "safe_prompt": "a handwritten 8",
}
# SNOOPI (Nguyen et al., arXiv 2412.02687 v3, Sec. 6.1): SwiftBrush with PG-SB's random
# teacher scale kappa ~ U(0.5, 4) (SD 1.5 / 2.1) and NASA-T: the negative prompt as the teacher's
# CFG null (eq. 5), NASA in the student's cross-attention with alpha ~ U(0, 1) per iteration, the
# LoRA teacher without the negative (runs/sd_nasa.py). The paper draws each negative from 10K
# prompts built from terms like "bad photo, duplicate, low resolution, low quality": give such a
# list as nasa.negatives=FILE (one drawn per step). Departure: the preset has no list, so it
# trains with one negative prompt (negative_prompt; this default is of that kind: set your own).
# The rest is swiftbrush-sd's (its CPU departures included).
_SNOOPI = {
    "objective.guidance_range": [0.5, 4.0],
    "nasa.alpha_range": [0.0, 1.0],
    "negative_prompt": "low quality, blurry",
}
PRESETS: dict[str, dict[str, Any]] = {
    "swiftbrush-sd": {**_CPU, **_SWIFTBRUSH},
    "snoopi-sd": {**_CPU, **_SWIFTBRUSH, **_SNOOPI},
    "dmd2-sd": {**_CPU, **_DMD2},
    "sid-lsg-sd": {**_CPU, **_SID_LSG},
    "sid-lsg15-sd": {**_CPU, **_SID_LSG, **_LSG_15},
    "sid-zerocfg-sd": {**_CPU, **_SID_LSG, **_ZERO_CFG},
    "sfd-sd": {**_CPU, **_SFD},
}
DESCRIPTIONS: dict[str, str] = {
    "swiftbrush-sd": "SwiftBrush (VSD): one-step LoRA student + LoRA critic on one base, CFG 4.5",
    "snoopi-sd": "SNOOPI: SwiftBrush with PG-SB's random CFG and NASA-T (negative prompt in the "
    "student's cross-attention, alpha ~ U(0, 1))",
    "dmd2-sd": "DMD2 one-step full student and full fake UNet, CFG 1.75 (SD 1.5 recipe)",
    "sid-lsg-sd": "SiD-LSG one-step student, long and short guidance 2, from timestep 625",
    "sid-lsg15-sd": "SiD-LSG at the paper's FID scale 1.5 (long and short guidance 1.5)",
    "sid-zerocfg-sd": "SiD one-step student with Zero-CFG: teacher unguided, fake unconditional",
    "sfd-sd": "SFD on SiD-LSG: forget_prompt's rows ask the teacher for safe_prompt",
}
QUICK = [
    "train.steps=3",
    "train.batch_size=8",
    "train.eval_every=0",
    "train.checkpoint_every=1000",
    "train.log_every=1",
    "train.ema_halflife=1",
    "eval.samples=32",
    "eval.nfe=[1, 2]",
    'eval.samplers=["ddim"]',
    "eval.panel_nfe=2",
]
