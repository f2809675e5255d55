"""The ``unet`` suite: students of a diffusers teacher (``distill-unet`` presets) beside the
teacher's best sampler at each NFE and the real-data floor, mean ± std over seeds."""

from __future__ import annotations

from typing import Any

from ..eval.report import format_value, mean_std
from ..presets.unet import PRESETS

__all__ = ["OPTIONAL_PRESETS", "UNET_PRESETS", "table"]

UNET_PRESETS = ("dmd2-unet", "sid-unet", "dmd2-4step-unet")
OPTIONAL_PRESETS = tuple(name for name in PRESETS if name not in UNET_PRESETS)
_KEYS = ("fd", "class_acc", "precision", "recall")


def _cell(r: dict[str, Any], k: str) -> str:
    if k not in r:
        return ""
    std = r.get(k + "_std")
    return format_value(r[k]) + (f" ± {format_value(std)}" if std is not None else "")


def table(runs: dict[str, list[dict[str, Any]]], quick: bool) -> tuple[str, dict[str, Any]]:
    """Students (mean ± std over seeds) above the teacher's best sampler per NFE (from the
    first run's rows: the teacher and its draws are the same in every run)."""
    students = {name: mean_std(cells) for name, cells in runs.items() if name in PRESETS}
    first = next(iter(runs.values()))[0]
    best = first.get("teacher_best", {})
    lines = [
        "| row | NFE | " + " | ".join(_KEYS) + " | sampling s | training s |",
        "|---|---:|" + "---:|" * (len(_KEYS) + 2),
    ]
    for name, r in students.items():
        cells = " | ".join(_cell(r, k) for k in (*_KEYS, "sample_s", "wall_s"))
        lines.append(f"| **{name}** | {r['nfe']:.0f} | {cells} |")
    for nfe, row in best.items():
        cells = " | ".join(_cell(row, k) for k in _KEYS)
        lines.append(
            f"| teacher best ({row['sampler']}, {row.get('spacing', '')}) | {nfe} | {cells} "
            f"| {_cell(row, 'wall_s')} | – |"
        )
    return "\n".join(lines) + "\n", {"students": students, "teacher_best": best}
