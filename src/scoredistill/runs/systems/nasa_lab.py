"""The attribute grid and the cross-attention student of the NASA system (``nasa.py``).

Testbed: ``R^2``, 16 isotropic Gaussian modes ``N(mu_rc, s^2 I)`` on a 4x4 grid (row ``r``,
column ``c``, spacing ``h``, centred). A condition is a token set over 8 attribute tokens (4
rows, 4 columns), written multi-hot ``(B, 8)``: ``[row one-hot | column one-hot]``, zeros where
the attribute is not given. A mode *matches* a set when it has every attribute the set names.
The exact teacher of a set is the mixture restricted to the matching modes (equal weights), a
``PerSampleMixture`` with ``-inf`` log-weights on the rest; the exact target of "positive ``P``
and not negative ``N``" restricts to modes that match ``P`` and do not match ``N``.

The student ``x = G(z, S)`` is one cross-attention block: a query from the noise ``z``, keys and
values from the embeddings of the tokens in ``S`` plus an always-present null token (the BOS of a
text encoder), the attention output added to the query (residual), then an MLP to ``x``.
NASA (SNOOPI, arXiv 2412.02687v3 eqs. 7-9) replaces the attention output by
``Z+ - alpha Z-``, ``Z+-`` the attention of the same queries to the positive / negative keys and
values (same projections).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...teachers.conditional_mixture import PerSampleMixture

__all__ = ["GRID", "CrossAttentionGenerator", "Grid", "mode_masses", "nasa_combine"]

GRID = 4  # rows = columns = 4: 16 modes, 8 attribute tokens
TOKENS = 2 * GRID


class Grid:
    """The 4x4 grid of modes: means ``(16, 2)`` (mode ``k = 4 r + c`` at ``(c h, -r h)``,
    centred), attributes ``(16, 8)`` multi-hot (its row and its column token)."""

    def __init__(self, spacing: float, std: float) -> None:
        r, c = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        r, c = r.reshape(-1), c.reshape(-1)
        centre = (GRID - 1) / 2
        self.means = torch.stack([(c - centre) * spacing, (centre - r) * spacing], 1).double()
        self.attrs = torch.cat([F.one_hot(r, GRID), F.one_hot(c, GRID)], 1).double()
        self.std = std

    def matches(self, sets: Tensor) -> Tensor:
        """``(B, 16)`` bool: mode ``k`` has every attribute in ``sets[b]`` (multi-hot ``(B, 8)``).
        The empty set matches every mode."""
        named = sets.double() @ self.attrs.T  # attributes of k that the set names
        return named >= sets.double().sum(1, keepdim=True) - 0.5

    def restricted(self, allowed: Tensor) -> PerSampleMixture:
        """The mixture restricted to ``allowed: (B, 16)`` (equal weights over the allowed modes)."""
        if not bool(allowed.any(1).all()):
            raise ValueError("every row must allow at least one mode")
        logw = torch.where(allowed, 0.0, -math.inf).double()
        logw = logw - torch.logsumexp(logw, 1, keepdim=True)
        b, k = allowed.shape
        eig = torch.full((k, 2), self.std**2, dtype=torch.float64)
        return PerSampleMixture(logw, self.means.expand(b, k, 2), eig)

    def law(self, sets: Tensor) -> PerSampleMixture:
        """The exact teacher of the token sets (the ``PerSampleTeacher`` builder)."""
        return self.restricted(self.matches(sets))

    def target(self, pos: Tensor, neg: Tensor) -> PerSampleMixture:
        """The exact law of "``pos`` and not ``neg``"."""
        return self.restricted(self.matches(pos) & ~self.matches(neg))

    def draw_sets(self, n: int, rng: torch.Generator) -> Tensor:
        """Training token sets ``(n, 8)``: empty, one row, one column or a row and a column,
        each with probability 1/4 (every set the evaluation uses as positive or negative)."""
        kind = torch.randint(0, 4, (n,), generator=rng)
        r = F.one_hot(torch.randint(0, GRID, (n,), generator=rng), GRID)
        c = F.one_hot(torch.randint(0, GRID, (n,), generator=rng), GRID)
        use_r, use_c = ((kind == 1) | (kind == 3))[:, None], (kind >= 2)[:, None]
        return torch.cat([r * use_r, c * use_c], 1).float()


def nasa_combine(z_pos: Tensor, z_neg: Tensor, alpha: float) -> Tensor:
    """SNOOPI eq. 9: ``Z_NASA = Z+ - alpha Z-`` (attention outputs, before the output projection
    ``W_o``, as eqs. 7-8 define ``Z = softmax(Q K^T / sqrt d) V``)."""
    return z_pos - alpha * z_neg


class CrossAttentionGenerator(nn.Module):
    """``x = G(z, S)``: ``z: (B, latent)``, ``S: (B, 8)`` multi-hot -> ``x: (B, 2)``.

    ``forward(z, S, neg=N, alpha=a)`` applies NASA with the negative set ``N`` (inference
    only: the block is trained with ``neg=None``)."""

    def __init__(self, latent: int, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be a multiple of heads={heads}")
        self.latent, self.heads = latent, heads
        self.query = nn.Sequential(
            nn.Linear(latent, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, width),
        )  # fmt: skip
        self.embed = nn.Parameter(torch.randn(TOKENS + 1, width))  # token 0: null
        self.w_q, self.w_k = nn.Linear(width, width), nn.Linear(width, width)
        self.w_v, self.w_o = nn.Linear(width, width), nn.Linear(width, width)
        self.head = nn.Sequential(
            nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2),
        )  # fmt: skip

    def sample_latent(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent, generator=rng)

    def _split(self, t: Tensor) -> Tensor:  # (B, L, W) -> (B, heads, L, W / heads)
        b, n, w = t.shape
        return t.reshape(b, n, self.heads, w // self.heads).transpose(1, 2)

    def attend(self, q: Tensor, sets: Tensor) -> Tensor:
        """``Z = softmax(Q K^T / sqrt d) V`` over the null token and the tokens of ``sets``;
        ``q: (B, W)`` (before ``W_q``) -> ``(B, W)`` (before ``W_o``)."""
        b = q.shape[0]
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool), sets > 0.5], 1)  # (B, 9)
        kv = self.embed.expand(b, -1, -1)
        qh = self._split(self.w_q(q)[:, None])
        kh, vh = self._split(self.w_k(kv)), self._split(self.w_v(kv))
        z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[:, None, None, :])
        return z.transpose(1, 2).reshape(b, -1)

    def forward(
        self, z: Tensor, cond: Tensor, neg: Tensor | None = None, alpha: float = 0.0
    ) -> Tensor:
        q = self.query(z)
        attn = self.attend(q, cond)
        if neg is not None:
            attn = nasa_combine(attn, self.attend(q, neg), alpha)
        return self.head(q + self.w_o(attn))


def mode_masses(x: Tensor, grid: Grid, pos: Tensor, neg: Tensor, radius: float) -> dict[str, float]:
    """Shares of samples ``x: (B, 2)`` (row ``b`` asked for ``pos[b]`` and not ``neg[b]``):
    ``neg_mass`` within ``radius`` of a mode matching ``neg``, ``target_mass`` within ``radius``
    of a target mode, ``off_mass`` farther than ``radius`` from every mode (blending); the rest
    sit on a mode that does not match ``pos``."""
    d = torch.cdist(x.double(), grid.means)  # (B, 16)
    near, k = d.min(1)
    on = near <= radius
    rows = torch.arange(len(x))
    is_neg = grid.matches(neg)[rows, k]
    is_target = (grid.matches(pos) & ~grid.matches(neg))[rows, k]
    return {
        "neg_mass": (on & is_neg).double().mean().item(),
        "target_mass": (on & is_target).double().mean().item(),
        "off_mass": (~on).double().mean().item(),
    }
