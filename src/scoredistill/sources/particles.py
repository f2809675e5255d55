"""Particles: the simplest source, ``x = θ`` (reference note a; DESIGN "Sources").

``N`` particles of shape ``D`` are the trainable tensor ``theta: (N, *D)``; ``forward(idx)``
returns all of them or a subset, so the objective's gradient ``g / B`` lands on the particles
directly. One particle optimised with SDS is DreamFusion's 2-D "image as parameters"; ``N``
particles with VSD are ProlificDreamer's particle VSD (``objectives.vsd.VSD``, the same objective
the one-step generators use). ``noise`` is one fixed ``N(0, I)`` tensor per particle, a buffer,
so it is saved with the particles: the fixed noise of CDS (``share_noise``), CSM and
LucidDreamer's ``fix_noise`` (pass ``noise=particles.noise[idx]``). A resumed run then keeps its
objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Particles"]


class Particles(nn.Module):
    """``N`` trainable samples ``theta: (N, *shape)``.

    Args:
        n: number of particles (``N = 1`` is SDS on a single image).
        shape: shape ``D`` of one particle, e.g. ``(16,)`` or ``(1, 8, 8)``.
        init: optional ``(N, *shape)`` starting values (copied); else ``init_std * N(0, I)``.
        init_std: scale of the random start.
        rng: ``torch.Generator`` for the random start and the fixed noise.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        n: int,
        shape: Sequence[int],
        *,
        init: Tensor | None = None,
        init_std: float = 1.0,
        rng: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if n < 1 or not shape or min(shape) < 1:
            raise ValueError(f"Particles needs n >= 1 and a non-empty shape, got n={n}, {shape}")
        full = (n, *shape)
        if init is None:
            theta = init_std * torch.randn(full, generator=rng, dtype=dtype)
        else:
            if tuple(init.shape) != full:
                raise ValueError(f"init must have shape {full}, got {tuple(init.shape)}")
            theta = init.detach().clone().to(dtype)
        self.theta = nn.Parameter(theta)
        self.register_buffer("noise", torch.randn(full, generator=rng, dtype=dtype))

    @property
    def n(self) -> int:
        return self.theta.shape[0]

    @property
    def dim(self) -> int:
        return self.theta[0].numel()

    def forward(self, idx: Tensor | Sequence[int] | None = None) -> Tensor:
        """All particles ``(N, *D)``, or the rows ``idx`` (``(B, *D)``, differentiable)."""
        if idx is None:
            return self.theta
        return self.theta[torch.as_tensor(idx, dtype=torch.long, device=self.theta.device)]
