"""Figures and ``report.md`` of an ``optimize`` run (``optimize.run_optimize``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..eval.report import format_value

__all__ = ["KEYS_3D", "KEYS_PARTICLES", "save_figure", "write_report"]

KEYS_3D = ("janus_rate", "front_fraction", "psnr", "iou")
KEYS_PARTICLES = ("mode_coverage", "mode_tv", "spread_ratio", "mmd", "logp")
_TITLES = {
    "janus_rate": "Janus rate↓",
    "front_fraction": "front fraction (truth 0.25)",
    "psnr": "PSNR dB↑",
    "iou": "IoU↑",
    "mode_coverage": "coverage↑",
    "mode_tv": "mode TV↓",
    "spread_ratio": "spread→1",
    "mmd": "MMD²↓",
    "logp": "log p↑",
}


def save_figure(out: Path, cfg: Any, testbed: Any, source: torch.nn.Module) -> Path:
    """``turntable.png`` (3-D: result over ground truth at 8 azimuths) or ``samples.png``."""
    if cfg.testbed == "views":
        from ..eval.turntable import save_turntable

        reward = f" + reward {cfg.reward.weight:g}" if cfg.reward.weight > 0 else ""
        title = f"{cfg.method}{reward} ({cfg.teacher} teacher): result over ground truth"
        return save_turntable(
            out / "turntable.png", source, testbed.gt_field, n=8, elevation=testbed.elevation,
            title=title,
        )  # fmt: skip
    from ..eval.plots import save_panels

    rng = torch.Generator().manual_seed(cfg.train.seed + 2)
    x = source.theta.detach().double()
    exact = testbed.truth.sample(len(x), rng=rng, dtype=torch.float64)
    panels = {f"{cfg.method}: {len(x)} particles": x, f"{len(x)} exact samples": exact}
    return save_panels(testbed, panels, out / "samples.png")


def _table(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    keys = tuple(k for k in keys if any(k in r for r in rows))
    lines = ["| step | " + " | ".join(_TITLES[k] for k in keys) + " |"]
    lines.append("|---:|" + "---:|" * len(keys))
    for r in rows:
        cells = " | ".join(format_value(r[k]) if k in r else "" for k in keys)
        lines.append(f"| {r['step']} | {cells} |")
    return lines


def write_report(out: Path, cfg: Any, metrics: dict[str, Any], history: list[dict]) -> None:
    """``report.md``: the objective, the metric table over steps and what the figure shows."""
    views = cfg.testbed == "views"
    rows = [{"step": 0, **metrics["initial"]}, *history, {"step": cfg.train.steps, **metrics}]
    lines = [
        f"# {cfg.method} on {cfg.testbed} ({cfg.teacher} teacher)",
        "",
        f"Objective: `{cfg.objective}`"
        + (f"; reward weight {cfg.reward.weight}" if cfg.reward.weight else ""),
        "",
        *_table(rows, KEYS_3D if views else KEYS_PARTICLES),
        "",
        f"Wall time {metrics['wall_s']:.1f} s for {cfg.train.steps} steps.",
        "",
    ]
    if views:
        lines += [
            "Janus rate: fraction of held-out sweep views whose nearest ground-truth render is "
            "more than 45° of azimuth away (ground truth: 0). Figure: `turntable.png`.",
        ]
    else:
        ref = ", ".join(
            f"{_TITLES[k]} {format_value(metrics[f'exact_{k}'])} ± "
            f"{format_value(metrics[f'exact_{k}_std'])}"
            for k in ("mode_tv", "spread_ratio", "mode_coverage")
        )
        lines += [
            f"Exact samples of the same size ({cfg.source.n_particles}, mean ± std over 32 "
            f"draws): {ref}. Figure: `samples.png`.",
        ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
