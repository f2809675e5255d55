"""The MLP behind the learned teacher and the critic: ``F(x_in, c_noise, cond)`` with a Fourier
noise embedding and a class embedding (null class last), its last hidden layer exposed as
``features`` for a discriminator head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import NULL_LABEL

__all__ = ["MLPDenoiserNet"]

_FOURIER = 16  # noise-level frequencies; log(sigma/alpha) spans about [-7, 5]


class MLPDenoiserNet(nn.Module):
    """SiLU MLP ``F(x_in: (B, *D), c_noise: (B,), cond: (B,) | None) -> (B, *D)``, prod(D) = dim.

    ``depth`` hidden layers of width ``hidden``; ``c_noise`` enters as ``[c, sin(f c), cos(f c)]``
    (fixed log-spaced ``f``), the class as an added embedding whose last row is the null class
    (``NULL_LABEL``; ``num_classes = 0``: unconditional). The output layer starts at zero.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, num_classes: int = 0) -> None:
        super().__init__()
        if min(dim, hidden, depth) < 1 or num_classes < 0:
            sizes = f"{dim=}, {hidden=}, {depth=}, {num_classes=}"
            raise ValueError(f"need dim, hidden, depth >= 1 and num_classes >= 0; got {sizes}")
        self.dim, self.hidden, self.depth, self.num_classes = dim, hidden, depth, num_classes
        freqs = math.pi * 2.0 ** torch.linspace(-2.0, 4.0, _FOURIER)  # periods 8 .. 1/8 in c_noise
        self.register_buffer("freqs", freqs, persistent=False)
        self.inp = nn.Linear(dim + 1 + 2 * _FOURIER, hidden)
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
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

    def features(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """The last hidden layer, ``(B, hidden)`` (where a discriminator head reads, as DMD2's
        classifier reads the fake UNet's bottleneck)."""
        n = x_in.shape[0]
        x = x_in.reshape(n, self.dim)
        c = c_noise.to(x.dtype).reshape(n, 1)
        arg = c * self.freqs.to(x.dtype)
        h = self.inp(torch.cat([x, c, arg.sin(), arg.cos()], dim=1))
        idx = self._class_index(cond, n, x.device)
        if self.class_emb is not None:
            h = h + self.class_emb(idx)
        for layer in self.layers:
            h = layer(F.silu(h))
        return F.silu(h)

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.out(self.features(x_in, c_noise, cond)).reshape(x_in.shape)
