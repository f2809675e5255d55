"""Captioned renders of the ``views`` object: the data of the view-aware text-to-image teacher.

The bundled digits teacher never saw "front/side/back view", so on it the voxel-field presets
(``runs.optimize_sd_field``) cannot show what view-dependent prompting or ESD's entropy term do
for 3-D (docs/text_to_image.md). This module renders the ``views`` testbed's asymmetric object
(``teachers.views.views_object_grid``: blue face with eyes and nose at the front, green back
with an orange tail, a fin on +x) from cameras on a ring and captions each render with exactly
what the field path feeds the teacher:

- ``"<prompt>, front view"`` / ``"side view"`` / ``"back view"`` by the camera's azimuth sector
  (``teachers.views.prompt_for_azimuth``: DreamFusion §3.2 and threestudio
  ``prompt_processors/base.py``, front and back within 45 deg), azimuth uniform on [0, 360);
- ``"<prompt>"`` alone for a fraction ``base_fraction`` of the images, their azimuth drawn
  with the ``views`` testbed's web-photo bias ``∝ exp(kappa cos az)`` (kappa 4: 68 % within
  30 deg of the front, 86 % in the front sector, 0.06 % in the back one; ``kappa = 0``:
  uniform), so the bare prompt means "mostly the front", as on a real text-to-image model,
  while the view rows say what each side looks like.

Renders are ``(N, C, S, S)`` in [-1, 1] at the field path's camera radius and field of view,
on its black background (``LatentSourceConfig.background`` 0), grey levels when ``channels``
is 1 (``runs.optimize_sd_field._to_teacher_image``: the channel mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..scene.cameras import DEFAULT_FOV, DEFAULT_RADIUS, Camera
from ..scene.field3d import VoxelField
from .views import prompt_for_azimuth, views_object_grid

__all__ = ["VIEW_SUFFIXES", "ViewsDataConfig", "biased_azimuths", "render_object", "view_caption",
           "views_sd_data"]  # fmt: skip

# the order of prompt_for_azimuth's labels 0, 1, 2 (= runs.optimize_sd_field.VIEW_SUFFIXES)
VIEW_SUFFIXES = ("front view", "side view", "back view")


@dataclass(frozen=True)
class ViewsDataConfig:
    """What ``views_sd_data`` renders and how it captions it."""

    prompt: str = "a toy"  # the base prompt; view rows are "<prompt>, <sector> view"
    n_images: int = 2048
    image_size: int = 8  # the field presets' renders for the bundled teachers' 8x8 VAE
    channels: int = 3  # RGB: front (blue) and back (green) differ most in colour
    elevation: tuple[float, float] = (10.0, 20.0)  # uniform; the field path renders at 15
    base_fraction: float = 0.25  # images captioned with the bare prompt
    kappa: float = 4.0  # bare-prompt azimuths ∝ exp(kappa cos az) (teachers.views); 0: uniform
    background: float = 0.0  # the field path's default (LatentSourceConfig.background)
    resolution: int = 32  # voxels of the ground-truth object
    n_samples: int = 48  # samples per ray of the ground-truth renders
    seed: int = 0


def view_caption(prompt: str, sector: int) -> str:
    """``"<prompt>, front view"`` for sector 0, ``side`` 1, ``back`` 2 (prompt_for_azimuth)."""
    return f"{prompt}, {VIEW_SUFFIXES[sector]}"


def biased_azimuths(n: int, kappa: float, rng: torch.Generator) -> Tensor:
    """``(n,)`` float64 degrees drawn with density ``∝ exp(kappa cos az)`` (von Mises), by
    inverse-CDF sampling on a 0.1-deg grid plus a uniform jitter within the cell."""
    cells = 3600
    grid = (torch.arange(cells, dtype=torch.float64) + 0.5) * (360.0 / cells)
    weights = torch.exp(kappa * (torch.cos(torch.deg2rad(grid)) - 1.0))  # max 1: no overflow
    idx = torch.multinomial(weights, n, replacement=True, generator=rng)
    jitter = torch.rand(n, generator=rng, dtype=torch.float64) - 0.5
    return torch.remainder(grid[idx] + jitter * (360.0 / cells), 360.0)


def render_object(cfg: ViewsDataConfig, az: Tensor, el: Tensor, chunk: int = 256) -> Tensor:
    """``(N, C, S, S)`` renders in [-1, 1] of the object at azimuths and elevations ``(N,)``
    (degrees), as ``cfg`` says (size, channels, background, voxels, samples per ray)."""
    gt = VoxelField.from_grid(
        views_object_grid(cfg.resolution), image_size=cfg.image_size, n_samples=cfg.n_samples,
        background=cfg.background,
    )  # fmt: skip
    out = []
    with torch.no_grad():
        for i in range(0, len(az), chunk):
            cams = [
                Camera(float(a), float(e), DEFAULT_RADIUS, DEFAULT_FOV)
                for a, e in zip(az[i : i + chunk], el[i : i + chunk], strict=True)
            ]
            out.append(gt(cams).float())
    rgb = torch.cat(out)
    return rgb.mean(dim=1, keepdim=True) if cfg.channels == 1 else rgb


def views_sd_data(cfg: ViewsDataConfig | None = None) -> tuple[Tensor, list[str], Tensor]:
    """``(images (N, C, S, S) in [-1, 1], captions, azimuths (N,) degrees)``, reproducible from
    ``cfg.seed``; the first ``round(base_fraction N)`` images carry the bare prompt."""
    cfg = cfg or ViewsDataConfig()
    if cfg.channels not in (1, 3) or not 0.0 <= cfg.base_fraction <= 1.0 or cfg.n_images < 1:
        raise ValueError(f"channels must be 1 or 3, base_fraction in [0, 1], n_images >= 1: {cfg}")
    rng = torch.Generator().manual_seed(cfg.seed)
    n_base = round(cfg.base_fraction * cfg.n_images)
    az = torch.cat([
        biased_azimuths(n_base, cfg.kappa, rng),
        360.0 * torch.rand(cfg.n_images - n_base, generator=rng, dtype=torch.float64),
    ])  # fmt: skip
    lo, hi = cfg.elevation
    el = lo + (hi - lo) * torch.rand(cfg.n_images, generator=rng, dtype=torch.float64)
    sectors = prompt_for_azimuth(az).tolist()
    captions = [
        cfg.prompt if i < n_base else view_caption(cfg.prompt, s) for i, s in enumerate(sectors)
    ]
    return render_object(cfg, az, el), captions, az
