"""A latent teacher's training resolution: the square pixel size ``H = W`` at which a pipeline
folder's network is distilled, checked from the folder's configs before any weights load.

By default (``resolution = 0``) the size is the folder's own: ``unet.sample_size ·
vae_scale_factor`` (SD, SDXL), the transformer's ``sample_size`` (SD3, in latents), the VAE's
``sample_size`` (Flux, ``diffusers_flux.latent_size``). Any other size must be one the
pipeline itself accepts as ``height``/``width`` (``check_inputs`` of diffusers 0.42):

- ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``: ``height % 8 == 0``, latents
  ``height // vae_scale_factor`` (``prepare_latents``): a multiple of ``lcm(8, f)``;
- ``StableDiffusion3Pipeline``: ``height % (vae_scale_factor · patch_size) == 0``, and at most
  ``pos_embed_max_size`` patches a side (``embeddings.PatchEmbed.cropped_pos_embed`` raises);
- ``FluxPipeline``: ``height % (vae_scale_factor · 2) == 0`` (2×2 packed latents; the pipeline
  rounds other sizes down with a warning, so they are refused here);

with ``f = 2 ** (len(vae.block_out_channels) - 1)``, every pipeline's ``vae_scale_factor``. The
latent is then ``(C, H / f, W / f)``; the size also sets SDXL's micro-conditioning ``time_ids``
(``diffusers_sdxl_micro.MicroCond.rows``) and Flux's shift ``mu`` (``diffusers_flux.flux_schedule``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .diffusers import component_config
from .diffusers_flux import is_flux_index

__all__ = ["ResolutionError", "size_rule", "training_latent_hw"]

PIPELINE_MULTIPLE = 8  # StableDiffusion(XL)Pipeline.check_inputs: height % 8
SD3_PATCH = 2  # SD3Transformer2DModel's default patch_size


class ResolutionError(ConfigError):
    """A training resolution the folder's network cannot take; the message names
    ``resolution`` and says what is valid."""


def size_rule(path: Path, index: dict[str, Any]) -> tuple[int, int, int | None, str]:
    """``(f, step, largest, why)`` of a checked pipeline folder: the VAE's factor ``f``, the
    pixel multiple ``step`` every size must be, the largest size or None, and why (module
    docstring)."""
    blocks = component_config(path, "vae").get("block_out_channels") or (0,)
    f = 2 ** (len(blocks) - 1)  # pipe.vae_scale_factor
    if is_flux_index(index):
        return f, 2 * f, None, f"the VAE's factor {f} x Flux's 2x2 packing"
    if "unet" not in index:  # StableDiffusion3Pipeline (diffusers_folders.index_folder)
        tcfg = component_config(path, "transformer")
        p, most = int(tcfg.get("patch_size") or SD3_PATCH), tcfg.get("pos_embed_max_size")
        largest = None if most is None else int(most) * p * f
        return f, p * f, largest, f"the VAE's factor {f} x the transformer's patch_size {p}"
    step = math.lcm(PIPELINE_MULTIPLE, f)
    return f, step, None, f"the VAE's factor {f}; the pipeline asks for a multiple of 8"


def training_latent_hw(
    path: Path, index: dict[str, Any], resolution: int
) -> tuple[int, int] | None:
    """The latent ``(h, w) = (H / f, W / f)`` at pixel size ``H = W = resolution``, or None for
    0 (the folder's own size); a size the network cannot take raises ``ResolutionError``."""
    if resolution == 0:
        return None
    f, step, largest, why = size_rule(path, index)
    valid = f"valid: 0 (the teacher folder's own size) or a positive multiple of {step}"
    if resolution < 0 or resolution % step:
        raise ResolutionError(
            f"config key 'resolution': {resolution} is not a positive multiple of {step} "
            f"({why}); {valid}"
        )
    if largest is not None and resolution > largest:
        raise ResolutionError(
            f"config key 'resolution': {resolution} is larger than the transformer's position "
            f"embedding allows (pos_embed_max_size x patch_size x {f} = {largest}); {valid} "
            f"up to {largest}"
        )
    return resolution // f, resolution // f
