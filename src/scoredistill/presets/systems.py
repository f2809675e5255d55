"""Presets of the seed systems (``scoredistill distill --preset NAME``, issue 14).

``SYSTEM_PRESETS`` maps a preset to a plain dict: ``"system"`` names the entry of
``runs.systems.SYSTEMS`` (its config dataclass, runner and report), the other keys are config
fields, and ``"quick"`` holds the overrides of the seconds-long smoke variant (``--quick``).
``DESCRIPTIONS`` has one line per preset. Every hyperparameter attributed to a paper cites it
in the system's config; departures are fields with their reason.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DESCRIPTIONS", "SYSTEM_PRESETS"]

_DD2_QUICK = {
    "steps": 20,
    "init_steps": 20,
    "critic_init_steps": 5,
    "batch_size": 32,
    "eval_samples": 256,
    "hidden": 32,
    "critic_hidden": 32,
}

_DIFFPROTECT_QUICK = {
    "steps": 3,
    "n_protect": 16,
    "vae_steps": 30,
    "denoiser_steps": 10,
    "strengths": [0.2],
    "sdedit_draws": 1,
    "ddim_steps": 20,
}

_SID_PROTEIN_QUICK = {
    "steps": 4,
    "init_steps": 5,
    "batch_size": 32,
    "hidden": 32,
    "eval_samples": 64,
    "teacher_nfes": [1, 400],
    "student_steps": 4,
}

_DPO_QUICK = {
    "steps": 4,
    "batch_size": 16,
    "hidden": 16,
    "eval_conditions": 64,
    "mmd_conditions": 3,
    "mmd_samples": 8,
    "checkpoint_every": 2,
}

_NASA_QUICK = {
    "steps": 10,
    "batch_size": 32,
    "hidden": 16,
    "critic_hidden": 16,
    "samples_per_pair": 16,
    "init_steps": 5,
    "init_pairs": 64,
    "init_nfe": 3,
    "alphas": [0.5],
    "cfg_scales": [1.0],
}

_SPARSE3D_QUICK = {"steps": 5, "batch_size": 2}

_DIFFPROTECT_SD_QUICK = {"steps": 2, "n_images": 4, "strengths": [0.1], "inference_steps": 20}

SYSTEM_PRESETS: dict[str, dict[str, Any]] = {
    "nasa-attrgrid": {"system": "nasa", "quick": _NASA_QUICK},
    "dpo-completion": {"system": "dpo", "quick": _DPO_QUICK},
    "sid-protein": {"system": "sid_protein", "quick": _SID_PROTEIN_QUICK},
    "diffprotect-digits": {"system": "diffprotect", "quick": _DIFFPROTECT_QUICK},
    "diffprotect-sd": {"system": "diffprotect_sd", "quick": _DIFFPROTECT_SD_QUICK},
    "sparse3d-views": {"system": "sparse3d", "quick": _SPARSE3D_QUICK},
    "dd2-markov": {"system": "dd2", "quick": _DD2_QUICK},
    "dd2-markov-prefix-grad": {"system": "dd2", "prefix_grad": True, "quick": _DD2_QUICK},
}

DESCRIPTIONS: dict[str, str] = {
    "nasa-attrgrid": "SNOOPI's NASA: negative-away steering in the cross-attention of a DMD2 "
    "one-step student on a 4x4 attribute grid (exact restricted targets) vs output-space CFG",
    "dpo-completion": "Distillation-DPO: one-step digit completion (top half observed, exact "
    "conditional teacher), winner/loser fake critics vs DMD without preferences",
    "sid-protein": "SiD-Protein: 1- and 16-step SiD generators of ideal 16-residue Ca backbones "
    "(exact mixture teacher), re-noised at inference with scale gamma, vs the teacher's DDIM",
    "diffprotect-digits": "Diff-Protect: L-inf PGD protection of digits against SDEdit on a VAE "
    "latent with an exact mixture prior; SDS(+/-) through the encoder only vs AdvDM(+/-)",
    "diffprotect-sd": "Diff-Protect on the bundled SD pipeline: L-inf PGD (SDS+/-, AdvDM+/-) "
    "through the diffusers VAE/UNet vs stock img2img mimicry (L2/PSNR, prompt accuracy)",
    "sparse3d-views": "Sparse3D: a voxel field from 2 views of one of 6 object variants (exact "
    "posterior), reconstruction only vs + SDS camera-agnostic vs + SDS view-conditioned; C-SDS "
    "not built (its equation could not be verified)",
    "dd2-markov": "DD2: one-step student of an exact AR model over continuous Markov tokens, "
    "DMD per position on a stop-gradient prefix, vs AR and independent sampling",
    "dd2-markov-prefix-grad": "DD2 as dd2-markov, with gradients through the prefix "
    "(the teacher's conditional log-density differentiated in the prefix)",
}
