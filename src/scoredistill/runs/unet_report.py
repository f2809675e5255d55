"""What a diffusers-teacher run writes besides its metrics: the exported pipeline, the image
grid teacher vs student, the training curves and ``report.md`` (the student beside the
teacher's sampler × NFE table and its best sampler at each NFE)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..eval.report import format_value

__all__ = ["placement", "write_outputs"]

_KEYS = ("fd", "precision", "recall", "class_acc")


def placement(metrics: dict[str, Any], key: str = "fd") -> str:
    """Where the student lands among the teacher's best rows per NFE (lower ``key`` is better)."""
    best = metrics.get("teacher_best", {})
    if key not in metrics or not best:
        return "No feature metrics for this teacher's image shape; compare the sample grids."
    value, nfe = metrics[key], metrics["nfe"]
    beaten = [int(k) for k, row in best.items() if value < row[key]]  # budgets, increasing
    head = f"The {nfe}-step student ({key.upper()} {format_value(value)})"
    if not beaten:
        first = next(iter(best.values()))
        return f"{head} is behind the teacher's best at every NFE (at {first['nfe']}: {format_value(first[key])})."
    top = max(beaten)
    row = best[str(top)]
    above = [int(k) for k in best if int(k) > top]
    tail = (
        f"; at {min(above)} NFE the teacher is better ({format_value(best[str(min(above))][key])})"
        if above
        else ""
    )
    return (
        f"{head} beats the teacher's best sampler with up to {top} NFE "
        f"({row['sampler']}, {row.get('spacing', '')} grid, {format_value(row[key])}){tail}."
    )


def _table(metrics: dict[str, Any], rows: list[dict[str, Any]], floor: dict[str, Any]) -> str:
    keys = [k for k in _KEYS if k in metrics]
    head = "| row | NFE | " + " | ".join(keys) + " | wall s |"
    lines = [head, "|---|---:|" + "---:|" * (len(keys) + 1)]
    cells = " | ".join(format_value(metrics[k]) for k in keys)
    lines.append(f"| **student (EMA)** | {metrics['nfe']} | {cells} | {metrics['sample_s']:.2f} |")
    for r in rows:
        cells = " | ".join(format_value(r.get(k, "")) for k in keys)
        name = f"teacher {r['sampler']} ({r.get('spacing', '')})"
        lines.append(f"| {name} | {r['nfe']} | {cells} | {r['wall_s']:.2f} |")
    if floor:
        cells = " | ".join(format_value(floor.get(k, "")) for k in keys)
        lines.append(f"| real data (floor) | – | {cells} | – |")
    return "\n".join(lines)


def _teacher_panel(
    teacher: Any, n: int, seed: int, nfe: int = 32
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from ..eval.image_baseline import draw_labels
    from ..samplers import sample

    rng = torch.Generator().manual_seed(seed + 999)
    labels = draw_labels(teacher, n, rng)
    with torch.no_grad():
        x, _ = sample(teacher, "dpmpp-2m", nfe, n, rng=rng, cond=labels)
    return x.reshape(n, *teacher.shape), labels


def _export_pixels(out: Path, cfg: Any, teacher: Any, ema: Any) -> str:
    """``OUT/pipeline`` (a stock pipeline) or ``OUT/student`` (network, stock scheduler and a
    README loop, where no stock pipeline fits: DiT, class-conditional flow)."""
    from ..export import export_run

    path = export_run(ema, teacher, out, steps=ema.nfe, note=f"scoredistill {cfg.method}")
    if path.name == "pipeline":
        return f"`{path}` (load with `DiffusionPipeline.from_pretrained`)"
    return f"`{path}` (no stock pipeline runs this student; its README has the loop)"


def write_outputs(
    out: Path,
    cfg: Any,
    teacher: Any,
    ema: Any,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    metrics: dict[str, Any],
    rows: list[dict[str, Any]],
    history: list[dict[str, Any]],
    *,
    export: Callable[[], str] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """``pipeline/`` (when ``cfg.export``), ``samples.png``, ``curves.png`` and ``report.md``.
    ``export() -> text`` replaces the pixel pipeline export (latent teachers); ``decode`` maps
    the teacher's samples to images (a VAE), ``x`` being images already."""
    from ..eval.plots import save_image_grid, save_training_curves

    exported = ""
    if cfg.export:
        try:
            exported = export() if export is not None else _export_pixels(out, cfg, teacher, ema)
        except ValueError as err:  # e.g. an EDM student with K > 1: no stock scheduler fits
            warnings.warn(f"export skipped: {err}", stacklevel=2)
            exported = f"not exported: {err}"
    panel_nfe = cfg.eval.panel_nfe
    tx, tl = _teacher_panel(teacher, 64, cfg.train.seed, panel_nfe)
    tx = decode(tx.flatten(1)) if decode is not None else tx
    panels = {
        f"teacher (DPM-Solver++ {panel_nfe} NFE)": tx,
        f"student ({ema.nfe} NFE, EMA)": x[:64].reshape(-1, *tx.shape[1:]),
    }
    save_image_grid(panels, out / "samples.png", dict(zip(panels, (tl, labels), strict=True)))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    save_training_curves(records, out / "curves.png", eval_keys=("fd", "precision", "recall"))
    floor: dict[str, Any] = {}
    if "fd" in metrics:
        from ..eval.features import real_floor

        floor = real_floor(int(metrics["n"]), seed=cfg.train.seed)
    evals = "\n".join(
        f"- step {h['step']}: " + ", ".join(f"{k} {format_value(h[k])}" for k in _KEYS if k in h)
        for h in history
    )
    text = "\n\n".join(
        [
            f"# {cfg.method}: {ema.nfe}-step student of `{teacher_path_text(cfg)}`",
            f"{cfg.train.steps} generator steps, batch {cfg.train.batch_size}, "
            f"{metrics['wall_s']:.0f} s. Pipeline: {exported or 'not requested'}.",
            "## Student vs the teacher's samplers (same sample count, seed-paired)",
            _table(metrics, rows, floor),
            "## Where the student lands",
            placement(metrics),
            "## Evaluations during training (EMA)",
            evals or "(none)",
        ]
    )
    (out / "report.md").write_text(text + "\n", encoding="utf-8")


def teacher_path_text(cfg: Any) -> str:
    bundled = "bundled digits text-to-image teacher" if hasattr(cfg, "prompts") else None
    return cfg.teacher or bundled or "bundled digits UNet"
