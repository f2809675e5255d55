"""The MLP behind the learned teacher and the critic: ``F(x_in, c_noise, cond)`` with a Fourier
noise embedding and a class embedding (null class last) or a continuous camera azimuth, its last
hidden layer exposed as ``features`` for a discriminator head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import NULL_LABEL

__all__ = ["MLPDenoiserNet", "azimuth_features"]

_FOURIER = 16  # noise-level frequencies; log(sigma/alpha) spans about [-7, 5]


def azimuth_features(cond: Tensor | None, n: int, x: Tensor) -> Tensor:
    """``(n, 2)``: ``[cos az, sin az]`` of azimuths in degrees; zeros for ``NULL_LABEL`` / None."""
    if cond is None:
        return x.new_zeros(n, 2)
    az = cond.to(x.device, torch.float64).reshape(n)
    rad = torch.deg2rad(az)
    feats = torch.stack([rad.cos(), rad.sin()], dim=1)
    return torch.where((az == NULL_LABEL)[:, None], 0.0, feats).to(x.dtype)


class MLPDenoiserNet(nn.Module):
    """SiLU MLP ``F(x_in: (B, *D), c_noise: (B,), cond: (B,) | None) -> (B, *D)``, prod(D) = dim.

    ``depth`` hidden layers of width ``hidden``; ``c_noise`` enters as ``[c, sin(f c), cos(f c)]``
    (fixed log-spaced ``f``), the class as an added embedding whose last row is the null class
    (``NULL_LABEL``; ``num_classes = 0``: unconditional). The output layer starts at zero.

    ``azimuth_cond=True`` (issue 15) instead reads ``cond: (B,)`` as a camera azimuth in degrees
    and adds ``E([cos az, sin az])``, ``E`` a Linear-SiLU-Linear embedding; ``NULL_LABEL`` rows
    ("no camera") get ``E(0)``. This is threestudio's VSD LoRA camera condition on a ring of
    cameras: ``camera_embedding = TimestepEmbedding(16, 1280)`` of the flattened camera-to-world
    matrix, zeroed for classifier-free training (``stable_diffusion_vsd_guidance.py``,
    ``lora_cfg_training``); at a fixed elevation and radius that matrix is affine in
    ``(cos az, sin az)``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 4,
        num_classes: int = 0,
        azimuth_cond: bool = False,
    ) -> None:
        super().__init__()
        if min(dim, hidden, depth) < 1 or num_classes < 0 or (azimuth_cond and num_classes):
            sizes = f"{dim=}, {hidden=}, {depth=}, {num_classes=}, {azimuth_cond=}"
            raise ValueError(
                "need dim, hidden, depth >= 1, num_classes >= 0, and num_classes = 0 with "
                f"azimuth_cond; got {sizes}"
            )
        self.dim, self.hidden, self.depth, self.num_classes = dim, hidden, depth, num_classes
        freqs = math.pi * 2.0 ** torch.linspace(-2.0, 4.0, _FOURIER)  # periods 8 .. 1/8 in c_noise
        self.register_buffer("freqs", freqs, persistent=False)
        self.inp = nn.Linear(dim + 1 + 2 * _FOURIER, hidden)
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.camera_emb = (
            nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            if azimuth_cond
            else None
        )
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _class_index(self, cond: Tensor | None, n: int, device: torch.device) -> Tensor:
        null = torch.full((n,), self.num_classes, device=device)
        if cond is None:
            return null
        cond = cond.to(device).long().reshape(n)
        if bool(((cond < NULL_LABEL) | (cond >= self.num_classes)).any()):
            raise ValueError(f"cond labels must lie in [{NULL_LABEL}, {self.num_classes - 1}]")
        return torch.where(cond == NULL_LABEL, null, cond)

    def features(
        self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None, extra: Tensor | None = None
    ) -> Tensor:
        """The last hidden layer, ``(B, hidden)`` (where a discriminator head reads, as DMD2's
        classifier reads the fake UNet's bottleneck). ``extra: (B, hidden)`` is added to the
        first hidden layer (a one-step student's extra latent, ``TeacherInitGenerator``)."""
        n = x_in.shape[0]
        x = x_in.reshape(n, self.dim)
        c = c_noise.to(x.dtype).reshape(n, 1)
        arg = c * self.freqs.to(x.dtype)
        h = self.inp(torch.cat([x, c, arg.sin(), arg.cos()], dim=1))
        if self.camera_emb is not None:
            h = h + self.camera_emb(azimuth_features(cond, n, x))
        else:  # validates the labels even without a class embedding
            idx = self._class_index(cond, n, x.device)
            if self.class_emb is not None:
                h = h + self.class_emb(idx)
        if extra is not None:
            h = h + extra
        for layer in self.layers:
            h = layer(F.silu(h))
        return F.silu(h)

    def forward(
        self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None, extra: Tensor | None = None
    ) -> Tensor:
        return self.out(self.features(x_in, c_noise, cond, extra)).reshape(x_in.shape)
