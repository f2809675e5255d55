"""Small classifiers for the CPU distillation experiments.

``MLP(in_dim, widths, num_classes)``: ``body`` is an ``nn.Sequential`` of ``Linear``/``ReLU``
pairs (``body.0`` the first ``Linear``, ``body.1`` its activation, …) and ``head`` the final
``Linear``, so feature hooks name stable module paths: ``"body"`` is the penultimate
representation, ``"head"`` the logits. The note's pair is teacher ``MLP(64, (256, 256), 10)``
and student ``MLP(64, (32,), 10)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """ReLU MLP classifier: ``x (B, D) -> logits (B, C)``."""

    def __init__(self, in_dim: int, widths: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if any(w < 1 for w in widths):
            raise ValueError(f"widths must be positive integers, got {list(widths)}")
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)``."""
        return self.head(self.body(x))
