"""Seed systems on exact testbeds (issue 14) as one run family: DD2, SiD-Protein, Sparse3D, …

A seed system is a paper's whole experiment, not one student trained with one objective: its own
testbed with exact ground truth, its baselines and the paper's claim as metrics. Each has a typed
config, a runner and a report (``SYSTEMS``); its presets are ``presets.systems.SYSTEM_PRESETS``.
:data:`FAMILY` resolves a preset through :func:`scoredistill.config.resolve` (unknown keys and bad
values raise :class:`~scoredistill.config.ConfigError` naming the key, before any work), runs, and
writes ``config.json``, ``metrics.json`` (with ``wall_s``) and ``report.md`` into ``out``.
Every system's config has ``steps`` and ``seed`` (``--steps``, ``--seed``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...presets.systems import DESCRIPTIONS, SYSTEM_PRESETS
from ..family import (
    Experiment,
    Family,
    Resolved,
    experiment_dry_run,
    preset_quick,
    resolve_experiment,
    run_experiment,
)
from . import dd2, diffprotect, diffprotect_sd, dpo, nasa, sid_protein, sparse3d
from . import dry_run as dr

__all__ = ["FAMILY", "SYSTEMS", "System", "quick_sets", "run_system"]

System = Experiment  # one seed system: its config type, run(cfg, out, resume) and report

SYSTEMS: dict[str, System] = {
    "dd2": System(dd2.DD2Config, dd2.procedure, dd2.report, dr.dd2_networks),
    "dpo": System(dpo.DPOConfig, dpo.procedure, dpo.report, dr.dpo_networks),
    "diffprotect": System(
        diffprotect.DiffProtectConfig,
        diffprotect.procedure,
        diffprotect.report,
        dr.diffprotect_networks,
    ),
    "sid_protein": System(
        sid_protein.SiDProteinConfig,
        sid_protein.procedure,
        sid_protein.report,
        dr.sid_protein_networks,
    ),
    "nasa": System(nasa.NASAConfig, nasa.procedure, nasa.report, dr.nasa_networks),
    "diffprotect_sd": System(
        diffprotect_sd.DiffProtectSDConfig, diffprotect_sd.procedure, diffprotect_sd.report
    ),
    "sparse3d": System(
        sparse3d.Sparse3DConfig, sparse3d.procedure, sparse3d.report, dr.sparse3d_networks
    ),
}


def quick_sets(name: str) -> list[str]:
    """Preset ``name``'s smoke overrides (its ``"quick"`` dict) as ``key=value`` strings."""
    return preset_quick(SYSTEM_PRESETS, name)


def _resolve(name: str | None, sets: list[str]) -> Resolved:
    """Preset ``name`` + ``key=value`` sets -> the system's validated config (``extra``: the
    :class:`System`)."""
    return resolve_experiment(SYSTEM_PRESETS, SYSTEMS, "system", name, sets)


def run_system(
    name: str, sets: list[str], out: Path, resume: bool = False, *, quick: bool = False
) -> dict[str, Any]:
    """Run preset ``name`` with overrides ``sets`` into ``out``; returns ``metrics.json``'s dict."""
    resolved = _resolve(name, [*(quick_sets(name) if quick else []), *sets])
    return run_experiment(resolved, out, resume)


def _dry_run(r: Resolved) -> dict[str, Any]:
    """``--dry-run``'s ``networks`` field (``runs.systems.dry_run``); ``networks_note`` for a
    system whose networks load from a folder (``diffprotect_sd``)."""
    if r.extra.networks is None:
        name = next(k for k, s in SYSTEMS.items() if s is r.extra)
        return {"networks_note": dr.NOT_REPORTED[name]}
    return experiment_dry_run(r)


FAMILY = Family(
    name="distill-system",
    help="seed systems on exact testbeds: DD2, SiD-Protein, Distillation-DPO, NASA, Diff-Protect, "
    "Sparse3D",
    presets=SYSTEM_PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=_resolve,
    run=run_experiment,
    quick=quick_sets,
    steps_key="steps",
    seed_key="seed",
    steps_help="training (or attack) steps of the system's student",
    dry_run=_dry_run,
)
