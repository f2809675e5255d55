"""The run-family contract: what every ``scoredistill <family>`` command and bench cell calls.

A family is a plain record of functions, registered in :data:`scoredistill.runs.FAMILIES`:

- ``presets``: ``name -> dict`` of ``key=value`` overrides (nested dicts allowed);
- ``describe(name)``: the preset's one-line description (``scoredistill presets``);
- ``resolve(preset, sets)``: preset → typed config → ``--set`` overrides → validation, through
  :func:`scoredistill.config.resolve`; returns a :class:`Resolved` before any work starts;
- ``run(resolved, out, resume)``: does the work into the folder ``out``, returns the metrics
  dict that is also written to ``out/metrics.json``;
- ``quick(name)``: the overrides of the preset's smoke budget. ``--quick`` means one thing in
  every family and in the bench: *seconds per run; checks that the run works, not the numbers*;
- ``steps_key`` / ``seed_key``: the config keys behind ``--steps`` and ``--seed``;
- ``epilogue(out)``: what the CLI prints after the metrics (e.g. where the student lands);
- ``dry_run(resolved)``: fields printed by ``--dry-run`` beside the config (parameter counts,
  memory).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Family", "Resolved", "report_section"]


@dataclass(frozen=True)
class Resolved:
    """A validated run: its typed ``config`` and the family's extra (an objective instance, a
    procedure entry, or None); ``preset`` is the name it came from (None without one)."""

    config: Any
    extra: Any = None
    preset: str | None = None


@dataclass(frozen=True)
class Family:
    name: str
    help: str  # one line for ``scoredistill --help``
    presets: Mapping[str, Mapping[str, Any]]
    describe: Callable[[str], str]
    resolve: Callable[[str | None, list[str]], Resolved]
    run: Callable[[Resolved, Path, bool], dict[str, Any]]
    quick: Callable[[str], list[str]]
    steps_key: str = "train.steps"
    seed_key: str = "train.seed"
    steps_help: str = "optimizer steps"
    epilogue: Callable[[Path], str] = lambda out: ""  # text printed after the metrics
    dry_run: Callable[[Resolved], dict[str, Any]] = lambda r: {}  # extra --dry-run fields


def report_section(out: Path, heading: str = "## Where the student lands") -> str:
    """The part of ``out/report.md`` from ``heading`` on ("" when absent): an epilogue."""
    report = out / "report.md"
    text = report.read_text() if report.exists() else ""
    at = text.find(heading)
    return text[at:] if at >= 0 else ""
