"""A voxel radiance field seen through the volume renderer: the 3-D source.

``VoxelField`` holds raw density and colour grids as parameters; ``grid()`` activates them
(density ``softplus`` or ``exp``, colour ``sigmoid``) into the ``(4, G, G, G)`` field that
``render.render_rays`` composites. ``forward(cameras)`` returns images in the teachers' data
range ``[-1, 1]`` (``x = 2 rgb - 1``), shape ``(B, 3, H, W)``, so that DDP, which routes only
``forward``, sees the samples the objective differentiates. Frozen ground-truth fields are built
with ``VoxelField.from_grid``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .cameras import Camera
from .render import check_field, render_batch

__all__ = ["DENSITY_ACTIVATIONS", "VoxelField", "field_grid"]

DENSITY_ACTIVATIONS = ("softplus", "exp")
_INIT_KINDS = ("constant", "small-random")
_COLOUR_EPS = 1e-4  # keeps from_grid's logit finite at colours 0 and 1
_DENSITY_FLOOR = 1e-8  # keeps from_grid's inverse activation finite at density 0


def _inverse_density(sigma: Tensor, activation: str) -> Tensor:
    sigma = sigma.clamp(min=_DENSITY_FLOOR)
    if activation == "exp":
        return torch.log(sigma)
    # softplus^-1(s) = log(expm1(s)) = s + log(-expm1(-s)), the second form stable for large s
    return sigma + torch.log(-torch.expm1(-sigma))


class VoxelField(nn.Module):
    """Density + RGB on a ``G^3`` grid over ``[-1, 1]^3``, rendered by emission-absorption.

    Args:
        resolution: ``G``, voxels per axis.
        image_size: ``H = W`` of the images ``forward`` returns.
        n_samples: samples per ray.
        background: RGB in ``[0, 1]`` behind the box (scalar for grey levels).
        density_activation: ``"softplus"`` or ``"exp"`` (raw parameter -> density >= 0).
        init: ``"constant"`` (density ``init_density``, grey) or ``"small-random"`` (the same
            plus N(0, ``init_noise``^2) on every raw value, drawn from ``rng``).
        init_density: starting density per unit length (0.1 keeps the box almost transparent).
        rng: the generator for ``"small-random"``.
    """

    def __init__(
        self,
        resolution: int = 32,
        *,
        image_size: int = 32,
        n_samples: int = 48,
        background: float | Sequence[float] = 1.0,
        density_activation: str = "softplus",
        init: str = "small-random",
        init_density: float = 0.1,
        init_noise: float = 0.1,
        rng: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if density_activation not in DENSITY_ACTIVATIONS:
            raise ValueError(
                f"density_activation must be one of {DENSITY_ACTIVATIONS}, "
                f"got {density_activation!r}"
            )
        if init not in _INIT_KINDS:
            raise ValueError(f"init must be one of {_INIT_KINDS}, got {init!r}")
        if resolution < 2 or image_size < 1 or n_samples < 1:
            raise ValueError(
                "resolution must be >= 2 and image_size, n_samples >= 1; got "
                f"{resolution}, {image_size}, {n_samples}"
            )
        self.image_size, self.n_samples = int(image_size), int(n_samples)
        self.density_activation = density_activation
        self.register_buffer("background", torch.as_tensor(background, dtype=torch.float32))
        shape = (resolution, resolution, resolution)
        sigma0 = torch.full((1, *shape), float(init_density))
        self.density_raw = nn.Parameter(_inverse_density(sigma0, density_activation))
        self.colour_raw = nn.Parameter(torch.zeros(3, *shape))
        if init == "small-random":
            with torch.no_grad():
                for p in (self.density_raw, self.colour_raw):
                    p.add_(init_noise * torch.randn(p.shape, generator=rng))

    @classmethod
    def from_grid(
        cls,
        field: Tensor,
        *,
        image_size: int = 32,
        n_samples: int = 48,
        background: float | Sequence[float] = 1.0,
        density_activation: str = "softplus",
    ) -> VoxelField:
        """A frozen field whose ``grid()`` reproduces ``field (4, G, G, G)``.

        Colours are clamped to ``[1e-4, 1 - 1e-4]`` so that the inverse sigmoid stays finite.
        """
        check_field(field)
        out = cls(
            field.shape[1],
            image_size=image_size,
            n_samples=n_samples,
            background=background,
            density_activation=density_activation,
            init="constant",
        )
        with torch.no_grad():
            out.density_raw.copy_(_inverse_density(field[:1].double(), out.density_activation))
            colour = field[1:].double().clamp(_COLOUR_EPS, 1 - _COLOUR_EPS)
            out.colour_raw.copy_(torch.logit(colour))
        return out.requires_grad_(False)

    @property
    def resolution(self) -> int:
        return self.density_raw.shape[-1]

    @property
    def voxel_size(self) -> float:
        """Edge length of one voxel in world units (the box is 2 wide)."""
        return 2.0 / self.resolution

    def density(self) -> Tensor:
        """``(1, G, G, G)`` density >= 0."""
        if self.density_activation == "exp":
            return torch.exp(self.density_raw)
        return nn.functional.softplus(self.density_raw)

    def grid(self) -> Tensor:
        """The activated field ``(4, G, G, G)``: density, then RGB in ``[0, 1]``."""
        return torch.cat([self.density(), torch.sigmoid(self.colour_raw)], dim=0)

    def total_variation(self) -> Tensor:
        """A smoothness prior: the quadratic (Tikhonov) form of the grid's total variation, the
        squared difference of neighbouring voxels (voxel-grid radiance fields regularise their
        grids this way; Plenoxels, Yu, Fridovich-Keil et al., CVPR 2022, takes the square root
        of each voxel's sum over the three axes, the isotropic TV). On quantities in ``[0, 1]``,
        so that one weight means the same at every density scale: each voxel's opacity ``1 -
        exp(-sigma * voxel_size)`` and its RGB. The mean over the 4 channels and the ``G - 1``
        neighbour pairs, summed over the three axes (0 for a constant field; a colour ramp with
        step ``c`` along one axis: 3 c^2 / 4)."""
        opacity = -torch.expm1(-self.density() * self.voxel_size)
        g = torch.cat([opacity, torch.sigmoid(self.colour_raw)], dim=0)
        return sum(g.diff(dim=d).square().mean() for d in (1, 2, 3))

    def render_rgb(
        self,
        cameras: Sequence[Camera],
        rng: torch.Generator | None = None,
        image_size: int | None = None,
    ) -> Tensor:
        """``(B, 3, H, W)`` colours in ``[0, 1]``; ``rng`` stratifies the ray samples."""
        size = self.image_size if image_size is None else int(image_size)
        return render_batch(self.grid(), cameras, size, size, self.n_samples, rng, self.background)

    def forward(
        self,
        cameras: Sequence[Camera],
        rng: torch.Generator | None = None,
        image_size: int | None = None,
    ) -> Tensor:
        """Samples for the objective: images ``(B, 3, H, W)`` in the data range ``[-1, 1]``."""
        return 2.0 * self.render_rgb(cameras, rng, image_size) - 1.0

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, image_size={self.image_size}, "
            f"n_samples={self.n_samples}, density_activation={self.density_activation!r}"
        )


def field_grid(field: VoxelField | Tensor) -> Tensor:
    """The ``(4, G, G, G)`` activated grid of a ``VoxelField``, or the tensor itself, checked."""
    grid = field.grid() if isinstance(field, VoxelField) else field
    check_field(grid)
    return grid
