"""Small networks for the CPU distillation experiments.

``MLP(in_dim, widths, num_classes)``: ``body`` is an ``nn.Sequential`` of ``Linear``/``ReLU``
pairs (``body.0`` the first ``Linear``, ``body.1`` its activation, …) and ``head`` the final
``Linear``, so feature hooks name stable module paths: ``"body"`` is the penultimate
representation, ``"head"`` the logits. The note's pair is teacher ``MLP(64, (256, 256), 10)``
and student ``MLP(64, (32,), 10)``. ``SmallCNN`` does the same on ``(1, 8, 8)`` maps (ACAM-KD),
``CrossEncoder``/``BiEncoder`` score a query's candidates (retrieval; ``TeacherScores`` is a
teacher's scores as the student sees them), and ``KDStudent`` holds a student with its
training-only extras (projector heads, fusion modules, LELP subclasses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "BiEncoder", "CrossEncoder", "KDStudent", "SmallCNN", "TeacherScores"]


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


class SmallCNN(nn.Module):
    """Conv classifier on flattened images: ``x (B, C·H·W) -> logits (B, classes)``.

    The input is reshaped to ``shape`` (digits: ``(1, 8, 8)``); ``body`` is ``Conv3×3/ReLU``
    pairs at full resolution (``"body"`` captures the ``(B, C_last, H, W)`` map that ACAM-KD
    distils); ``head`` flattens the map and applies a ``Linear``. (A global-average-pooled head
    left CNN(8) at 0.57 and CNN(32, 32) at 0.86 on digits: 8×8 maps are too small to pool.)
    """

    def __init__(self, shape: Sequence[int], channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be positive integers, got {list(channels)}")
        self.shape = tuple(shape)
        layers: list[nn.Module] = []
        c_in = self.shape[0]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        pixels = self.shape[1] * self.shape[2]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * pixels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)``."""
        return self.head(self.body(x.view(x.shape[0], *self.shape)))


def _split(x: Tensor, query_dim: int, doc_dim: int) -> tuple[Tensor, Tensor]:
    """A retrieval row ``(B, Dq + N·Dd)`` -> query ``(B, Dq)`` and documents ``(B, N, Dd)``."""
    return x[:, :query_dim], x[:, query_dim:].reshape(x.shape[0], -1, doc_dim)


def _tower(in_dim: int, widths: Sequence[int], out_dim: int, bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_dim, width, bias=bias), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim, bias=bias))


class CrossEncoder(nn.Module):
    """Cross-encoder: an MLP on each pair ``[q, d, q⊙d]`` -> one score; ``(B, N)`` per row."""

    def __init__(self, query_dim: int, doc_dim: int, widths: Sequence[int]) -> None:
        super().__init__()
        if query_dim != doc_dim:
            raise ValueError(f"q⊙d needs query_dim == doc_dim, got {query_dim} != {doc_dim}")
        self.query_dim, self.doc_dim = query_dim, doc_dim
        self.body = _tower(3 * query_dim, widths, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(B, N)`` of the ``N`` candidates of each row."""
        q, d = _split(x, self.query_dim, self.doc_dim)
        q = q.unsqueeze(1).expand_as(d)
        return self.body(torch.cat([q, d, q * d], dim=-1)).squeeze(-1)


class BiEncoder(nn.Module):
    """Bi-encoder (dual encoder): ``s(q, d) = ⟨f(q), g(d)⟩`` with two MLP towers; ``(B, N)``.

    ``bias=False`` makes both towers positively homogeneous (no constant coordinate), so the
    student cannot add a per-query offset to its scores (note d.2.5 (b): "bias-free").
    """

    def __init__(
        self,
        query_dim: int,
        doc_dim: int,
        widths: Sequence[int],
        embed_dim: int = 16,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.query_dim, self.doc_dim = query_dim, doc_dim
        self.query = _tower(query_dim, widths, embed_dim, bias)
        self.doc = _tower(doc_dim, widths, embed_dim, bias)

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(B, N)``: one dot product per candidate, no pair interaction."""
        q, d = _split(x, self.query_dim, self.doc_dim)
        return torch.einsum("be,bne->bn", self.query(q), self.doc(d))


class TeacherScores(nn.Module):
    """A retrieval teacher as the student sees it: optional sigmoid squash and per-query offset.

    The offset ``offset_std · ⟨x_q, u⟩`` (``u`` a fixed random unit vector) is one constant per
    query: it changes no ranking, only the scores' level (Margin-MSE's setting, note d.2.5 (b)).
    """

    def __init__(self, net: CrossEncoder, squash: bool = False, offset_std: float = 0.0) -> None:
        super().__init__()
        self.net, self.squash, self.offset_std = net, squash, offset_std
        u = torch.randn(net.query_dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer("u", u / u.norm())

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(B, N)``."""
        s = self.net(x)
        if self.squash:
            s = torch.sigmoid(s)
        return s + self.offset_std * (x[:, : self.net.query_dim] @ self.u).unsqueeze(-1)


class KDStudent(nn.Module):
    """A student network plus its training-only extras (projector heads, fusion modules).

    ``forward`` is the network's (what the loss sees; LELP: ``C·S`` subclass logits);
    ``predict`` gives class logits (LELP: ``logsumexp`` over each class's ``S`` subclasses).
    The extras live in ``extras`` so one optimizer trains them; drop them at export.
    """

    def __init__(
        self, net: nn.Module, extras: dict[str, nn.Module] | None = None, num_subclasses: int = 1
    ) -> None:
        super().__init__()
        self.net = net
        self.extras = nn.ModuleDict(extras or {})
        self.num_subclasses = num_subclasses

    def forward(self, x: Tensor) -> Tensor:
        """The network's raw outputs ``(B, C·S)``."""
        return self.net(x)

    def predict(self, x: Tensor) -> Tensor:
        """Class logits ``(B, C)``."""
        out = self.net(x)
        if self.num_subclasses == 1:
            return out
        return out.view(out.shape[0], -1, self.num_subclasses).logsumexp(-1)
