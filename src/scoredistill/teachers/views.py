"""The ``views`` testbed: a 3-D object with ground truth, seen through exact image teachers.

Reference note e.4 (Level 2). The ground truth is a procedural, clearly asymmetric voxel field
(``views_object_grid``; the object faces +z, camera convention in ``scene.cameras``):

- body: an ellipsoid, blue at the front (z > 0) and green at the back;
- face on the front: two yellow eyes and a red nose;
- an orange tail curling up at the back, and a magenta fin on the +x side (so left and right
  differ too).

Its renders from a dense ring of ``n_ring`` cameras (azimuths ``360 k / n_ring``, one elevation),
in the data range ``[-1, 1]`` and flattened to ``D = 3 H W``, are the means of exact
isotropic Gaussian mixtures (``GaussianMixtureTeacher``, std ``std`` per pixel):

- ``teacher`` (= ``truth``, "Teacher B", view-biased and camera-agnostic, the SD-like prior):
  weights ``∝ exp(kappa cos(azimuth))``; kappa = 4 puts 72% of the mass within ±30° of the front
  (the note's "70% of web photos"), 0.07% within ±45° of the back. SDS on it should make Janus.
- ``prompted`` (view-dependent prompting): the same weights, each component labelled by its
  azimuth sector: 0 ``front`` (within 45° of azimuth 0, inclusive), 2 ``back`` (within 45° of
  180, inclusive), 1 ``side`` otherwise (DreamFusion's sectors). Conditional and unconditional
  denoisers are exact, so CFG is exact; ``prompt_for_azimuth`` gives a camera's label.
- ``camera_teacher`` ("Teacher A", Zero123-like sanity ceiling): uniform weights, component k
  labelled k, so ``cond = ring_index(azimuth)`` makes the teacher one Gaussian around the
  ground-truth render from that ring camera.

``modes`` (for the 2-D metrics) is each component's sector. Held-out cameras sit between the
ring's azimuths (offset half a step, every other one) at three elevations. The object does not
depend on the seed; the argument keeps the builders' ``(seed, schedule)`` signature.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..scene.cameras import Camera, circular_distance, ring_cameras
from ..scene.field3d import VoxelField
from .analytic import GaussianMixtureTeacher
from .testbed import Testbed

__all__ = [
    "PROMPTS",
    "Tail",
    "ViewsTestbed",
    "build_views",
    "clear_views_cache",
    "prompt_for_azimuth",
    "views_object_grid",
    "views_testbed",
]

PROMPTS = ("front", "side", "back")
SECTOR_HALF_WIDTH = 45.0  # degrees: front/back sectors are +-45 deg around azimuth 0/180
_SIGMA_IN = 40.0  # density inside the object: 2.5 optical depths per voxel at G = 32
_EDGE_VOXELS = 1.0  # the density ramps from 0 to full over this width around the surface

# (centre, radii or radius, RGB): the object faces +z; everything stays inside |coord| < 0.9
_BODY = ((0.0, -0.05, 0.0), (0.45, 0.5, 0.5))
_BODY_FRONT, _BODY_BACK = (0.2, 0.45, 0.9), (0.25, 0.7, 0.3)
_SPHERES = (
    ((0.18, 0.15, 0.42), 0.12, (1.0, 0.85, 0.1)),  # right-hand eye (seen on the image's right)
    ((-0.18, 0.15, 0.42), 0.12, (1.0, 0.85, 0.1)),  # left eye
    ((0.0, -0.05, 0.52), 0.11, (0.9, 0.1, 0.1)),  # nose
    ((0.47, 0.05, 0.0), 0.13, (0.8, 0.2, 0.8)),  # fin on +x
)
_TAIL = ((0.0, -0.1, -0.4), (0.0, 0.35, -0.75), 0.1, (1.0, 0.5, 0.0))


def _capsule_sdf(p: Tensor, a: Tensor, b: Tensor, r: float) -> Tensor:
    ab = b - a
    h = (((p - a) @ ab) / (ab @ ab)).clamp(0.0, 1.0)
    return (p - a - h[..., None] * ab).norm(dim=-1) - r


Tail = tuple[
    tuple[float, float, float], tuple[float, float, float], float, tuple[float, float, float]
]


def views_object_grid(resolution: int = 32, tail: Tail | None = _TAIL) -> Tensor:
    """The ground-truth field ``(4, G, G, G)`` (density + RGB in [0, 1]), float32.

    ``tail`` (capsule start, end, radius, RGB) replaces the orange tail, ``None`` removes it: the
    object variants of the ``sparse3d-views`` system (``views_variants``); the default is the
    testbed's object.

    Density ramps linearly from 0 to ``_SIGMA_IN`` across one voxel centred on the surface of the
    union (signed distance ``sdf``), an anti-aliased edge with compact support; every voxel
    takes the colour of the nearest part (smallest signed distance), so interpolation at the
    surface never blends towards an arbitrary empty-space colour.
    """
    c = -1.0 + (2.0 * torch.arange(resolution, dtype=torch.float64) + 1.0) / resolution
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")  # field[:, k, j, i] is at (x_i, y_j, z_k)
    p = torch.stack([x, y, z], dim=-1)
    centre, radii = (torch.tensor(v, dtype=torch.float64) for v in _BODY)
    q = (p - centre) / radii
    sdfs = [(q.norm(dim=-1) - 1.0) * radii.min()]  # a distance bound, exact on the sphere
    front = torch.sigmoid(p[..., 2] / 0.05)[..., None]
    colours = [front * torch.tensor(_BODY_FRONT) + (1 - front) * torch.tensor(_BODY_BACK)]
    for ctr, rad, rgb in _SPHERES:
        sdfs.append((p - torch.tensor(ctr, dtype=torch.float64)).norm(dim=-1) - rad)
        colours.append(torch.tensor(rgb, dtype=torch.float64).expand_as(p))
    if tail is not None:
        a, b, rad, rgb = tail
        sdfs.append(_capsule_sdf(p, torch.tensor(a).double(), torch.tensor(b).double(), rad))
        colours.append(torch.tensor(rgb, dtype=torch.float64).expand_as(p))
    sdf = torch.stack(sdfs)  # (P, G, G, G)
    nearest = sdf.argmin(dim=0)
    rgb = torch.stack([col.to(torch.float64) for col in colours])  # (P, G, G, G, 3)
    rgb = torch.gather(rgb, 0, nearest[None, ..., None].expand(1, *nearest.shape, 3))[0]
    ramp = 0.5 - sdf.min(dim=0).values / (_EDGE_VOXELS * 2.0 / resolution)
    density = _SIGMA_IN * ramp.clamp(0.0, 1.0)
    return torch.cat([density[None], rgb.permute(3, 0, 1, 2)]).float()


def prompt_for_azimuth(azimuth: float | Tensor) -> int | Tensor:
    """Sector label: 0 ``front`` (within 45° of 0), 2 ``back`` (within 45° of 180), else 1."""
    az = torch.as_tensor(azimuth, dtype=torch.float64)
    d = circular_distance(az, torch.zeros_like(az))
    label = torch.where(
        d <= SECTOR_HALF_WIDTH, 0, torch.where(d >= 180.0 - SECTOR_HALF_WIDTH, 2, 1)
    ).long()
    return int(label) if not isinstance(azimuth, Tensor) else label


@dataclass(frozen=True)
class ViewsTestbed(Testbed):
    """The ``views`` testbed (see module docstring). Tensors are shared: treat as read-only.

    ``teacher``/``truth`` is the view-biased mixture (also ``biased``); ``modes`` the sector of
    each component; images are ``(B, 3, H, W)`` in [-1, 1]; ``elevation`` is the ring's (deg),
    ``kappa`` the front bias of the weights, ``std`` each component's per-pixel std.
    """

    gt_field: VoxelField
    prompted: GaussianMixtureTeacher
    camera_teacher: GaussianMixtureTeacher
    ring: tuple[Camera, ...] = field(repr=False)
    ring_azimuths: Tensor = field(repr=False)  # (K,) degrees
    ring_images: Tensor = field(repr=False)  # (K, 3, H, W) in [-1, 1]
    heldout: tuple[Camera, ...] = field(repr=False)
    heldout_images: Tensor = field(repr=False)  # (M, 3, H, W) in [-1, 1]
    elevation: float
    kappa: float
    std: float

    @property
    def biased(self) -> GaussianMixtureTeacher:
        return self.truth

    @property
    def prompts(self) -> tuple[str, ...]:
        return PROMPTS

    def prompt_for_azimuth(self, azimuth: float | Tensor) -> int | Tensor:
        """Label of the ``prompted`` teacher for a camera at ``azimuth`` (degrees)."""
        return prompt_for_azimuth(azimuth)

    def ring_index(self, azimuth: float | Tensor) -> Tensor:
        """Nearest ring camera (the ``camera_teacher`` label), ``(N,)`` long."""
        az = torch.as_tensor(azimuth, dtype=torch.float64).reshape(-1, 1)
        return circular_distance(az, self.ring_azimuths[None]).argmin(dim=1)

    def cameras(self, azimuths: Tensor | list[float]) -> list[Camera]:
        """Cameras at the ring's elevation, radius and field of view."""
        ref = self.ring[0]
        return [Camera(float(a), ref.elevation, ref.radius, ref.fov) for a in azimuths]

    def sample_cameras(self, n: int, rng: torch.Generator | None) -> list[Camera]:
        """``n`` training cameras: azimuth uniform on [0, 360), the ring's elevation and radius."""
        return self.cameras(360.0 * torch.rand(n, generator=rng, dtype=torch.float64))


def _heldout_cameras(
    n_ring: int, ring_ref: Camera, elevations: tuple[float, ...]
) -> tuple[Camera, ...]:
    step = 360.0 / n_ring
    azimuths = [step / 2 + 2 * step * k for k in range(max(n_ring // 2, 1))]
    return tuple(Camera(a, e, ring_ref.radius, ring_ref.fov) for e in elevations for a in azimuths)


def build_views(
    seed: int = 0,
    schedule: str = "edm",
    *,
    image_size: int = 32,
    resolution: int = 32,
    n_ring: int = 72,
    elevation: float = 15.0,
    kappa: float = 4.0,
    std: float = 0.05,
    n_samples: int = 48,
    heldout_elevations: tuple[float, ...] = (5.0, 15.0, 30.0),
) -> ViewsTestbed:
    """Build the ``views`` testbed (cached on its arguments; see module docstring).

    ``image_size`` 32 gives ``D = 3072`` (16 gives 768); ``std`` is the per-pixel standard
    deviation of each component in data units; ``kappa`` the front bias of the weights.
    """
    scene = _render_scene(
        int(image_size), int(resolution), int(n_ring), float(elevation), int(n_samples),
        tuple(float(e) for e in heldout_elevations),
    )  # fmt: skip
    return _build_views(int(seed), str(schedule), float(kappa), float(std), scene)


class _Scene(NamedTuple):
    gt: VoxelField
    ring: tuple[Camera, ...]
    ring_images: Tensor
    heldout: tuple[Camera, ...]
    heldout_images: Tensor


@functools.lru_cache(maxsize=8)
def _render_scene(
    image_size: int,
    resolution: int,
    n_ring: int,
    elevation: float,
    n_samples: int,
    heldout_elevations: tuple[float, ...],
    tail: Tail | None = _TAIL,
) -> _Scene:
    """The ground truth and its renders: the slow part, shared by every schedule and weighting
    (``tail``: the object variant, ``views_object_grid``'s)."""
    gt = VoxelField.from_grid(
        views_object_grid(resolution, tail), image_size=image_size, n_samples=n_samples
    )
    ring = tuple(ring_cameras(n_ring, elevation))
    heldout = _heldout_cameras(n_ring, ring[0], heldout_elevations)
    with torch.no_grad():
        return _Scene(gt, ring, gt(list(ring)), heldout, gt(list(heldout)))


@functools.lru_cache(maxsize=8)
def _build_views(seed: int, schedule: str, kappa: float, std: float, scene: _Scene) -> ViewsTestbed:
    del seed  # the object is fixed
    n_ring = len(scene.ring)
    azimuths = torch.tensor([c.azimuth for c in scene.ring], dtype=torch.float64)
    means = scene.ring_images.reshape(n_ring, -1).double()
    weights = torch.exp(kappa * torch.cos(torch.deg2rad(azimuths)))
    sectors = prompt_for_azimuth(azimuths)
    stds = np.full(n_ring, std)
    biased = GaussianMixtureTeacher(means, weights, stds=stds, schedule=schedule)
    prompted = GaussianMixtureTeacher(
        means, weights, stds=stds, labels=sectors.numpy(), schedule=schedule
    )
    camera = GaussianMixtureTeacher(
        means, np.ones(n_ring), stds=stds, labels=np.arange(n_ring), schedule=schedule
    )
    return ViewsTestbed(
        "views", biased, biased, sectors, tuple(scene.ring_images.shape[1:]),
        "3-D object seen from a ring of cameras: view-biased, prompted and per-camera teachers",
        scene.gt, prompted, camera, scene.ring, azimuths, scene.ring_images, scene.heldout,
        scene.heldout_images, float(scene.ring[0].elevation), kappa, std,
    )  # fmt: skip


def views_testbed(seed: int, schedule: str) -> Testbed:
    """3-D object, 72 ring views at 32x32: view-biased teacher (exp(4 cos az)) + prompts."""
    return build_views(int(seed), schedule)


def clear_views_cache() -> None:
    """Forget the cached renders and testbeds (the next ``build_views`` renders again)."""
    _build_views.cache_clear()
    _render_scene.cache_clear()
