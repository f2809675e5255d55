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

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, preset_items, resolve, to_dict
from ..io import atomic_write_json

__all__ = [
    "Experiment",
    "Family",
    "Resolved",
    "experiment_dry_run",
    "preset_quick",
    "report_section",
    "resolve_experiment",
    "run_experiment",
    "single_thread",
]


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


# ---------------------------------------------------------------- experiment families
# KD procedures and seed systems are families whose presets each name one *experiment*: a
# config type, a runner and a report. These helpers are their shared resolve / run / quick.


@dataclass(frozen=True)
class Experiment:
    """A run whose work is one function: its config type, ``run(cfg, out, resume) -> metrics``
    and ``report(cfg, metrics) -> markdown``; ``networks(cfg)``: ``--dry-run``'s network report
    (``runs.dry_run.network_report`` of the networks it builds, untrained), None without one."""

    config: type
    run: Callable[[Any, Path, bool], dict[str, Any]]
    report: Callable[[Any, dict[str, Any]], str]
    networks: Callable[[Any], dict[str, Any]] | None = None


def experiment_dry_run(r: Resolved) -> dict[str, Any]:
    """``--dry-run``'s ``networks`` field for a family of :class:`Experiment` entries (the
    resolved ``extra``): ``{}`` for an entry without ``networks``."""
    networks = r.extra.networks
    return {} if networks is None else {"networks": networks(r.config)}


def single_thread() -> None:
    """Pin torch (and OpenMP children) to one thread: the CPU budget is one core per run."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(1)


def preset_quick(presets: Mapping[str, Mapping[str, Any]], name: str) -> list[str]:
    """Preset ``name``'s smoke overrides (its ``"quick"`` dict) as ``key=value`` strings."""
    return preset_items(dict(presets.get(name, {}).get("quick", {})))


def resolve_experiment(
    presets: Mapping[str, Mapping[str, Any]],
    experiments: Mapping[str, Experiment],
    kind: str,
    name: str | None,
    sets: list[str],
) -> Resolved:
    """Preset ``name`` (whose ``kind`` key names its entry of ``experiments``) + ``key=value``
    sets -> the validated config; ``extra`` is the :class:`Experiment`."""
    if name not in presets:
        raise ConfigError(f"unknown {kind} preset {name!r}; valid: {', '.join(sorted(presets))}")
    preset = presets[name]
    experiment = experiments[preset[kind]]
    fields = {k: v for k, v in preset.items() if k not in (kind, "quick")}
    cfg, _ = resolve(experiment.config(), {name: fields}, name, sets)
    return Resolved(cfg, experiment, name)


def run_experiment(resolved: Resolved, out: Path, resume: bool = False) -> dict[str, Any]:
    """Run a resolved experiment into ``out``: ``config.json``, then its work, then
    ``metrics.json`` (with ``preset`` and ``wall_s``) and ``report.md``; returns the metrics."""
    cfg, experiment, name = resolved.config, resolved.extra, resolved.preset
    single_thread()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {"preset": name, **to_dict(cfg)})
    start = time.perf_counter()
    metrics = experiment.run(cfg, out, resume)
    metrics = {"preset": name, **metrics, "wall_s": time.perf_counter() - start}
    atomic_write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(
        experiment.report(cfg, metrics) + f"\nWall time {metrics['wall_s']:.1f} s.\n"
    )
    return metrics
