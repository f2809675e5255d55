"""Distillation presets ``<method>-<testbed>``: plain dicts of ``--set`` overrides.

A preset is a method's settings (``METHODS``) on top of a testbed's CPU budget (``BUDGETS``).
Paper defaults stay in the objectives; every value that differs from one is set here with the
reason. Budgets are for 2 cores; measured wall times are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BUDGETS", "DESCRIPTIONS", "METHODS", "PRESETS", "QUICK", "TESTBEDS"]

_TWO_D = {
    "train.steps": 1500,
    "train.batch_size": 512,
    "train.eval_every": 500,
    # an MLP generator from scratch needs lr 1e-3 on the 2-D rings (1e-4 left every mode of ring8
    # uncovered after 300 steps)
    "train.lr_generator": 1e-3,
}
BUDGETS: dict[str, dict[str, Any]] = {
    "ring8": _TWO_D,  # ~4 min
    "ring8-unbalanced": _TWO_D,
    "grid25": _TWO_D,
    "cond2d": _TWO_D,
    "gmm64": {"train.steps": 1500, "train.batch_size": 256, "train.eval_every": 500},
    "digits": {"train.steps": 1500, "train.batch_size": 256, "train.eval_every": 500},
}
TESTBEDS = ("ring8", "grid25", "cond2d", "gmm64", "digits")
_SHARP = ("ring8", "ring8-unbalanced", "grid25", "cond2d")  # mode std 0.05-0.1

# SiD and SIM take gradients through the teacher's input: on the sharp 2-D mixtures times down
# to sigma = 0.002 diverge (docs/benchmarks.md, "SiD finding"); sigma >= 0.32 converges (0.3 of
# SiD's Karras grid, its t_reference "edm"). Their critic is updated once per generator step and
# Adam runs with (0, 0.999) as in SiD (mingyuanzhou/SiD run_sid.sh). Departure: SiD uses equal
# rates (1e-5 both); here the generator takes 1e-4 and the critic the loop's 1e-3 (the values
# every recorded SiD/SIM result used).
_SID_LIKE = {"train.critic_updates": 1, "train.lr_generator": 1e-4}
# Evidence (benchmarks/sid_sweep.py, docs/benchmarks.md "SiD on ring8: sid_alpha x rates"): the
# full range diverges at sid_alpha 1.2 only; alpha 0.5 (10:1) on it beat this preset at 800 steps
_SID_SHARP = {"objective.t_range": [0.3, 0.8]}
# DMD2's optimiser (tianweiy/DMD2 main/train_sd.py: AdamW, betas (0.9, 0.999), weight decay
# 0.01, both players). Measured on dmd2-ring8, seed 0, full budget: MMD^2 0.0087 with all 8 modes
# against 0.022 and 5 of 8 with the Adam(0, 0.999) previously attributed to DMD2 (issue 15.4)
_DMD2_OPT = {
    "train.optimizer": "adamw",
    "train.beta1_generator": 0.9,
    "train.beta1_critic": 0.9,
    "train.weight_decay": 0.01,
}
# TDM and Phased DMD train 4-step students on the library's default student grid, as dmd2-4step
# (departure: TDM's demo uses k * 900/4 - 1 on PixArt's 1000-step table, Phased DMD a shifted flow
# grid); comparing the three on one grid isolates the objective
_FOUR_STEP = {"generator.kind": "few_step", "generator.steps": 4}
# TDM's demo (Luo-Yihong/TDM train_tdm_demo.py, README command): one fake update per student update,
# AdamW betas (0, 0.95) with weight decay 1e-2 for both, student lr = fake lr / 5, max_grad_norm 1.
# Departures: rates 2e-4 / 1e-3, not 4e-6 / 2e-5 (an MLP from scratch in 1500 CPU steps, not a
# pretrained PixArt: the loop's critic rate with TDM's 1:5 ratio); constant, not cosine with
# restarts; the clip applies to both players (the demo clips the student only); the EMA is
# scored, as in every preset (the README run has no EMA)
_TDM_OPT = {
    "train.critic_updates": 1,
    "train.optimizer": "adamw",
    "train.beta1_generator": 0.0,
    "train.beta1_critic": 0.0,
    "train.beta2": 0.95,
    "train.weight_decay": 0.01,
    "train.grad_clip": 1.0,
    "train.lr_generator": 2e-4,
    "train.lr_critic": 1e-3,
}
# MSD (Song et al. 2024, arXiv 2410.23274): DMD2's objective and optimiser, one one-step student
# per block of consecutive classes. The paper's K is 4 same-sized students (ImageNet-64, COCO);
# cond2d has 2 classes, so K = 2 there (one student per class), digits takes the paper's 4
# (classes 0-2, 3-5, 6-7, 8-9). Same-sized: each student is the single student's MLP (the
# comparison the paper's "same-sized" rows make, against dmd2-<testbed>). Departures: fresh MLP
# students, not teacher copies (msd-teacher-init below starts them from the teacher, and fits
# smaller ones by the paper's TSM first); no ADM (GAN) stage; one batch of train.batch_size rows per step shared
# by the students (each sees about B/K rows), one conditional critic for all of them (its target
# given c is the owning student's fake score), and the gradient clip taken over all students
_MSD_STUDENTS = {"cond2d": 2, "digits": 4}
# DisBack (Zhang et al. 2024, SYZhang0805/DisBack) on DMD2: the path s_0 .. s_4 recorded by 600 DSM
# steps on the initial generator's samples, s_3, s_2, s_1 each the target for a sixth of the steps,
# then the teacher. The release gives no path length or stage-2 schedule (departures, measured in
# docs/consistency.md); the recording's batch and lr are the critic's teacher fit's
_DISBACK = {"backtrack.nodes": 4, "backtrack.record_steps": 600, "backtrack.fraction": 0.5}
# VSD/SwiftBrush guide with 4.5 for text prompts; the exact conditional law is the target here
_NO_CFG = {"objective.guidance": 1.0}

# DMD2 from the teacher's weights, as DMD2, SiD and FastGen start (issue 15's suspected cause of the
# gap to FastGen): the student is a copy of the critic's DSM fit to the exact teacher, fed
# sigma_init z with SiD's sigma_init = 2.5 (DMD2's sigma_max = 80 starts from the mean and was
# worse at 500 steps, docs/benchmarks.md); the critic's preconditioning uses the data's own std.
# The critic loss keeps EDM's 0.5 in its weighting, as measured (the matched weighting is not
# measured yet)
_TEACHER_INIT = {
    "generator.init": "teacher",
    "generator.sigma_init": 2.5,
    "critic.sigma_data": None,
    "objective.sigma_data": 0.5,
}
# 3000 generator steps, not the testbed's 1500: on ring8 all three seeds were still improving at
# step 1500 (local MMD^2 0.056 -> 0.021 from step 1000, seed 0) and at 3000 seeds 0-1 are below the
# teacher's best 4-NFE sampler on all three metrics (docs/benchmarks.md, "ring8 at 3000 steps");
# 275 s on ring8, inside issue 15's 15 CPU-minute run budget
_TEACHER_INIT_STEPS = {"train.steps": 3000}
# DMD v1's regression term on the teacher-initialised DMD2 student (3000 steps, as
# dmd2-teacher-init). Departure: lambda_reg = 4, not the paper's 0.25 (LPIPS there, a squared
# distance here, so the paper's value does not carry over): seed 0 on ring8 reads 0.866 / 0.878 /
# 0.905 of its samples within 3 std at 3000 steps for 0.25 / 1 / 4 (the paper's 0.25 needs 6000
# steps for 0.906), on digits MMD^2 0.017 / 0.0086 / 0.0055. The pairs are 4096 DPM-Solver++(2M)
# 64-NFE samples of the exact teacher (DistillConfig's defaults). docs/benchmarks.md, "DMD v1's
# regression term on the teacher-initialised student" (stop 36)
_REGRESSION = {"objective.regression_weight": 4.0}
# The regression student fitted fast (grid25's remedy, stops 39 and 41; the one-step grid25
# preset and dmd2-reg-fast): generator lr 1e-2 with a cosine decay, lambda_reg 16, and one critic
# update per generator step, not DMD2's five (departure: the student's fit of its map is the
# limit, not the critic, and one update makes a generator step ~2.5x cheaper)
_FAST_FIT = {
    "objective.regression_weight": 16.0,
    "train.lr_generator": 1e-2,
    "train.lr_schedule": "cosine",
    "train.critic_updates": 1,
}
# Per-testbed departures of dmd2-teacher-init-reg from its 3000 steps at lr 1e-3 and lambda_reg 4.
# ring8 and digits: 6000 steps, where 3000 fall short of issue 15's one-step target on some seed
# and 6000 meet it on every seed (ring8: 0.893 -> 0.915 of seed 2's samples within 3 std; digits:
# MMD^2 1.6-1.8x the best 4-NFE cell -> below it on all three metrics; docs/benchmarks.md, "The
# regression preset at 6000 steps", stop 37). grid25: the student's fit of its sharp z -> x map is
# the limit (regression alone stalls where the run stalls), so the generator's rate is 1e-2 with a
# cosine decay (both players) and lambda_reg 16 (docs/benchmarks.md, "grid25's plateau is the
# student's fit of its map", stop 39); one critic update per generator step, not DMD2's five, and
# 9000 steps for the 4500 at five (departure, stop 41: the fit needs generator steps, regression
# alone reads 0.90 / 0.93 within 3 std at 4500 / 9000; 3 seeds at five updates and 4500 steps
# ended at 0.868 / 0.895 / 0.906, at one and 9000 at 0.930 / 0.939 / 0.922; ~11.5 CPU-min alone;
# docs/benchmarks.md, "One critic update per generator step")
_REG_TESTBED: dict[str, dict[str, Any]] = {
    "ring8": {"train.steps": 6000},
    "digits": {"train.steps": 6000},
    "grid25": {**_FAST_FIT, "train.steps": 9000},
}
# DMD2's 4-step student from the teacher (as DMD2 starts), its grid from SiD's VE level 2.5 down
# (generator.sigma_init; the UNet presets' dmd2-4step-unet does the same): from scratch on the
# default grid (t = 999 first, where the denoiser returns the mean whatever z) ring8 collapsed to
# one mode over 3 seeds (MMD^2 1.94); docs/benchmarks.md, "The 4-step DMD2 student"
_FOUR_STEP_DMD2 = {"generator.kind": "few_step", "generator.steps": 4, **_TEACHER_INIT}

# The 4-step student from the teacher with DMD v1's regression on **every** step (regression_steps
# = all; ours): step k regresses the exact PF-ODE map from t_k on the teacher's own marginal
# there, step 1 the 64-NFE pairs as the one-step preset. On the first step alone (stop 37) the
# later DMD-trained steps blurred a sharp first step (90 % -> 43 % within 3 std on ring8). Same
# lambda_reg 4 and 3000 steps as dmd2-teacher-init-reg; docs/benchmarks.md, "Every step regressed"
_FOUR_STEP_REG = {**_REGRESSION, "regression_steps": "all", **_TEACHER_INIT_STEPS}

# grid25's 4-step student fits its map too slowly at the preset's generator lr (22 % within 3 std
# at 3000 steps, stop 38), as the one-step student did: 3e-3 and lambda_reg 16 (3 seeds, stop 39:
# 0.88-0.91 within 3 std from step 3750). One critic update per generator step and 7500 steps
# (stop 41; departure from DMD2's five, as the one-step grid25 preset): 500 steps alone take 42.6 s
# (11.7 it/s) + 54 s of start and evaluation, so ~12 CPU-min (five updates and 3750 steps: ~14.5),
# and 3 seeds read 0.92-0.94 within 3 std on 5 paired draws (five updates: 0.88-0.89), below the
# best 8-NFE cell on all three metrics for seeds 0 and 1; docs/benchmarks.md, "Every step regressed"
_FOUR_STEP_REG_TESTBED: dict[str, dict[str, Any]] = {
    # ring8 (stop 44): the student's levels sigma/alpha 2.5, 1.2, 0.6, 0.3 in place of Karras'
    # grid below sigma_init 2.5 (2.5, 0.74, 0.17, 0.026: its last two steps can hardly move a
    # sample). 3 seeds, 15 held-out paired draws each against the best 8-NFE cell: local MMD2
    # -0.00047 / -0.00048 / -0.00062 below it (the Karras levels: +0.00006 / +0.00075 /
    # +0.00031, above), MMD2 lower on every seed, SW2 level with both; docs/benchmarks.md,
    # "Stop 44: the student's levels". DMD2's SDXL steps mapped by SNR (14.6 ... 0.69) were worse
    "ring8": {"generator.sigma_init": None, "generator.sigmas": (2.5, 1.2, 0.6, 0.3)},
    "grid25": {
        "train.steps": 7500,
        "train.critic_updates": 1,
        "train.lr_generator": 3e-3,
        "objective.regression_weight": 16.0,
    },
}

# FastGen's ring (issue 15): the regression preset's student, fitted fast (_FAST_FIT), on 128-wide
# networks (the critic's DSM fit, which the student copies, at hidden 128 instead of 256: a step
# costs half, so 4500 steps cost what 2500 did). FastGen's ring (--testbed fgring.npz), 3 seeds, 5
# draws of 3000: 0.951 / 0.960 / 0.964 within 3 std, below the best 4-NFE cell on every metric and
# draw, in 147 s of training steps alone (153 s with the periodic evaluations): a third of the 7.5
# CPU-min of FastGen's 30k iterations (stop 41's 256-wide 2500 steps: 0.948-0.953 in 170 s, 38 %;
# 4000 steps at 128: 0.9485 on seed 0); docs/benchmarks.md, "One critic update per generator step"
_REG_FAST = {**_FAST_FIT, "critic.hidden": 128, "train.steps": 4500}

METHODS: dict[str, dict[str, Any]] = {
    "dmd": {"method": "dmd", "objective.regression_weight": 0.25, "train.critic_updates": 1},
    "dmd2": {"method": "dmd", **_DMD2_OPT},
    "dmd2-teacher-init": {"method": "dmd", **_DMD2_OPT, **_TEACHER_INIT, **_TEACHER_INIT_STEPS},
    "dmd2-teacher-init-reg": {
        "method": "dmd",
        **_DMD2_OPT,
        **_TEACHER_INIT,
        **_TEACHER_INIT_STEPS,
        **_REGRESSION,
    },
    "dmd2-reg-fast": {"method": "dmd", **_DMD2_OPT, **_TEACHER_INIT, **_REG_FAST},
    "dmd2-gan": {"method": "dmd", **_DMD2_OPT, "objective.gan_generator_weight": 3e-3},
    "dmd2-4step": {"method": "dmd", **_DMD2_OPT, **_FOUR_STEP_DMD2},
    "dmd2-4step-reg": {"method": "dmd", **_DMD2_OPT, **_FOUR_STEP_DMD2, **_FOUR_STEP_REG},
    # SwiftBrush updates its LoRA critic once per student step (train_swiftbrush.py)
    "vsd": {"method": "vsd", **_NO_CFG, "train.critic_updates": 1},
    "sid": {"method": "sid", **_SID_LIKE},
    "sid-lsg": {
        "method": "sid",
        **_SID_LIKE,
        "objective.guidance": 1.5,  # SiD-LSG's kappa = 1.5 (COCO FID 8.15), on all four scales
        "objective.guidance_fake": 1.5,
        "objective.guidance_critic": 1.5,
    },
    "sid-zerocfg": {"method": "sid", **_SID_LIKE, "objective.guidance_fake": 0.0},
    "sim": {"method": "sim", **_SID_LIKE},
    "fdistill-rkl": {"method": "fdistill", "objective.divergence": "rkl"},
    "fdistill-kl": {"method": "fdistill", "objective.divergence": "kl"},
    "fdistill-js": {"method": "fdistill", "objective.divergence": "js"},
    "fdistill-sh": {"method": "fdistill", "objective.divergence": "sh"},
    "sfd": {"method": "sfd", "train.critic_updates": 1},
    "tdm": {"method": "tdm", **_FOUR_STEP, **_TDM_OPT},
    "disback": {"method": "dmd", **_DMD2_OPT, **_DISBACK},
    "msd": {"method": "dmd", **_DMD2_OPT},  # + generator.students per testbed (_MSD_STUDENTS)
    # MSD's students from the teacher, as dmd2-teacher-init's one student (same-sized: copies of
    # the critic's teacher fit); --set generator.student_hidden=W makes them smaller, each first
    # fitted by teacher score matching (generator.tsm_steps), the paper's start for small students
    "msd-teacher-init": {
        "method": "dmd",
        **_DMD2_OPT,
        **_TEACHER_INIT,
        **_TEACHER_INIT_STEPS,
    },
    "phased-dmd": {
        "method": "phased_dmd",
        **_DMD2_OPT,
        **_FOUR_STEP,
        "generator.experts": 2,  # LightX2V: student + student_2, one per region (phase)
        "objective.phases": 2,  # match_timestep splits the 4 steps 2 + 2 (must lie on the grid)
    },
}

_GRID: dict[str, tuple[str, ...]] = {
    "dmd": TESTBEDS,
    "dmd2": (*TESTBEDS, "ring8-unbalanced"),
    "dmd2-teacher-init-reg": TESTBEDS,
    "dmd2-reg-fast": ("ring8",),  # ring-shaped mixtures given by --testbed (FastGen's ring)
    "dmd2-gan": TESTBEDS,
    "dmd2-teacher-init": TESTBEDS,  # leaderboard: 3 seeds on all but digits (1 seed)
    "dmd2-4step": ("ring8", "digits"),
    "dmd2-4step-reg": TESTBEDS,
    "vsd": TESTBEDS,
    "sid": TESTBEDS,
    "sid-lsg": ("cond2d",),
    "sid-zerocfg": ("cond2d",),
    "sim": TESTBEDS,
    "fdistill-rkl": ("ring8-unbalanced",),
    "fdistill-kl": ("ring8-unbalanced",),
    "fdistill-js": (*TESTBEDS, "ring8-unbalanced"),
    "fdistill-sh": ("ring8-unbalanced",),
    "sfd": ("cond2d", "digits"),  # SFD forgets a class: conditional testbeds only
    "tdm": TESTBEDS,  # run so far: ring8 (the others resolve; every method covers the five)
    "phased-dmd": TESTBEDS,
    "disback": TESTBEDS,  # run so far: ring8
    "msd": tuple(_MSD_STUDENTS),  # routes by class: conditional testbeds only
    "msd-teacher-init": tuple(_MSD_STUDENTS),
}


def _preset(method: str, testbed: str) -> dict[str, Any]:
    out = {"testbed": testbed, **BUDGETS[testbed], **METHODS[method]}
    if method in ("sid", "sid-lsg", "sid-zerocfg", "sim") and testbed in _SHARP:
        out.update(_SID_SHARP)
    if method == "sfd" and testbed in _SHARP:  # SFD's base is SiD; the range is SiD's (EDM) one
        out["objective.base.t_range"] = _SID_SHARP["objective.t_range"]
        out["objective.base.t_reference"] = "edm"
    if method in ("msd", "msd-teacher-init"):
        out["generator.students"] = _MSD_STUDENTS[testbed]
    if method == "dmd2-teacher-init-reg":
        out.update(_REG_TESTBED.get(testbed, {}))
    if method == "dmd2-4step-reg":
        out.update(_FOUR_STEP_REG_TESTBED.get(testbed, {}))
    return out


PRESETS: dict[str, dict[str, Any]] = {
    f"{m}-{tb}": _preset(m, tb) for m, testbeds in _GRID.items() for tb in testbeds
}

_ABOUT: dict[str, str] = {
    "dmd": "DMD (Yin et al. 2023): distribution matching + regression to teacher-ODE pairs",
    "dmd2": "DMD2 (Yin et al. 2024): distribution matching, 5 critic updates per step",
    "dmd2-teacher-init-reg": "DMD2 from the teacher plus DMD v1's regression to teacher-ODE "
    "pairs (lambda_reg 4), 3000 steps (6000 on ring8 and digits; grid25: generator lr 1e-2 "
    "with a cosine decay, lambda_reg 16, one critic update per step, 9000 steps)",
    "dmd2-reg-fast": "dmd2-teacher-init-reg fitted faster: generator lr 1e-2 with a cosine "
    "decay, lambda_reg 16, one critic update per step, 128-wide networks, 4500 steps (FastGen's "
    "ring: 95 % within 3 std in a third of FastGen's time)",
    "dmd2-gan": "DMD2 + its diffusion-GAN head on the critic",
    "dmd2-teacher-init": "DMD2, student from the teacher (its critic's DSM fit), 3000 steps",
    "dmd2-4step": "DMD2 4-step student from the teacher, backward simulation, grid from sigma 2.5",
    "dmd2-4step-reg": "dmd2-4step plus DMD v1's regression on every step (exact PF-ODE pairs at "
    "each step's time), 3000 steps (grid25: generator lr 3e-3, lambda_reg 16, one critic update per "
    "step, 7500 steps)",
    "vsd": "VSD / SwiftBrush (Nguyen & Tran 2024): one-step variational score distillation",
    "sid": "SiD (Zhou et al. 2024): score identity distillation",
    "sid-lsg": "SiD-LSG: SiD with long-and-short guidance, kappa = 1.5 on all four scales",
    "sid-zerocfg": "few-step SiD's Zero-CFG: the fake score unguided",
    "sim": "SIM (Luo et al. 2024): score implicit matching, pseudo-Huber distance",
    "fdistill-rkl": "f-distill (Xu et al. 2025) with reverse KL",
    "fdistill-kl": "f-distill with forward KL (keeps rare modes)",
    "fdistill-js": "f-distill with Jensen-Shannon",
    "fdistill-sh": "f-distill with squared Hellinger",
    "sfd": "SFD (Chen et al. 2025) forgetting, SiD base: the forgotten class answered by the safe class",
    "tdm": "TDM (Luo et al. 2025): 4-step student, each step matched in its own trajectory interval",
    "phased-dmd": "Phased DMD (Fan et al. 2025): 4 steps in 2 phases, one expert each, subinterval SM",
    "disback": "DisBack (Zhang et al. 2024): DMD2 distilled back along the recorded teacher-to-"
    "student score path, then toward the teacher",
    "msd": "MSD (Song et al. 2024): DMD2 with K same-sized one-step students, one per block of "
    "classes (K = 2 on cond2d, the paper's 4 on digits)",
    "msd-teacher-init": "MSD with its K students from the teacher (copies of the critic's teacher "
    "fit; smaller ones via generator.student_hidden, fitted by teacher score matching), 3000 steps",
}
DESCRIPTIONS: dict[str, str] = {
    f"{m}-{tb}": f"{_ABOUT[m]}; on {tb}" for m, testbeds in _GRID.items() for tb in testbeds
}

# ``--quick``: seconds per run; checks that the run works and moves, not how good it is
QUICK = [
    "train.steps=60",
    "train.batch_size=256",
    "train.eval_every=0",
    "train.checkpoint_every=1000",
    "critic.init_steps=60",
    "generator.tsm_steps=60",  # MSD's smaller teacher-initialised students (unused elsewhere)
    "train.eval_samples=1000",
    "train.ema_halflife=10",  # the default 100-step half-life would hide a 60-step run
    "backtrack.record_steps=40",  # DisBack's path (unused where backtrack.nodes = 0)
]
