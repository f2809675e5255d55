"""Consistency-distillation presets ``<method>-<testbed>`` (family ``distill-consistency``).

A preset is a method's settings (``METHODS``) on a testbed's CPU budget (``BUDGETS``). Paper
defaults stay in the objectives (``objectives/cd.py``, ``scm.py``, ``rcm.py``) and the loop; every
value that differs is set here with the reason. Budgets were measured with ``OMP_NUM_THREADS=1``
on a shared 2-core machine (CPU time, final evaluation included; ``docs/consistency.md``):
2000 steps of ``scm-ring8`` take 3.4 CPU-minutes (the forward-mode JVP is 2/3 of a step),
``cd-ring8`` 2.4, ``rcm-ring8`` 8.9 (1500 of its steps carry 4 critic steps and 1-4-step
simulations); the grid25 presets cost the same (same network, same batch). cond2d (ring8's
budget): ``scm-cond2d`` 3.7, ``cd-cond2d`` 2.9. The 64-D budget (1500 steps, batch 256, hidden
512): ``scm-gmm64`` 6.0, ``cd-gmm64`` 3.9, ``scm-digits`` 8.0, ``cd-digits`` 6.2 (the two sCM
presets before their stop-32 change to hidden 256 x 3000 steps, ``_TUNED``, as rCM's,
Hyper-SD's and ``sana-sprint-digits`` in stop 33; of which digits' final evaluation, the exact
PF-ODE consistency error and the teacher's sampler table, is ~2.9). rCM, Hyper-SD and SANA-Sprint on
cond2d/gmm64/digits resolve and run (``--quick``) but their full budgets were not measured
there. Hyper-SD's stages on ring8 (user CPU of one run on a machine loaded ~2.5x, so only the
ratios travel): ``hypersd-ring8`` 0.9, ``hypersd-reward-
ring8`` 1.3 (1.45x), ``hypersd-dmd-ring8`` 2.1 (2.3x: 1250 steps carry 4 critic steps). Their
cond2d/gmm64/digits presets (stop 35, wall time with one or two other jobs): ``hypersd-dmd``
4.0-4.7 / 5.7-8.4 / 9.2-9.6 min, ``hypersd-reward`` 2.1-3.2 / 3.1-3.3 / 5.6-6.0 min.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BUDGETS", "DESCRIPTIONS", "METHODS", "PRESETS", "QUICK", "quick"]

_TWO_D = {
    "train.steps": 2000,
    "train.batch_size": 512,
    "train.eval_every": 500,
    "train.checkpoint_every": 500,
    # an MLP from scratch needs lr 1e-3 on the 2-D mixtures in a few thousand steps (the
    # distill presets' finding); the papers' rates are for 10^5 GPU steps
    "train.lr": 1e-3,
}
# The 64-D mixtures (gmm64; digits: 10 classes x 4 full-covariance components). The distill
# presets' 64-D budget (1500 steps, batch 256; presets/distill.py), with the student MLP twice as
# wide (hidden 512; 2-D: 256): a 64-D consistency function at every noise level in one MLP. A
# budget choice (sCM steps cost 0.13 s at 512, 0.057 s at 256, on gmm64), ablated for sCM on
# gmm64 and digits in stop 32, where 256 x 3000 steps wins (``_TUNED``). sCM at
# 1500 steps: its 500-step warm-up is a third of the run, and its 2-step MMD^2 was still falling
# at the end (gmm64 0.082 -> 0.035 over steps 1000-1500, seed 0; docs/consistency.md)
_SIXTY_FOUR_D = {
    "train.steps": 1500,
    "train.batch_size": 256,
    "train.eval_every": 500,
    "train.checkpoint_every": 500,
    "train.lr": 1e-3,  # as _TWO_D (CD's rate; sCM's preset sets its own)
    "student.hidden": 512,
}
BUDGETS: dict[str, dict[str, Any]] = {
    "ring8": _TWO_D,
    "grid25": _TWO_D,
    "cond2d": _TWO_D,  # 2-D, 2 classes x 4 modes (std 0.1): ring8's network and batch
    "gmm64": _SIXTY_FOUR_D,
    "digits": _SIXTY_FOUR_D,
}
_NEW = ("cond2d", "gmm64", "digits")

_SCM_STUDENT = {
    "train.optimizer": "radam",
    "train.beta1": 0.9,
    "train.beta2": 0.99,
    "train.weight_decay": 0.0,
    "train.grad_clip": 0.0,
    "train.lr": 3e-4,
}

_HYPERSD = {
    "train.optimizer": "adamw",
    "train.beta1": 0.9,
    "train.beta2": 0.999,
    "train.weight_decay": 0.01,
    "train.grad_clip": 1.0,
}

METHODS: dict[str, dict[str, Any]] = {
    # LCM's optimizer (diffusers train_lcm_distill_sd_wds.py): AdamW (0.9, 0.999), weight decay
    # 1e-2, max_grad_norm 1; solver grid 1000 with skip 20 (50 DDIM jumps), target EMA 0.95
    "cd": {
        "method": "cd",
        "train.optimizer": "adamw",
        "train.beta1": 0.9,
        "train.beta2": 0.999,
        "train.weight_decay": 0.01,
        "train.grad_clip": 1.0,
    },
    # Hyper-SD TSCD (objectives/hypersd.py): CD's optimizer and solver, k = 8 -> 4 -> 2 -> 1
    # segments over 250 + 250 + 250 + 1250 steps (the last stage, ordinary CD, runs to the end)
    "hypersd": {"method": "hypersd", **_HYPERSD},
    # Hyper-SD + its one-step stage: hypersd's TSCD, then from the last stage (step 750) DMD2's
    # term on the one-step sample (weight 1: the paper's is not confirmed) with a DSM-fitted
    # critic trained 4:1 at batch 256 and lr 1e-3, as rcm-<tb>'s critic (objectives/hypersd.py).
    # A one-step model: samples.npz and the headline at 1 step. ring8, 3 seeds: 1-step local
    # MMD^2 0.027 -> 0.0044, but the 2- and 4-step samples break (0.094, half the modes);
    # objective.dmd_weight=0.01 (rCM's 100:1, as rcm-<tb>) gives 0.010 and keeps them
    "hypersd-dmd": {
        "method": "hypersd",
        **_HYPERSD,
        "objective.dmd_weight": 1.0,
        "student.sample_steps": 1,
        "train.critic_updates": 4,
        "train.critic_batch_size": 256,
        "train.lr_critic": 1e-3,
    },
    # Hyper-SD + its human-feedback stage: hypersd's TSCD, then from the last stage ReFL on the
    # exact reward log p(x) of the teacher mixture, ImageReward's hinge ReLU(2 - r) and scale 1e-3
    "hypersd-reward": {"method": "hypersd", **_HYPERSD, "objective.reward_weight": 1e-3},
    # sCM (FastGen config_scm.py): RAdam (0.9, 0.99), no weight decay, no clipping (1e6).
    # Departures: tangent warm-up over 500 steps, a quarter of the budget, not 10 000 (r would
    # stay below 0.2); lr 3e-4, not the budget's 1e-3: on ring8 1e-3 reached 2-step MMD^2 0.0019
    # at step 1000 and drifted to 0.046 by 2000 (normalised tangents keep the step size up);
    # 3e-4 reached 0.0016 at 2000 and was still improving (docs/consistency.md)
    "scm": {"method": "scm", **_SCM_STUDENT, "objective.tangent_warmup_steps": 500},
    # rCM (NVlabs/rcm): 100 L_sCM + L_DMD on the student's 1-4-step samples, 4 critic updates
    # per student update, DMD and critic after the tangent warm-up (objectives/rcm.py). The
    # student keeps scm's settings, so rcm-<tb> against scm-<tb> isolates the DMD term (rCM's
    # student AdamW (0, 0.999) is not used). Critic: rCM's AdamW (0, 0.999), weight decay 0.01
    # (the loop's defaults) at the two-player loop's critic rate 1e-3, not rCM's 0.2x the
    # student's (4e-7 vs 2e-6): a CPU budget's critic must track a student that moves fast.
    # Critic batches of 256, half the student's (rCM: equal): a budget, the 4 critic steps with
    # their 1-4-step simulations would otherwise cost 2.5x the sCM step. Weights L_sCM +
    # 0.01 L_DMD, rCM's 100:1 ratio at scale 1: RAdam's first steps (before its variance
    # rectification, ~5 steps) are not scale-invariant, and 100 L_sCM made the pure-sCM warm-up
    # differ from scm-<tb>'s (ring8, step 500: MMD^2 0.40 vs 0.57); at scale 1 it is the same run.
    # On 2-D data this ratio leaves DMD ~0.5 % of the student's gradient: ring8 1-step MMD^2
    # 0.138 -> 0.035; objective.dmd_weight=1 reaches 0.0014 but costs the 2-4-step samples
    "rcm": {
        "method": "rcm",
        **_SCM_STUDENT,
        "objective.scm.tangent_warmup_steps": 500,
        "objective.scm_weight": 1.0,
        "objective.dmd_weight": 0.01,
        "train.critic_updates": 4,
        "train.critic_batch_size": 256,
        "train.lr_critic": 1e-3,
    },
    # SANA-Sprint (NVlabs/Sana train_scm_ladd.py): L_sCM + 0.5 L_adv (hinge), heads on the frozen
    # teacher (here the DSM fit of the teacher, frozen, one logit head), G and D alternating
    # 1 : 1, half the adversarial batch from the largest angle (objectives/sana_sprint.py).
    # The student and its sCM term are scm's (law log sigma ~ N(-1.0, 1.4), warm-up 500, RAdam
    # at 3e-4), not SANA's N(0.2, 1.6) and 4000 steps, so sana-sprint-<tb> against scm-<tb>
    # isolates the adversarial term, as rcm-<tb> does the DMD term. The largest angle is the
    # sampler's first, atan(80 / sigma_d), not pi/2: the sampler never evaluates pi/2.
    # Discriminator head: SANA's optimizer for D is G's (CAME, betas 0.9/0.999, lr 2e-6, no
    # weight decay); here Adam-like AdamW (0.9, 0.999), no weight decay, at the student's 3e-4.
    # Adversarial weight 0.1, not SANA's 0.5 (stop 29, docs/consistency.md "the adversarial
    # weight at 0.1"; 3 seeds per testbed): at 0.5 cond2d seed 0 and grid25 seed 2 diverge, ring8
    # is a blur (1-step MMD^2 1.09) and gmm64 far behind sCM (2-step 0.32 vs 0.030); at 0.1
    # ring8, grid25, cond2d and digits train on every seed (1-step 0.0028, 0.0016, 0.0018, 0.011)
    # and gmm64 on 2 of 3 (seed 0 diverges; 2-step 0.037, 0.051). A head on a small DSM fit's
    # features carries a weaker signal than SANA's heads on a 1.6B-parameter teacher
    "sana-sprint": {
        "method": "sana_sprint",
        **_SCM_STUDENT,
        "objective.adv_weight": 0.1,
        "objective.scm.p_mean": -1.0,
        "objective.scm.p_std": 1.4,
        "objective.scm.tangent_warmup_steps": 500,
        "objective.largest_sigma": 80.0,
        "train.critic_updates": 1,
        "train.lr_critic": 3e-4,
        "train.critic_beta1": 0.9,
        "train.critic_beta2": 0.999,
        "train.critic_weight_decay": 0.0,
    },
}

_GRID: dict[str, tuple[str, ...]] = {
    "cd": ("ring8", "grid25", *_NEW),
    "hypersd": ("ring8", *_NEW),
    "hypersd-dmd": ("ring8", *_NEW),
    "hypersd-reward": ("ring8", *_NEW),
    "scm": ("ring8", "grid25", *_NEW),
    "rcm": ("ring8", "grid25", *_NEW),
    "sana-sprint": ("ring8", "grid25", *_NEW),
}
_ABOUT: dict[str, str] = {
    "cd": "CD (Song et al. 2023) with LCM's skipping-step DDIM solver and EMA target",
    "hypersd": "Hyper-SD TSCD (Ren et al. 2024): CD inside k = 8 -> 4 -> 2 -> 1 trajectory "
    "segments, LCM's solver and EMA target",
    "hypersd-dmd": "Hyper-SD TSCD + its one-step stage: DMD on the one-step sample in the "
    "last stage, fake-score critic 4:1",
    "hypersd-reward": "Hyper-SD TSCD + its human-feedback stage: ReFL on the exact log p(x) "
    "of the testbed in the last stage",
    "scm": "sCM (Lu & Song 2024): continuous-time CD in TrigFlow, JVP tangent, 2-step samples",
    "rcm": "rCM (Zheng et al. 2025): sCM + DMD (100:1) on 1-4-step student samples, fake-score "
    "critic 4:1, 2-step samples",
    "sana-sprint": "SANA-Sprint (Chen et al. 2025): sCM + hinge GAN at 0.1 (SANA: 0.5), a head on "
    "the frozen teacher fit, one step-adaptive student for 1-4 steps, 2-step samples",
}

# Per-preset departures from the testbed's budget, each with its evidence. scm-gmm64 and
# scm-digits (stop 32, docs/consistency.md "Width against steps"): at the same CPU (an sCM step
# costs 0.057 s at hidden 256, 0.13 s at 512; gmm64 training 65-67 s against 74 s), hidden 256
# for 3000 steps beats hidden 512 for 1500 at 1 and 2 steps on 3 seeds (2-step MMD^2 gmm64
# 0.0065 +- 0.0009 against 0.030 +- 0.005, digits 0.0014 +- 0.0003 against 0.0080 +- 0.0019), and
# the 2-step student is below the teacher's best 4-NFE sampler on every seed and metric on both;
# the sCM warm-up (500 steps) is a sixth of the run instead of a third. rcm-gmm64 and
# rcm-digits (stop 33, docs/consistency.md "Width against steps for rCM, CD, ..."): the same
# change, 3 seeds, 2-step MMD^2 gmm64 0.0021 +- 0.0004 against 0.0062 +- 0.0011, digits
# 0.00015 +- 0.00016 against 0.00090 +- 0.00033, where the digits student is below the
# teacher's best 8-NFE sampler on every seed and metric; 1 step 1.4x (gmm64) and 3.2x better.
# hypersd-gmm64 and hypersd-digits (stop 33, the same section): better at 1, 2 and 4 steps on
# every seed (2-step MMD^2 gmm64 0.0011 +- 0.0002 against 0.0029 +- 0.0007, below the best
# 8-NFE cell on seeds 0 and 2; digits 1-step 0.0102 against 0.0241, 4-step 0.0012 against
# 0.0024; 3 seeds). sana-sprint-digits (stop 33): the one-step student 4x better (MMD^2 0.0027
# against 0.0106) and below the teacher's best 4-NFE sampler on every seed, metric and
# reference draw (3 seeds x 3 draws); sana-sprint-gmm64 keeps 512 x 1500 (stop 32: its one-step
# student got worse). CD does not gain (gmm64: better at 2 and 4 steps, worse at 1; digits
# level or worse): its presets keep 512 x 1500
_SCM_64 = {"student.hidden": 256, "train.steps": 3000}
_TUNED: dict[str, dict[str, Any]] = {
    "scm-gmm64": _SCM_64,
    "scm-digits": _SCM_64,
    "rcm-gmm64": _SCM_64,
    "rcm-digits": _SCM_64,
    "hypersd-gmm64": _SCM_64,
    "hypersd-digits": _SCM_64,
    # Hyper-SD's stages keep hypersd-<tb>'s student and budget, so the stage is the only change
    **{
        f"hypersd-{stage}-{tb}": _SCM_64
        for stage in ("dmd", "reward")
        for tb in ("gmm64", "digits")
    },
    "sana-sprint-digits": _SCM_64,
}
PRESETS: dict[str, dict[str, Any]] = {
    f"{m}-{tb}": {"testbed": tb, **BUDGETS[tb], **METHODS[m], **_TUNED.get(f"{m}-{tb}", {})}
    for m, testbeds in _GRID.items()
    for tb in testbeds
}
DESCRIPTIONS: dict[str, str] = {
    f"{m}-{tb}": f"{_ABOUT[m]}; on {tb}" for m, testbeds in _GRID.items() for tb in testbeds
}

# ``--quick``: seconds per run; checks that the run works, not how good it is
QUICK = [
    "train.steps=40",
    "train.batch_size=128",
    "train.eval_every=0",
    "train.checkpoint_every=1000",
    "train.eval_samples=500",
    "train.ema_halflife=10",
    "student.hidden=64",
    "eval.consistency_samples=64",
    "eval.levels=[0.5,5.0]",
    "eval.teacher_nfe=[1,2,4]",
    "critic.hidden=64",
    "critic.init_steps=20",
    "critic.init_batch=256",
]


def quick(name: str) -> list[str]:
    """``--quick`` overrides of preset ``name`` (rCM: the DMD term from step 10, so it runs;
    Hyper-SD: stages of 10 steps, so every stage runs)."""
    if name.startswith("hypersd-"):  # all four stages in 40 steps
        return [*QUICK, "objective.stage_steps=[10,10,10]"]
    return QUICK + (["objective.dmd_start=10"] if name.startswith("rcm-") else [])
