"""Object variants of the ``views`` testbed seen from a few cameras: the sparse-view testbed.

Issue 14 (Sparse3D, Zou et al., AAAI 2024, arXiv 2308.14078). ``K`` variants of the ``views``
object (``views_object_grid`` with another ``tail``) share the body, face and fin and differ only
behind the body, so the sparse input views (front and front-side by default) cannot tell most of
them apart; the data are the true variant's renders from those cameras.

Exact posterior over variants (uniform prior, Gaussian pixel likelihood of std ``std``, the
``views`` teachers' per-pixel std, images in the data range ``[-1, 1]``):

    log w_k = -sum_v ||y_v - r_k(c_v)||^2 / (2 std^2) - log Z

Two exact Gaussian-mixture teachers over the ring renders ``r_k(c_j)`` (isotropic std ``std``):

- ``camera_agnostic`` (the SD-like prior, no camera information, the ``views`` teacher's Janus
  setting): weights ``∝ w_k exp(kappa cos az_j)`` over every variant and ring camera;
- ``view_conditioned`` (Zero123-like: the camera is the condition): component ``(k, j)`` labelled
  ``j``, weights ``w_k``, so ``cond = j`` gives ``sum_k w_k N(r_k(c_j), std^2 I)``, the exact
  posterior predictive of the render from ring camera ``j`` given the input views.

Variants (``VARIANTS``; tail capsule start, end, radius, RGB), checked at 16x16 from the default
inputs (azimuth 0 and 30, elevation 15): the first four render identically there; the yellow
tail's raised tip peeks out of the 30° view by 3.2 nats (posterior ~1/100 of the others); the
testbed's own orange tail curls up into both views and is ruled out (> 600 nats).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..scene.cameras import Camera
from ..scene.field3d import VoxelField
from .analytic import GaussianMixtureTeacher
from .views import _TAIL, Tail, _render_scene

__all__ = [
    "VARIANTS",
    "VariantsTestbed",
    "build_variants",
    "posterior_weights",
    "variant_teachers",
]

_ROOT = (0.0, -0.1, -0.4)  # every tail starts inside the back of the body (as the testbed's)
VARIANTS: tuple[tuple[str, Tail | None], ...] = (
    ("red-straight", (_ROOT, (0.0, -0.1, -0.85), 0.1, (0.9, 0.1, 0.1))),
    ("cyan-down", (_ROOT, (0.0, -0.45, -0.7), 0.1, (0.1, 0.8, 0.9))),
    ("purple-left", (_ROOT, (-0.35, 0.0, -0.7), 0.1, (0.5, 0.2, 0.8))),
    ("no-tail", None),
    ("yellow-raised", (_ROOT, (0.0, 0.1, -0.8), 0.1, (1.0, 0.9, 0.2))),
    ("orange-up", _TAIL),
)


def posterior_weights(observed: Tensor, renders: Tensor, std: float) -> Tensor:
    """Exact ``p(k | y)`` under a uniform prior and i.i.d. ``N(0, std^2)`` pixel noise.

    Args:
        observed: ``(V, *D)`` the input views.
        renders: ``(K, V, *D)`` every variant's renders from the same cameras.

    Returns:
        ``(K,)`` float64 weights (a softmax of ``-||y - r_k||^2 / (2 std^2)``).
    """
    if renders.shape[1:] != observed.shape:
        raise ValueError(
            f"renders must be (K, *observed.shape) = (K, {tuple(observed.shape)}), "
            f"got {tuple(renders.shape)}"
        )
    sq = (renders.double() - observed.double()[None]).pow(2).flatten(1).sum(1)
    return torch.softmax(-sq / (2.0 * std**2), dim=0)


def variant_teachers(
    ring_images: Tensor,
    ring_azimuths: Tensor,
    weights: Tensor,
    kappa: float,
    std: float,
    schedule: str = "edm",
) -> tuple[GaussianMixtureTeacher, GaussianMixtureTeacher]:
    """``(camera_agnostic, view_conditioned)`` over ``ring_images: (K, R, *D)`` (module docstring).

    Component ``k R + j`` is variant ``k`` from ring camera ``j``; ``weights: (K,)`` the
    posterior, ``ring_azimuths: (R,)`` degrees.
    """
    k, r = ring_images.shape[:2]
    means = ring_images.reshape(k * r, -1).double()
    w = weights.double()[:, None]
    view_bias = torch.exp(kappa * torch.cos(torch.deg2rad(ring_azimuths.double())))[None]
    stds = np.full(k * r, std)
    agnostic = GaussianMixtureTeacher(
        means, (w * view_bias).reshape(-1), stds=stds, schedule=schedule
    )
    labels = np.tile(np.arange(r), k)
    conditioned = GaussianMixtureTeacher(
        means, w.expand(k, r).reshape(-1), stds=stds, labels=labels, schedule=schedule
    )
    return agnostic, conditioned


@dataclass(frozen=True)
class VariantsTestbed:
    """The sparse-view testbed (module docstring). Images ``(.., 3, H, W)`` in ``[-1, 1]``;
    tensors are shared: treat them as read-only."""

    names: tuple[str, ...]
    fields: tuple[VoxelField, ...] = field(repr=False)
    true_index: int
    input_cameras: tuple[Camera, ...]
    input_images: Tensor = field(repr=False)  # (V, 3, H, W): the true variant's
    posterior: Tensor  # (K,) float64
    ring: tuple[Camera, ...] = field(repr=False)
    ring_azimuths: Tensor = field(repr=False)  # (R,) degrees
    ring_images: Tensor = field(repr=False)  # (K, R, 3, H, W)
    heldout: tuple[Camera, ...] = field(repr=False)
    heldout_images: Tensor = field(repr=False)  # (K, M, 3, H, W)
    camera_agnostic: GaussianMixtureTeacher = field(repr=False)
    view_conditioned: GaussianMixtureTeacher = field(repr=False)
    elevation: float
    std: float

    @property
    def true_field(self) -> VoxelField:
        return self.fields[self.true_index]

    def posterior_mean(self, images: Tensor) -> Tensor:
        """``sum_k w_k images[k]`` for ``images: (K, ...)`` (the posterior-mean render)."""
        w = self.posterior.to(images.dtype).reshape(-1, *([1] * (images.dim() - 1)))
        return (w * images).sum(0)


class _Renders(NamedTuple):
    fields: tuple[VoxelField, ...]
    ring: tuple[Camera, ...]
    ring_images: Tensor
    heldout: tuple[Camera, ...]
    heldout_images: Tensor


@functools.lru_cache(maxsize=2)
def _render_variants(
    image_size: int, resolution: int, n_ring: int, elevation: float, n_samples: int
) -> _Renders:
    """Every variant's scene (``views._render_scene``, the views testbed's held-out cameras)."""
    scenes = [
        _render_scene(image_size, resolution, n_ring, elevation, n_samples, (5.0, 15.0, 30.0), tail)
        for _, tail in VARIANTS
    ]
    return _Renders(
        tuple(s.gt for s in scenes), scenes[0].ring, torch.stack([s.ring_images for s in scenes]),
        scenes[0].heldout, torch.stack([s.heldout_images for s in scenes]),
    )  # fmt: skip


def build_variants(
    true_index: int = 0,
    input_azimuths: tuple[float, ...] = (0.0, 30.0),
    *,
    image_size: int = 16,
    resolution: int = 32,
    n_ring: int = 72,
    elevation: float = 15.0,
    kappa: float = 4.0,
    std: float = 0.05,
    n_samples: int = 48,
    schedule: str = "edm",
) -> VariantsTestbed:
    """The testbed for true variant ``true_index`` seen from ring cameras at ``input_azimuths``.

    Input azimuths must be ring azimuths (multiples of ``360 / n_ring``), so the view-conditioned
    teacher is exact at the input cameras too. Renders are cached on the scene's arguments.
    """
    if not 0 <= true_index < len(VARIANTS):
        raise ValueError(f"true_index must lie in [0, {len(VARIANTS)}), got {true_index}")
    scene = _render_variants(image_size, resolution, n_ring, float(elevation), n_samples)
    azimuths = torch.tensor([c.azimuth for c in scene.ring], dtype=torch.float64)
    idx = []
    for a in input_azimuths:
        j = round((a % 360.0) * n_ring / 360.0) % n_ring
        if abs(float(azimuths[j]) - a % 360.0) > 1e-9:
            raise ValueError(f"input azimuth {a} is not a ring azimuth (step {360 / n_ring} deg)")
        idx.append(j)
    observed = scene.ring_images[true_index, idx]
    weights = posterior_weights(observed, scene.ring_images[:, idx], std)
    agnostic, conditioned = variant_teachers(
        scene.ring_images, azimuths, weights, kappa, std, schedule
    )
    return VariantsTestbed(
        tuple(name for name, _ in VARIANTS), scene.fields, true_index,
        tuple(scene.ring[j] for j in idx), observed, weights, scene.ring, azimuths,
        scene.ring_images, scene.heldout, scene.heldout_images, agnostic, conditioned,
        float(elevation), float(std),
    )  # fmt: skip
