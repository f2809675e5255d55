"""Figures of samples against a testbed's exact data distribution.

Three views, picked from the testbed: 2-D data over a heatmap of the exact log-density, images
as a tiled grid, and anything else projected on the exact first two principal axes of the data.
Figures are built with ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot), so nothing
changes the global backend and no figure is left registered.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..teachers.testbed import Testbed

__all__ = ["plot_samples", "save_panels", "save_testbed_plot", "save_training_curves"]

_MAX_IMAGES = 64
_GRID = 200  # heatmap resolution per axis
_LOGP_RANGE = 12.0  # nats shown below the density's maximum; lower is clipped
_CMAP = "tab10"


def _np(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1).numpy()


def _scatter(ax: Any, xy: np.ndarray, labels: Tensor | None, **kw: Any) -> None:
    """Scatter ``xy (N, 2)``, coloured by integer ``labels`` when given."""
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, c="tab:red", alpha=0.6, linewidths=0, **kw)
        return
    lab = labels.detach().cpu().numpy() % 10  # tab10 has ten colours; more ids cycle
    ax.scatter(xy[:, 0], xy[:, 1], s=3, c=lab, cmap=_CMAP, vmin=-0.5, vmax=9.5, linewidths=0, **kw)


def _box(testbed: Testbed, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis limits: the data's box, widened to the samples' 0.5-99.5% range, at most 3x wider."""
    truth = testbed.truth
    spread = 4 * truth.eigvals.max().sqrt().item()
    lo = (truth.means.min(0).values - spread).numpy()
    hi = (truth.means.max(0).values + spread).numpy()
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    finite = x[np.isfinite(x).all(1)]
    if len(finite):
        lo = np.minimum(lo, np.quantile(finite, 0.005, axis=0))
        hi = np.maximum(hi, np.quantile(finite, 0.995, axis=0))
    return np.maximum(lo, centre - 3 * half), np.minimum(hi, centre + 3 * half)


def _plot_2d(ax: Any, testbed: Testbed, x: np.ndarray, labels: Tensor | None) -> None:
    """Heatmap of the exact log-density on a box covering the data, samples on top."""
    truth = testbed.truth
    lo, hi = _box(testbed, x)
    gx, gy = np.linspace(lo[0], hi[0], _GRID), np.linspace(lo[1], hi[1], _GRID)
    grid = torch.as_tensor(np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2))
    logp = truth.log_prob(grid).reshape(_GRID, _GRID).numpy()
    ax.imshow(
        np.maximum(logp, logp.max() - _LOGP_RANGE),
        origin="lower",
        extent=(lo[0], hi[0], lo[1], hi[1]),
        cmap="Greys",
        aspect="auto",
    )
    _scatter(ax, x, labels)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    outside = int((~((x >= lo) & (x <= hi)).all(1)).sum())
    if outside:
        ax.text(0.02, 0.02, f"{outside} outside view", transform=ax.transAxes, fontsize=7)


def _plot_images(ax: Any, testbed: Testbed, x: np.ndarray, labels: Tensor | None) -> None:
    """Tile up to 64 images (values in [-1, 1]) into one grey mosaic, labels in the corners."""
    c, h, w = _chw(testbed.image_shape)
    n = min(len(x), _MAX_IMAGES)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    mosaic = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), -1.0)
    imgs = x[:n].reshape(n, c, h, w).transpose(0, 2, 3, 1)
    for i, img in enumerate(imgs):
        r, q = divmod(i, cols)
        mosaic[1 + r * (h + 1) : (r + 1) * (h + 1), 1 + q * (w + 1) : (q + 1) * (w + 1)] = img
    mosaic = (np.clip(mosaic, -1, 1) + 1) / 2
    ax.imshow(mosaic[..., 0] if c == 1 else mosaic, cmap="gray", vmin=0, vmax=1)
    if labels is not None:
        for i, lab in enumerate(labels[:n].tolist()):
            r, q = divmod(i, cols)
            ax.text(q * (w + 1) + 1, r * (h + 1) + 1.5, str(lab), color="tab:orange", fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])


def _chw(shape: tuple[int, ...] | None) -> tuple[int, int, int]:
    if shape is None or len(shape) not in (2, 3):
        raise ValueError(f"image_shape must be (H, W) or (C, H, W), got {shape}")
    return (1, *shape) if len(shape) == 2 else shape  # type: ignore[return-value]


_DENSE_PCA_MAX_DIM = 512  # above this, no (D, D) matrix is formed


def _top2_by_subspace_iteration(matvec: Any, dim: int, iters: int = 50, width: int = 6) -> Tensor:
    """Top-2 eigenvectors ``(D, 2)`` of a symmetric PSD operator given only ``matvec``
    (``(D, m) -> (D, m)``): block power iteration, then Rayleigh-Ritz. Memory O(D · width)."""
    q = torch.randn(dim, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(iters):
        q, _ = torch.linalg.qr(matvec(q))
    _, small = torch.linalg.eigh(q.T @ matvec(q))
    return q @ small[:, [-1, -2]]


def _principal_axes(testbed: Testbed) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean ``(D,)`` and top-2 principal axes ``(D, 2)`` of the mixture.

    The covariance is ``Σ_k w_k Σ_k + C^T W C`` (C: centred means). For a diagonal mixture in
    high dimension it is applied as an operator, never built (D = 100 000 would be 80 GB)."""
    truth = testbed.truth
    w, mu = truth.weights, truth.means
    mean = w @ mu
    centred = mu - mean
    if truth.eigvecs is None and truth.dim > _DENSE_PCA_MAX_DIM:
        diag = w @ truth.eigvals  # (D,): Σ_k w_k diag(var_k)

        def matvec(q: Tensor) -> Tensor:
            return diag[:, None] * q + centred.T @ (w[:, None] * (centred @ q))

        return mean.numpy(), _top2_by_subspace_iteration(matvec, truth.dim).numpy()
    cov = torch.einsum("k,kij->ij", w, truth.covariances) + centred.T @ (w[:, None] * centred)
    _, vecs = torch.linalg.eigh(cov)
    return mean.numpy(), vecs[:, [-1, -2]].numpy()


def _plot_pca(ax: Any, testbed: Testbed, x: np.ndarray, labels: Tensor | None) -> None:
    """Exact samples (grey) and ``x`` projected on the data's first two principal axes."""
    mean, axes = _principal_axes(testbed)
    rng = torch.Generator().manual_seed(0)
    n_ref = int(min(2000, max(200, 20_000_000 // testbed.truth.dim)))  # bounded memory
    ref = testbed.truth.sample(n_ref, rng=rng, dtype=torch.float64).numpy()
    ref_xy = (ref - mean) @ axes
    ax.scatter(ref_xy[:, 0], ref_xy[:, 1], s=3, c="0.7", linewidths=0, label="truth")
    _scatter(ax, (x - mean) @ axes, labels, label="samples")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")


def plot_samples(
    ax: Any,
    testbed: Testbed,
    x: Tensor,
    labels: Tensor | None = None,
    title: str | None = None,
) -> None:
    """Draw samples ``x: (N, *D)`` of ``testbed`` on a matplotlib ``ax``.

    D = 2: exact log-density heatmap plus scatter; image testbeds: a grid of up to 64 images;
    otherwise: exact samples (grey) and ``x`` on the first two principal components.
    ``labels: (N,)`` integer classes colour the points (or annotate the images).
    """
    arr = _np(x)
    if arr.shape[1] != testbed.dim:
        raise ValueError(
            f"x has {arr.shape[1]} values per sample; {testbed.name} has {testbed.dim}"
        )
    if testbed.image_shape is not None:
        _plot_images(ax, testbed, arr, labels)
    elif testbed.dim == 2:
        _plot_2d(ax, testbed, arr, labels)
    else:
        _plot_pca(ax, testbed, arr, labels)
    if title is not None:
        ax.set_title(title, fontsize=9)


def save_panels(
    testbed: Testbed,
    panels: Mapping[str, Tensor],
    path: str | Path,
    labels: Tensor | Mapping[str, Tensor] | None = None,
    suptitle: str | None = None,
) -> Path:
    """One subplot per entry of ``panels`` (title = key) saved as a PNG at ``path``.

    ``labels`` is one ``(N,)`` tensor for every panel or a dict keyed like ``panels``.
    """
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("panels is empty: give at least one name -> samples entry")
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.6 * cols, 3.6 * rows + (0.6 if suptitle else 0)), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, x) in zip(axes, panels.items(), strict=False):
        lab = labels.get(key) if isinstance(labels, Mapping) else labels
        plot_samples(ax, testbed, x, labels=lab, title=key)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(textwrap.fill(suptitle, 48 * cols), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    fig.clear()
    return path


def save_testbed_plot(testbed: Testbed, path: str | Path, n: int = 2000, seed: int = 0) -> Path:
    """PNG of ``n`` exact samples of ``testbed`` (coloured by class, else by mode)."""
    rng = torch.Generator().manual_seed(seed)
    x, comp = testbed.truth.sample(n, rng=rng, return_components=True)
    labels = testbed.truth.labels[comp] if testbed.conditional else testbed.modes[comp]
    return save_panels(
        testbed, {f"{testbed.name}: exact samples": x}, path, labels, testbed.description
    )


def save_training_curves(
    records: list[dict[str, Any]],
    path: str | Path,
    eval_keys: Sequence[str] = ("mmd", "mode_coverage", "spread_ratio"),
) -> Path:
    """Loss, diagnostic and exact-metric curves of a ``metrics.jsonl`` (list of records).

    Panels: the two players' losses (not progress metrics: DMD's surrogate is 0.5 mean g^2),
    ``|D_fake - D_real|`` per time bin (where teacher and critic still disagree), and the
    periodic exact evaluations (MMD², mode coverage, spread ratio).
    """
    from matplotlib.figure import Figure

    train = [r for r in records if not r.get("eval")]
    evals = [r for r in records if r.get("eval")]
    fig = Figure(figsize=(14, 3.6), dpi=100)
    axes = fig.subplots(1, 3)
    steps = [r["step"] for r in train]
    for key in ("generator_loss", "critic_loss"):
        axes[0].plot(steps, [r.get(key, np.nan) for r in train], label=key)
    bins = sorted({k for r in train for k in r if k.startswith("d_diff@")})
    for key in bins:
        axes[1].plot(steps, [r.get(key, np.nan) for r in train], label=key.split("@")[1])
    for key in eval_keys:
        axes[2].plot(
            [r["step"] for r in evals], [r.get(key, np.nan) for r in evals], "o-", label=key
        )
    axes[2].set_yscale("symlog", linthresh=1e-3)
    titles = ("losses", "mean |D_fake - D_real| by t", "exact metrics (EMA)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generator step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def save_image_grid(
    panels: Mapping[str, Tensor],
    path: str | Path,
    labels: Mapping[str, Tensor | None] | None = None,
    *,
    per_panel: int = 64,
) -> Path:
    """One square grid of images per entry (``x: (N, C, H, W)`` in [-1, 1]; the first
    ``per_panel`` shown, titled by key; labels, when given, sort the images by class)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * len(panels), 3.7), dpi=100)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (key, x) in zip(axes, panels.items(), strict=True):
        lab = (labels or {}).get(key)
        x = x[:per_panel]
        if lab is not None:
            x = x[torch.argsort(lab[:per_panel], stable=True)]
        side = math.ceil(math.sqrt(x.shape[0]))
        c, h, w = x.shape[1:]
        pad = torch.full((side * side - x.shape[0], c, h, w), -1.0)
        grid = torch.cat([x.float().clamp(-1, 1), pad]).reshape(side, side, c, h, w)
        img = grid.permute(0, 3, 1, 4, 2).reshape(side * h, side * w, c).add(1).div(2).numpy()
        ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None)
        ax.set_title(key, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
