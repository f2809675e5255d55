"""Presets ``<method>-sd`` for ``scoredistill optimize --teacher DIR --prompts FILE``.

Score distillation as optimization with a text-to-image latent prior: ``N`` latent particles
(DreamFusion's image-as-parameters, in latent space as threestudio's 2-D playground
``2dplayground.ipynb`` with ``mode='latent'``), particle ``i`` prompted by prompt ``i mod P``.
Paper defaults are cited beside each value; departures carry their reason. Budgets are sized for
the bundled digits teacher (a ~0.8M-parameter UNet on 4×4×4 latents, 30 prompts) on 2 CPU cores:
each preset fits in about 3 minutes. On a real SD checkpoint the cited budgets apply (``--set``).

ESD needs cameras: its entropy term is the critic without the camera, beside the text
(threestudio's LoRA UNet takes ``class_labels=camera`` *and* the prompt). On particles the only
label is the prompt, and the null-prompt critic would mix every prompt's particles: entropy
across prompts, another method than the paper's (``runs.optimize_sd`` refuses ``lam > 0``
there). ``esd-sd`` therefore optimises a voxel field (``source.kind=field``) seen from ring
cameras, as the paper does, with ``sds-sd-field`` and ``vsd-sd-field`` beside it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DESCRIPTIONS", "PRESETS", "QUICK", "SUCCESSORS"]

# Both presets: latents ~ N(0, I) (threestudio 2dplayground.ipynb and yuanzhi-zhu/
# prolific_dreamer2d, an unofficial 2-D ProlificDreamer, both in latent mode), Adam with torch's
# betas (0.9, 0.999), every particle every step. Departure: N = 60 particles (2 per prompt of the
# digits teacher) updated together, where the references optimise one image (or 16) per prompt.
_LATENT = {
    "source.n_particles": 60,
    "source.init_std": 1.0,
    "train.batch_size": 0,
    "train.beta1": 0.9,
    "train.beta2": 0.999,
    "train.eval_every": 100,
    "train.checkpoint_every": 100,
    "train.log_every": 10,
}
# DreamFusion (Poole et al. 2023): guidance w' = 100 in eps_c + w'(eps_c - eps_∅), t ~ U(0.02,
# 0.98), w(t) = 1 - alpha_bar: the SDS objective's own defaults (objectives/sds.py; 101 in this
# library's D_∅ + w (D_c - D_∅) convention). Optimizer of threestudio's 2dplayground.ipynb (latent
# SDS at guidance_scale 100): AdamW lr 1e-1 with weight decay 0 (= Adam), 1000 steps, cosine
# schedule with 100 warm-up steps over 1.5 x 1000. Departures: 600 steps (the CPU budget) and a
# linear decay to 0 (the loop's rate is a function of the step, so resume stays bit-exact).
_SDS = {
    "method": "sds",
    "objective.guidance": 101.0,
    "train.lr": 0.1,
    "train.lr_decay": True,
    "train.steps": 600,
}
# ProlificDreamer (Wang et al. 2023), threestudio configs/prolificdreamer.yaml and
# models/guidance/stable_diffusion_vsd_guidance.py: teacher CFG 7.5 (diffusers convention),
# the LoRA branch unguided (guidance_scale_lora 1): ESD with lam = 0, as the optimize family's
# 3-D VSD; LoRA lr 1e-4 (guidance lr), one LoRA step per particle step (lambda_lora 1), LoRA
# rank 4 at scale 1 (diffusers' LoRAAttnProcessor default, no network_alpha), on the teacher's
# own UNet (pretrained_model_name_or_path_lora = the teacher: one model), t ~ U(0.02, 0.98)
# (max_step_percent_annealed 0.98), LoRA steps t ~ U{0..999}; no critic warm-up (the LoRA starts
# as the teacher, B = 0). Particles: prolific_dreamer2d's README commands, Adam lr 0.03 constant
# (use_scheduler false), 500 steps for one particle, 1500 for 16. Departures: 200 steps (the CPU
# budget: a VSD step costs 3 SDS steps) and objective.cond_drop 0, since threestudio's 10 %
# dropout (lora_cfg_training) drops the camera, never the text, and the label here is the text.
_VSD = {
    "method": "esd",
    "objective.lam": 0.0,
    "objective.guidance": 7.5,
    "objective.cond_drop": 0.0,
    "train.lr": 0.03,
    "train.lr_decay": False,
    "train.lr_critic": 1e-4,
    "train.critic_updates": 1,
    "train.critic_warmup": 0,
    "critic.lora_rank": 4,
    "critic.lora_alpha": 4.0,
    "train.steps": 200,
}
# The successors without a critic keep their objectives' own paper defaults (guidance, time
# ranges and weightings on SD's 1000 steps, mapped by log-SNR: objectives/csd.py, cds.py, asd.py,
# bsd.py, ism.py) and take the latent-image optimizer of sds-sd. Departure: every one of these
# papers optimises a 3-D field (NeRF / 3DGS) with its own geometry optimizer and anneals its time
# range over 3k-25k steps; on latent particles there is no such optimizer to take, and the
# objectives' defaults are each paper's *final* (or starting, for ASD) range, fixed.
_SUCCESSORS = {"method": "", "train.lr": 0.1, "train.lr_decay": True, "train.steps": 600}
# ISM costs xs_inv_steps + 2 = 7 teacher calls a step (SDS: 2 in one batch), so 200 steps keep
# it in the same CPU budget
_STEPS = {"ism": 200, "cds": 400}
SUCCESSORS = ("csd", "cds", "asd", "bsd", "ism")

# A voxel field through the VAE (runs.optimize_sd_field): the views testbed's loop settings
# (presets/optimize.py _VIEWS: Adam lr 0.05 (0.9, 0.99) on the raw voxels, 4 cameras a step,
# 800 steps), 16^3 voxels for the bundled teacher's 8x8 renders. VSD and ESD keep _VSD's
# ProlificDreamer values but with the camera in the critic, dropped in 10 % of its rows
# (threestudio lora_cfg_training), which is what ESD's camera-free branch needs.
_FIELD = {
    "source.kind": "field",
    "train.batch_size": 4,
    "train.lr": 0.05,
    "train.lr_decay": False,
    "train.beta1": 0.9,
    "train.beta2": 0.99,
    "train.steps": 800,
    "train.eval_every": 400,
    "train.checkpoint_every": 200,
    "train.log_every": 25,
}
_FIELD_CRITIC = {**_VSD, "objective.cond_drop": 0.1}
# ESD (Wang et al. 2024), objectives/esd.py: lam = 0.5 (the ESD README's guidance_scale_lora
# 0.5), the rest ProlificDreamer's, as the paper builds on threestudio's VSD
_ESD = {**_FIELD_CRITIC, "objective.lam": 0.5}
# HiFA (Zhu et al. 2024), objectives/hifa.py: the objective keeps the official code's defaults
# (CFG 100, a 4-step DDIM(eta 1) target, w = 0.05, t annealed 980 -> 300 as sqrt(step/steps))
# on the field's loop settings (as sds-sd-field). Departure: lambda_rgb 100, not 0.1. The
# weight is relative to the latent term, whose pull on the renders comes through this tiny
# VAE's encoder 100-1600x as hard as the image term's at lambda_rgb = 1
# (benchmarks/hifa_grad_ratio.py: median 106-126 on SDS fields, 1595 at the start); at 0.1 the
# image term is < 0.1 % of the update and the fields stay colour noise (raw nn_rms 0.49-0.50,
# SDS 0.51); at 100 (3 seeds) the raw renders read as the asked views 0.92 of the time (SDS
# 0.67-0.71), nn_rms 0.24, PSNR 17.0 (11.5) (docs/text_to_image.md, "HiFA's image-space term")
_HIFA = {"method": "hifa", **_FIELD, "objective.lambda_rgb": 100.0}

PRESETS: dict[str, dict[str, Any]] = {
    "sds-sd": {**_LATENT, **_SDS},
    "vsd-sd": {**_LATENT, **_VSD},
    **{
        f"{m}-sd": {**_LATENT, **_SUCCESSORS, "method": m, "train.steps": _STEPS.get(m, 600)}
        for m in SUCCESSORS
    },
    # the field's loop settings over the method's (its lr, steps and batch replace the latents')
    "sds-sd-field": {**_SDS, **_FIELD},
    "vsd-sd-field": {**_FIELD_CRITIC, **_FIELD},
    "esd-sd": {**_ESD, **_FIELD},
    "hifa-sd-field": _HIFA,
    **{f"{m}-sd-field": {**_SUCCESSORS, "method": m, **_FIELD} for m in SUCCESSORS},
}
_ABOUT = {
    "csd": "CSD (Yu et al. 2024): the classifier score eps_c - eps_0 alone",
    "cds": "CDS (Consistent3D): a fixed-noise ODE segment t -> t' as the target",
    "asd": "ASD (ScaleDreamer): eps(x_t, t, c) against eps(x_t+dt, t+dt, 0)",
    "bsd": "BSD (PlacidDreamer): classifier score 15 + the null term",
    "ism": "ISM (LucidDreamer): DDIM-inverted x_s and the interval s -> t",
}
DESCRIPTIONS: dict[str, str] = {
    "sds-sd-field": "SDS on a voxel field rendered and encoded through the VAE, view prompts",
    "vsd-sd-field": "VSD on a voxel field through the VAE, LoRA critic with a camera embedding",
    "esd-sd": "ESD (Wang et al. 2024) on a voxel field through the VAE: VSD + camera-free "
    "critic mixed at lam 0.5",
    "hifa-sd-field": "HiFA (Zhu et al. 2024) on a voxel field: SDS toward a 4-step DDIM target "
    "plus an image-space term on the renders (lambda_rgb 100; HiFA's 0.1 is too weak here)",
    "sds-sd": "SDS (DreamFusion) on latent particles of a text-to-image teacher, CFG 100",
    "vsd-sd": "VSD (ProlificDreamer) on latent particles, CFG 7.5, LoRA critic on the teacher",
    **{f"{m}-sd": f"{_ABOUT[m]}, on latent particles" for m in SUCCESSORS},
    **{f"{m}-sd-field": f"{_ABOUT[m]}, on a voxel field through the VAE" for m in SUCCESSORS},
}
# ``--quick``: seconds per run; checks that the run works, not the numbers
QUICK = [
    "train.steps=3",
    "source.n_particles=16",
    "train.eval_every=0",
    "train.checkpoint_every=1000",
    "train.log_every=1",
    "train.critic_warmup=1",
]
