"""The affine map between a VAE's output and the latent a pipeline's network sees, per family.

Every latent pipeline scales the VAE's latent before its network sees it, and each family reads
a different set of the VAE config's keys (diffusers 0.42):

- ``StableDiffusionPipeline``: ``z = E(x) · scaling_factor``; decodes ``D(z / scaling_factor)``
  and ignores ``shift_factor``, ``latents_mean`` and ``latents_std``;
- ``StableDiffusion3Pipeline``, ``FluxPipeline``: ``z = (E(x) − shift_factor) · scaling_factor``;
  decodes ``D(z / scaling_factor + shift_factor)``;
- ``StableDiffusionXLPipeline``: with ``latents_mean`` **and** ``latents_std`` set (Playground
  v2.5's VAE), per channel ``z = (E(x) − mean) · scaling_factor / std`` (the img2img pipeline's
  ``prepare_latents``) and ``__call__`` decodes ``D(z · std / scaling_factor + mean)``; with either
  missing, as Stable Diffusion. Its ``view(1, 4, 1, 1)`` takes exactly 4 values.

``latent_affine`` returns that map as ``(shift, scale)`` of shape ``(C, 1, 1)``:
``z = (E(x) − shift) · scale`` and ``D(z / scale + shift)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["LatentForm", "latent_affine", "latent_stats_problem"]

LatentForm = Literal["sd", "shift", "sdxl"]


def latent_stats_problem(vcfg: Mapping[str, Any]) -> str:
    """Why an SDXL pipeline cannot use this VAE's ``latents_mean``/``latents_std`` ("" if it can,
    or if either is unset, when the pipeline ignores both)."""
    mean, std = vcfg.get("latents_mean"), vcfg.get("latents_std")
    if mean is None or std is None:
        return ""
    channels = vcfg.get("latent_channels")
    for key, values in (("latents_mean", mean), ("latents_std", std)):
        if not isinstance(values, list) or len(values) != 4 or channels != 4:
            got = len(values) if isinstance(values, list) else type(values).__name__
            return (
                f"{key} has {got} values with latent_channels={channels}; "
                "StableDiffusionXLPipeline reads exactly 4 (view(1, 4, 1, 1)); valid: 4 and 4"
            )
    if any(not isinstance(s, (int, float)) or not s > 0 for s in std):
        return f"latents_std={std} must be positive numbers"
    return ""


def latent_affine(vcfg: Mapping[str, Any], form: LatentForm) -> tuple[Tensor, Tensor]:
    """``(shift, scale)``, float32 ``(C, 1, 1)``, of ``form``'s pipeline for a VAE config
    ``vcfg`` (module docstring); ``C`` is ``latent_channels``."""
    channels = int(vcfg["latent_channels"])
    sf = float(vcfg.get("scaling_factor") or 1.0)
    shift = torch.zeros(channels, 1, 1)
    scale = torch.full((channels, 1, 1), sf)
    if form == "shift":
        shift += float(vcfg.get("shift_factor") or 0.0)
    elif (
        form == "sdxl"
        and vcfg.get("latents_mean") is not None
        and vcfg.get("latents_std") is not None
    ):
        if why := latent_stats_problem(vcfg):
            raise ValueError(f"vae/config.json: {why}")
        shift = torch.tensor(vcfg["latents_mean"], dtype=torch.float32).view(channels, 1, 1)
        scale = sf / torch.tensor(vcfg["latents_std"], dtype=torch.float32).view(channels, 1, 1)
    return shift, scale
