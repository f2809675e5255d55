"""A small convolutional one-step generator for image testbeds (8×8 ``digits``).

``x = G(z, c)`` with ``z`` of the image's size: a 3×3 convolution lifts ``z`` to ``channels``
feature maps, ``blocks`` residual blocks (SiLU, 3×3 conv, SiLU, 3×3 conv) follow, each with the
class embedding added per channel, and a 3×3 convolution maps back to the image's channels. The
output convolution is scaled at construction so initial samples have std ``0.1`` per pixel,
centred at 0 (as ``OneStepGenerator``). NFE 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..parametrization import NULL_LABEL
from .generators import _OUT_INIT_STD, _param_device, class_index, draw_latent

__all__ = ["ConvGenerator"]


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, emb: Tensor | None) -> Tensor:
        r = self.conv1(F.silu(h))
        if emb is not None:
            r = r + emb[:, :, None, None]
        return h + self.conv2(F.silu(r))


class ConvGenerator(nn.Module):
    """``(B, C·H·W)`` latents (and labels) to flattened ``(B, C·H·W)`` images."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        *,
        channels: int = 32,
        blocks: int = 2,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        shape = (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)
        if len(shape) != 3 or min(*shape, channels, blocks) < 1 or num_classes < 0:
            raise ValueError(
                f"need image_shape (H, W) or (C, H, W), channels, blocks >= 1, num_classes >= 0;"
                f" got {image_shape=}, {channels=}, {blocks=}, {num_classes=}"
            )
        self.shape, self.dim, self.num_classes, self.nfe = shape, math.prod(shape), num_classes, 1
        self.inp = nn.Conv2d(shape[0], channels, 3, padding=1)
        self.class_emb = nn.Embedding(num_classes + 1, channels) if num_classes else None
        self.blocks = nn.ModuleList(_Block(channels) for _ in range(blocks))
        self.out = nn.Conv2d(channels, shape[0], 3, padding=1)
        self._rescale_output()

    @torch.no_grad()
    def _rescale_output(self) -> None:
        """Initial samples: std ``_OUT_INIT_STD`` per pixel, mean 0 (fixed local seed)."""
        z = torch.randn(1024, self.dim, generator=torch.Generator().manual_seed(0))
        labels = None if self.class_emb is None else torch.full((1024,), NULL_LABEL)
        self.out.weight.mul_(_OUT_INIT_STD / max(self(z, labels).std(0).mean().item(), 1e-12))
        self.out.bias.sub_(self(z, labels).mean().reshape(1).expand_as(self.out.bias))

    def sample_latent(
        self, n: int, rng: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``z: (n, dim) ~ N(0, I)`` on the parameters' device."""
        return draw_latent(n, self.dim, rng, dtype, _param_device(self))

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """``z: (B, dim)``, ``cond: (B,)`` labels or None -> ``x: (B, dim)``."""
        n = z.shape[0]
        idx = class_index(cond, n, self.num_classes, z.device)
        emb = self.class_emb(idx) if idx is not None else None
        h = self.inp(z.reshape(n, *self.shape))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(h)).reshape(n, self.dim)
