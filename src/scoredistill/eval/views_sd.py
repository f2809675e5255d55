"""View scores of images of the ``views`` object: the judge of the view-aware SD teacher
(``assets/teachers/views-sd``) and of voxel fields optimised under it.

Each image gets the azimuth of its nearest ground-truth render (L2, ``metrics3d
.apparent_azimuths``) over a dense ring at the field path's elevation, size, channels and
background (``teachers.views_sd_data.render_object``), hence a sector by
``teachers.views.prompt_for_azimuth`` (0 front, 1 side, 2 back: DreamFusion's 45-deg sectors).

- ``view_acc``: the seen sector equals the asked one (a teacher sample and its view prompt, or a
  field render and its camera's sector); per sector ``view_acc_front/side/back``.
- ``janus``: the fraction of back-sector cameras whose render reads as a front view (the face on
  the back); ``metrics3d``'s 45-deg rule is ``off_45``: seen more than 45 deg from the camera.
- ``view_entropy``: ``metrics3d.view_entropy`` of the seen azimuths (1: as many sectors as views).
- ``nn_rms``: the RMS pixel distance to that nearest render, mean over images (how much the
  image looks like the object at all: a sector is read off even from noise), and ``psnr``
  against the object's render at the image's own camera (``metrics3d.psnr``, range 2).

The object's own renders score ``view_acc`` 1, ``janus`` 0 (``truth_scores``): what a perfect
method reaches under this metric.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..scene.cameras import circular_distance
from ..teachers.views import prompt_for_azimuth
from ..teachers.views_sd_data import ViewsDataConfig, render_object
from .metrics3d import JANUS_MAX_ERROR, apparent_azimuths, psnr, view_entropy

__all__ = [
    "SECTORS",
    "nearest_rms",
    "reference_ring",
    "sector_scores",
    "truth_scores",
    "view_scores",
]

SECTORS = ("front", "side", "back")  # prompt_for_azimuth's 0, 1, 2


def reference_ring(
    cfg: ViewsDataConfig | None = None, n: int = 360, elevation: float = 15.0
) -> tuple[Tensor, Tensor]:
    """``(images (n, C, S, S), azimuths (n,))``: the object every ``360 / n`` deg at
    ``elevation`` (the field presets' ``source.elevation`` default)."""
    az = 360.0 * torch.arange(n, dtype=torch.float64) / n
    return render_object(cfg or ViewsDataConfig(), az, torch.full_like(az, elevation)), az


def sector_scores(asked: Tensor, seen: Tensor) -> dict[str, float]:
    """``view_acc`` over all and per asked sector (``asked, seen: (B,)`` sector labels), and
    ``janus``: asked back, seen front (NaN where a sector was never asked)."""
    hit = (asked == seen).double()
    out = {"view_acc": float(hit.mean())}
    for k, name in enumerate(SECTORS):
        out[f"view_acc_{name}"] = (
            float(hit[asked == k].mean()) if (asked == k).any() else float("nan")
        )
    back = asked == 2
    out["janus"] = float((seen[back] == 0).double().mean()) if back.any() else float("nan")
    return out


def nearest_rms(images: Tensor, ref: tuple[Tensor, Tensor]) -> float:
    """Mean over ``images: (B, *D)`` of the RMS pixel distance to the nearest ``ref`` image."""
    a, b = images.flatten(1).double(), ref[0].flatten(1).double()
    return float((torch.cdist(a, b).min(dim=1).values / math.sqrt(a.shape[1])).mean())


def view_scores(
    images: Tensor,
    azimuths: Tensor,
    ref: tuple[Tensor, Tensor],
    cfg: ViewsDataConfig | None = None,
    elevation: float = 15.0,
) -> dict[str, float]:
    """Scores of renders ``images: (B, C, S, S)`` from cameras at ``azimuths: (B,)`` degrees
    and ``elevation`` against the ground-truth ring ``ref`` (``reference_ring`` of ``cfg``)."""
    seen = apparent_azimuths(images, *ref)
    el = torch.full_like(azimuths.double(), elevation)
    true = render_object(cfg or ViewsDataConfig(), azimuths.double(), el)
    asked = prompt_for_azimuth(azimuths.double())
    off = circular_distance(seen, azimuths.double()) > JANUS_MAX_ERROR
    return {
        **sector_scores(asked, prompt_for_azimuth(seen)),
        "off_45": float(off.double().mean()),
        "view_entropy": view_entropy(seen),
        "nn_rms": nearest_rms(images, ref),
        "psnr": psnr(images.double(), true.double()),
    }


def truth_scores(
    azimuths: Tensor,
    ref: tuple[Tensor, Tensor],
    cfg: ViewsDataConfig | None = None,
    elevation: float = 15.0,
) -> dict[str, float]:
    """``view_scores`` of the object's own renders at ``azimuths``: the perfect method's."""
    cfg = cfg or ViewsDataConfig()
    images = render_object(cfg, azimuths, torch.full_like(azimuths, elevation))
    return view_scores(images, azimuths, ref, cfg, elevation)
