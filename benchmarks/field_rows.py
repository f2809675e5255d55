"""A picture of voxel fields seen from the ring: one row of raw renders per run folder, the
object's own renders on the last row (``docs/img/hifa_fields.png``)::

    OMP_NUM_THREADS=1 python benchmarks/field_rows.py runs/s33/views/sds-sd-field-s0 \\
        runs/s33/views/hifa-sd-field-s0 runs/s33/views/hifa-sd-field-rgb100-s0 \\
        --labels "SDS" "HiFA, lambda_rgb 0.1" "HiFA, lambda_rgb 100" --out docs/img/hifa_fields.png

Each run's ``samples.npz`` holds its final ring renders (``x``: flattened ``(C, S, S)`` images in
[-1, 1], ``azimuth`` in degrees); every ``--every``-th one is drawn, with the object rendered at
the same azimuths (``eval.views_sd.reference_ring``'s camera) as the truth row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from scoredistill.teachers.views_sd_data import ViewsDataConfig, render_object


def _images(x: np.ndarray) -> np.ndarray:
    """``(N, S, S, C)`` in [0, 1] from flattened ``(C, S, S)`` renders in [-1, 1]."""
    c = 3 if x.shape[1] % 3 == 0 else 1
    s = round((x.shape[1] / c) ** 0.5)
    img = x.reshape(len(x), c, s, s).transpose(0, 2, 3, 1)
    return np.clip((img + 1) / 2, 0, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--labels", nargs="+", default=None)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--elevation", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=Path("docs/img/hifa_fields.png"))
    args = ap.parse_args(argv)
    labels = args.labels or [r.name for r in args.runs]
    rows, az = [], None
    for run in args.runs:
        data = np.load(run / "samples.npz")
        idx = np.arange(0, len(data["x"]), args.every)
        rows.append(_images(data["x"][idx]))
        az = data["azimuth"][idx]
    cams = torch.as_tensor(az, dtype=torch.float64)
    truth = render_object(ViewsDataConfig(), cams, torch.full_like(cams, args.elevation))
    rows.append(_images(truth.flatten(1).numpy()))
    labels = [*labels, "the object"]
    fig, axes = plt.subplots(len(rows), len(az), figsize=(0.9 * len(az), 1.0 * len(rows)))
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        for j, img in enumerate(row):
            ax = axes[i, j]
            ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{az[j]:.0f}°", fontsize=7)
        axes[i, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
