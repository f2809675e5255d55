"""Markdown tables of results (the README and ``baseline.md`` show them)."""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["baseline_markdown", "format_value"]

COLUMNS = (
    ("mmd", "MMD²↓"),
    ("mmd_local", "local MMD²↓"),
    ("sw2", "SW2↓"),
    ("energy", "energy↓"),
    ("mode_coverage", "coverage↑"),
    ("mode_tv", "mode TV↓"),
    ("spread_ratio", "spread→1"),
    ("within_3std", "≤3σ↑"),
    ("logp", "log p↑"),
    ("class_acc", "class acc↑"),
    ("forget_mass", "forget mass↓"),
    ("retain_acc", "retain acc↑"),
    ("wall_s", "wall s"),
)


def format_value(value: Any) -> str:
    """Short, fixed-width-ish formatting of a metric value."""
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.2e}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def baseline_markdown(result: dict[str, Any]) -> str:
    """The sampler × NFE table of a ``baseline.json`` result as GitHub markdown."""
    rows = result["rows"]
    cols = [(k, title) for k, title in COLUMNS if any(k in row for row in rows)]
    head = "| sampler | NFE | " + " | ".join(title for _, title in cols) + " |"
    rule = "|---|---:|" + "---:|" * len(cols)
    body = [
        f"| {row['sampler']} | {row['nfe']} | "
        + " | ".join(format_value(row.get(k, "")) for k, _ in cols)
        + " |"
        for row in rows
    ]
    title = (
        f"Teacher baseline on `{result['testbed']}` (schedule {result['schedule']}, "
        f"{result['n']} samples, seed {result['seed']}). `exact`: exact samples scored the same "
        "way (mean of 5 draws), the floor of each metric; `exact-std`: their standard deviation, "
        "the noise level for reading differences between rows."
    )
    return "\n".join([title, "", head, rule, *body, ""])


def mean_std(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and (sample) std over seeds of every numeric key of the first run: ``k``, ``k_std``."""
    out = {}
    for k in [k for k, v in runs[0].items() if isinstance(v, float | int)]:
        vals = [float(r[k]) for r in runs]
        out[k] = statistics.fmean(vals)
        out[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out
