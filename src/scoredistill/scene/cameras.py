"""Orbit cameras around the unit box ``[-1, 1]^3``: rays for rendering, projection for checks.

Convention (one place, used by the renderer, the ``views`` testbed and the metrics):

- World frame: **y is up**. The object's front faces **+z**.
- Angles are in **degrees**. A camera at azimuth ``a``, elevation ``e`` and distance ``r`` sits
  at ``r * (sin a cos e, sin e, cos a cos e)`` and looks at the origin. Azimuth 0 is the front
  (camera on +z), 90 puts the camera on +x, 180 is the back, 270 (= -90) puts it on -x.
  Elevation is positive above the equator; ``|e| < 90`` (the up vector is world y).
- Image axes: pixel ``(row i, col j)`` has its centre at continuous coordinates
  ``(u, v) = (j + 0.5, i + 0.5)``; ``u`` grows to the camera's right, ``v`` downwards, so row 0
  is the top of the picture. ``fov`` is the full vertical field of view in degrees; pixels are
  square.

Camera basis: ``forward = -position / |position|``, ``right = forward x up``,
``cam_up = right x forward``. A pixel's ray direction is
``forward + x_ndc tan(fov/2) aspect right + y_ndc tan(fov/2) cam_up`` (normalised) with
``x_ndc = 2u/W - 1`` and ``y_ndc = 1 - 2v/H``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_FOV",
    "DEFAULT_RADIUS",
    "Camera",
    "camera_rays",
    "circular_distance",
    "pixel_rays",
    "project",
    "ring_cameras",
    "sample_cameras",
]

# At distance 2.7 a 40-degree vertical field of view spans +-0.98 at the origin: the objects,
# which stay inside the ball of radius 0.9, fill the image with a small margin.
DEFAULT_RADIUS = 2.7
DEFAULT_FOV = 40.0


@dataclass(frozen=True)
class Camera:
    """A pinhole camera on an orbit around the origin (angles in degrees; see module docstring)."""

    azimuth: float
    elevation: float = 0.0
    radius: float = DEFAULT_RADIUS
    fov: float = DEFAULT_FOV

    def __post_init__(self) -> None:
        if not abs(self.elevation) < 90.0:
            raise ValueError(f"elevation must lie in (-90, 90) degrees, got {self.elevation}")
        if not self.radius > 0:
            raise ValueError(f"radius must be positive, got {self.radius}")
        if not 0.0 < self.fov < 180.0:
            raise ValueError(f"fov must lie in (0, 180) degrees, got {self.fov}")

    def position(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(3,)`` camera centre in world coordinates."""
        a, e = math.radians(self.azimuth), math.radians(self.elevation)
        xyz = [math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)]
        return self.radius * torch.tensor(xyz, dtype=dtype)

    def basis(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """``(right, cam_up, forward)``, each a unit ``(3,)`` vector."""
        forward = -self.position(dtype) / self.radius
        up = torch.tensor([0.0, 1.0, 0.0], dtype=dtype)
        right = torch.linalg.cross(forward, up)
        right = right / right.norm()
        return right, torch.linalg.cross(right, forward), forward


def _focal_scales(camera: Camera, height: int, width: int) -> tuple[float, float]:
    """Half-extents of the image plane at unit depth: ``(horizontal, vertical)``."""
    half = math.tan(math.radians(camera.fov) / 2)
    return half * width / height, half


def pixel_rays(
    camera: Camera, uv: Tensor, height: int, width: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Rays through continuous pixel coordinates.

    Args:
        uv: ``(..., 2)`` pixel coordinates ``(u, v)`` (column, row; pixel centres at ``+0.5``).

    Returns:
        ``(origins (..., 3), directions (..., 3))``; directions have unit length.
    """
    right, cam_up, forward = camera.basis(dtype)
    sx, sy = _focal_scales(camera, height, width)
    uv = uv.to(dtype)
    x_ndc = (2 * uv[..., 0:1] / width - 1) * sx
    y_ndc = (1 - 2 * uv[..., 1:2] / height) * sy
    dirs = forward + x_ndc * right + y_ndc * cam_up
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return camera.position(dtype).expand_as(dirs), dirs


def camera_rays(
    cameras: Sequence[Camera], height: int, width: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Rays through every pixel centre: ``(origins, directions)``, each ``(B, H, W, 3)``."""
    rows = torch.arange(height, dtype=dtype) + 0.5
    cols = torch.arange(width, dtype=dtype) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    uv = torch.stack([u, v], dim=-1)
    rays = [pixel_rays(cam, uv, height, width, dtype) for cam in cameras]
    return torch.stack([o for o, _ in rays]), torch.stack([d for _, d in rays])


def project(points: Tensor, camera: Camera, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Project world points into the image.

    Args:
        points: ``(N, 3)`` world coordinates.

    Returns:
        ``(uv (N, 2), depth (N,))``: continuous pixel coordinates (column, row) as in the module
        docstring, and the distance along the viewing axis (positive in front of the camera).
    """
    right, cam_up, forward = camera.basis(points.dtype)
    rel = points - camera.position(points.dtype)
    depth = rel @ forward
    sx, sy = _focal_scales(camera, height, width)
    x_ndc = (rel @ right) / depth / sx
    y_ndc = (rel @ cam_up) / depth / sy
    uv = torch.stack([(x_ndc + 1) * width / 2, (1 - y_ndc) * height / 2], dim=-1)
    return uv, depth


def _uniform(n: int, bounds: tuple[float, float], rng: torch.Generator | None) -> list[float]:
    lo, hi = float(bounds[0]), float(bounds[1])
    if hi < lo:
        raise ValueError(f"range must be (low, high) with low <= high, got {bounds}")
    draws = torch.rand(n, generator=rng, dtype=torch.float64)
    return (lo + (hi - lo) * draws).tolist()


def sample_cameras(
    n: int,
    rng: torch.Generator | None,
    azimuth_range: tuple[float, float] = (-180.0, 180.0),
    elevation_range: tuple[float, float] = (-10.0, 45.0),
    radius_range: tuple[float, float] = (DEFAULT_RADIUS, DEFAULT_RADIUS),
    fov: float = DEFAULT_FOV,
) -> list[Camera]:
    """``n`` cameras with azimuth, elevation and radius drawn uniformly from their ranges."""
    az = _uniform(n, azimuth_range, rng)
    el = _uniform(n, elevation_range, rng)
    rad = _uniform(n, radius_range, rng)
    return [Camera(a, e, r, fov) for a, e, r in zip(az, el, rad, strict=True)]


def ring_cameras(
    n: int,
    elevation: float = 0.0,
    radius: float = DEFAULT_RADIUS,
    fov: float = DEFAULT_FOV,
    offset: float = 0.0,
) -> list[Camera]:
    """``n`` cameras at azimuths ``offset + 360 k / n`` (k = 0..n-1), all at one elevation."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return [Camera(offset + 360.0 * k / n, elevation, radius, fov) for k in range(n)]


def circular_distance(a: Tensor, b: Tensor) -> Tensor:
    """Absolute angular difference in degrees, in ``[0, 180]`` (broadcasts)."""
    d = torch.remainder(a - b, 360.0)
    return torch.minimum(d, 360.0 - d)
