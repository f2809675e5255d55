"""Presets ``<method>-unet`` of family ``distill-consistency-unet``: consistency distillation of a
diffusers teacher folder (``scoredistill distill --preset cd-unet|scm-unet --teacher DIR``).

The budget is sized for the bundled 0.28M-parameter 8×8 digits UNet on one core: a CD step at
batch 32 runs the student (forward and backward), the EMA target and the teacher once each;
1200 steps and the evaluation (the teacher's 37 sampler cells at n = 1000 included) took 380 CPU-s
(530 s of training wall time on a shared 2-core machine; docs/consistency.md). Paper defaults
stay in ``objectives/cd.py`` (LCM's solver grid 1000 / skip 20, target EMA 0.95, l2) and the
loop; departures are written here with their reason.
"""

from __future__ import annotations

from typing import Any

from .unet import QUICK as UNET_QUICK

__all__ = ["DESCRIPTIONS", "PRESETS", "QUICK"]

# Departure (both presets): LCM's grid (50 of 1000, k = 19 ... 999) topped where the log-SNR falls
# below -5.4, just under Stable Diffusion's k = 999 (-5.36; the table LCM was built on, whose grid
# the cut leaves whole). On the bundled cosine table sqrt(abar_999) = 4.9e-5: an eps-network's x0
# there amplifies its error 2e4x and saturates at the clip, and the 1-step FD was 150.5 (cd) /
# 175.9 (scm); topped at k = 939 (log-SNR -4.73) the students train and sample where x0 is
# defined (docs/consistency.md, "A grid topped below k = 999")
_TOP = -5.4
_CPU = {
    "train.steps": 1200,
    "train.batch_size": 32,
    "train.eval_every": 400,
    "train.checkpoint_every": 400,
    "train.log_every": 10,
    "train.eval_samples": 500,
    # the evaluated EMA (the target network keeps LCM's 0.95); a 10^5-step half-life would
    # leave the evaluated student at the teacher in a CPU budget (as the unet presets)
    "train.ema_halflife": 20.0,
}
# LCM (diffusers ``train_lcm_distill_sd_wds.py``): AdamW (0.9, 0.999), weight decay 1e-2,
# max_grad_norm 1, DDIM solver on 50 of the teacher's 1000 timesteps (skip 20), target EMA 0.95,
# l2; the solver grid is LCM's own on the teacher's table (objective.spacing=table). The
# guidance-scale embedding (w ~ U[5, 15]) is left out: the class-conditional teacher is distilled
# at its own conditional law (w = 1). lr 1e-4: the script's argparse default (read in a fork of
# it, not confirmed in diffusers itself); at 300 steps it beat the unet DMD2 preset's 2e-5 at 1, 2
# and 4 steps (FD 135 / 42 / 29 vs 143 / 56 / 36, n = 500, seed 0; docs/consistency.md)
_CD = {
    "method": "cd",
    "objective.spacing": "table",
    "objective.top_log_snr": _TOP,
    "train.optimizer": "adamw",
    "train.beta1": 0.9,
    "train.beta2": 0.999,
    "train.weight_decay": 0.01,
    "train.grad_clip": 1.0,
    "train.lr": 1e-4,
}
# sCD (FastGen ``configs/experiments/EDM/config_scd_in64.py`` on ``config_scm.py``): Adam
# (0.9, 0.99), no weight decay, grad clip 10; the objective's defaults (objectives/scm.py) keep
# log sigma ~ N(-1, 1.4), c = 0.1, prior and adaptive weighting. Departures: lr 2e-5, not
# FastGen's 7e-5: at batch 32 (FastGen's batches are far larger) 7e-5 degraded seed 1 between
# steps 800 and 1200 (2-step FD 49 -> 177) and left 3-seed 4-step FD 30.4 +- 15.5; 2e-5 gave
# 22.9 +- 2.5 with no such drop (docs/consistency.md, "scm-unet"); the
# tangent warm-up spans 400 steps, a third of the budget, not 10 000 (r would stay below 0.12;
# scm-ring8 does the same); Adam's eps stays torch's 1e-8 (FastGen: 1e-11, for fp16 AMP); no
# inverse-square-root lr decay (FastGen: over 35 000 steps, beyond the budget); the student
# samples on LCM's 50-step grid of the teacher's table, as the exported LCMScheduler does
# (FastGen's 2-step sCM re-noises at sigma 0.821): one sampler for cd-unet and scm-unet
_SCM = {
    "method": "scm",
    "objective.tangent_warmup_steps": 400,
    "student.top_log_snr": _TOP,
    "train.optimizer": "adamw",
    "train.beta1": 0.9,
    "train.beta2": 0.99,
    "train.weight_decay": 0.0,
    "train.grad_clip": 10.0,
    "train.lr": 2e-5,
}
PRESETS: dict[str, dict[str, Any]] = {"cd-unet": {**_CPU, **_CD}, "scm-unet": {**_CPU, **_SCM}}
DESCRIPTIONS: dict[str, str] = {
    "cd-unet": "LCM-style consistency distillation of a diffusers teacher (skipping-step DDIM on "
    "50 of its 1000 timesteps, EMA target 0.95); 1/2/4-step samples, LCMScheduler export",
    "scm-unet": "sCM (Lu & Song 2024) on a diffusers teacher: continuous-time CD in TrigFlow with "
    "a forward-mode JVP through the UNet; 1/2/4-step samples, LCMScheduler export",
}

# ``--quick``: the distill-unet family's smoke budget (same loop and eval keys)
QUICK = UNET_QUICK
