"""Benchmark suites of ``scoredistill optimize`` (``bench --suite sds3d`` / ``particles``).

``sds3d``: every ``*-views`` preset (methods × the view-biased and view-prompted teachers, the
per-camera ceiling and the reward-guided variant); Janus rate, front fraction, PSNR at held-out
cameras, occupancy IoU, wall time, mean ± std over seeds. ``particles``: SDS and VSD particles on
``digits`` and ``ring8`` with the exact-testbed metrics, next to exact samples of the same size.
Finished run folders are read back, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

from typing import Any

from ..eval.report import format_value, mean_std
from ..presets.optimize import PRESETS
from ..runs.optimize_report import KEYS_3D, KEYS_PARTICLES

__all__ = ["OPTIMIZE_SUITES", "table"]

OPTIMIZE_SUITES: dict[str, tuple[str, ...]] = {
    "sds3d": tuple(n for n in PRESETS if "-views" in n),
    "particles": tuple(n for n in PRESETS if "-particles-" in n),
}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"seeds": len(runs), **mean_std(runs)}


def _markdown(presets: dict[str, Any]) -> str:
    blocks: dict[str, list[str]] = {}
    for name, r in presets.items():
        views = "janus_rate" in r
        keys = (*KEYS_3D, "wall_s") if views else (*KEYS_PARTICLES, "wall_s")
        if views:
            head = "| preset | " + " | ".join(keys) + " |"
        else:
            head = "| preset | " + " | ".join(keys) + " | exact mode_tv | exact spread |"
        lines = blocks.setdefault(head, [head, "|---|" + "---:|" * (head.count("|") - 2)])
        cells = [f"{format_value(r[k])} ± {format_value(r[k + '_std'])}" for k in keys]
        if not views:
            cells += [format_value(r["exact_mode_tv"]), format_value(r["exact_spread_ratio"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n\n".join("\n".join(b) for b in blocks.values()) + "\n"


def table(runs: dict[str, list[dict[str, Any]]], quick: bool) -> tuple[str, dict[str, Any]]:
    """Mean ± std per preset; 3-D and particle presets in separate tables."""
    presets = {name: _summary(cells) for name, cells in runs.items()}
    return _markdown(presets), {"presets": presets}
