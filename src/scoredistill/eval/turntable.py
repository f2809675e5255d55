"""A turntable figure: a 3-D result beside its ground truth at evenly spaced azimuths.

Built with ``matplotlib.figure.Figure`` on an Agg canvas (no pyplot), like ``eval.plots``, so the
global backend is left alone and no figure stays registered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..scene.cameras import DEFAULT_FOV, DEFAULT_RADIUS, Camera
from ..scene.field3d import VoxelField

__all__ = ["save_turntable", "turntable_images"]


def turntable_images(
    field: VoxelField,
    n: int = 8,
    elevation: float = 15.0,
    radius: float = DEFAULT_RADIUS,
    fov: float = DEFAULT_FOV,
) -> np.ndarray:
    """``(n, H, W, 3)`` colours in [0, 1] at azimuths ``360 k / n`` (k = 0..n-1)."""
    cams = [Camera(360.0 * k / n, elevation, radius, fov) for k in range(n)]
    with torch.no_grad():
        rgb = field.render_rgb(cams)
    return rgb.clamp(0, 1).permute(0, 2, 3, 1).cpu().double().numpy()


def save_turntable(
    path: str | Path,
    field: VoxelField,
    gt_field: VoxelField,
    n: int = 8,
    elevation: float = 15.0,
    title: str | None = None,
) -> Path:
    """Save a 2-row PNG strip: ``field`` (top) over ``gt_field`` (bottom) at ``n`` azimuths.

    Returns the path written (parent folders are created).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rows = {
        "result": turntable_images(field, n, elevation),
        "truth": turntable_images(gt_field, n, elevation),
    }
    fig = Figure(figsize=(1.3 * n, 2.9), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for k in range(n):
            ax = axes[r, k]
            ax.imshow(images[k], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{360.0 * k / n:.0f}°", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
