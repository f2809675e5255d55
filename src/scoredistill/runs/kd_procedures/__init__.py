"""KD procedures as a run family: online KD, LM distillation, the fidelity sweep, DisWOT, …

A procedure is more than one student trained with one loss (two networks trained together, a
search over students, federated rounds, a distilled data set), so each has its own typed config,
runner and report (``PROCEDURES``); its presets are ``presets.kd_procedures.PROCEDURE_PRESETS``.
:data:`FAMILY` resolves a preset through :func:`scoredistill.config.resolve` (unknown keys and
bad values raise :class:`~scoredistill.config.ConfigError` naming the key, before any work),
runs, and writes ``config.json``, ``metrics.json`` (headline metrics with ``baseline_*``
counterparts, ``wall_s``) and ``report.md`` (plus PNGs where a procedure draws one) into ``out``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ...config import ConfigError
from ...presets.kd_procedures import DESCRIPTIONS, PROCEDURE_PRESETS
from ..family import (
    Experiment,
    Family,
    Resolved,
    experiment_dry_run,
    preset_quick,
    resolve_experiment,
    run_experiment,
)
from . import autodistil, comd, cvdd, diswot, federated, lm, online, sweep

__all__ = [
    "FAMILY",
    "PROCEDURES",
    "PROCEDURE_PRESETS",
    "Procedure",
    "quick_sets",
    "resolve_procedure",
    "run_procedure",
]

Procedure = Experiment  # one procedure: its config type, run(cfg, out, resume) and report

PROCEDURES: dict[str, Procedure] = {
    "online": Procedure(online.OnlineConfig, online.procedure, online.report, online.networks),
    "lm": Procedure(lm.LMDistillConfig, lm.procedure, lm.report, lm.networks),
    "sweep": Procedure(sweep.SweepConfig, sweep.procedure, sweep.report, sweep.networks),
    "diswot": Procedure(diswot.DisWOTConfig, diswot.procedure, diswot.report, diswot.networks),
    "federated": Procedure(
        federated.FedConfig, federated.procedure, federated.report, federated.networks
    ),
    "cvdd": Procedure(cvdd.CVDDConfig, cvdd.procedure, cvdd.report, cvdd.networks),
    "comd": Procedure(comd.CoMDConfig, comd.procedure, comd.report, comd.networks),
    "autodistil": Procedure(
        autodistil.AutoDistilConfig, autodistil.procedure, autodistil.report, autodistil.networks
    ),
}


def quick_sets(name: str) -> list[str]:
    """Preset ``name``'s smoke overrides (its ``"quick"`` dict) as ``key=value`` strings."""
    return preset_quick(PROCEDURE_PRESETS, name)


def _check_budget_keys(proc: str, cls: type, sets: list[str]) -> None:
    """``--steps`` / ``--seed`` reach ``steps`` / ``seed``: name the budget keys of a procedure
    that has no single ``steps`` (federated rounds, CV-DD stages, …)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    for item in sets:
        key = item.partition("=")[0].strip()
        if key in ("steps", "seed") and key not in fields:
            budget = [f for f in sorted(fields) if "steps" in f or "rounds" in f]
            raise ConfigError(
                f"procedure {proc!r} has no config key {key!r} (--{key}); set its budget with "
                f"--set on one of: {', '.join(budget)}"
            )


def _resolve(name: str | None, sets: list[str]) -> Resolved:
    """Preset ``name`` + ``key=value`` sets -> the procedure's validated config (``extra``: the
    :class:`Procedure`)."""
    if name in PROCEDURE_PRESETS:
        proc = PROCEDURE_PRESETS[name]["procedure"]
        _check_budget_keys(proc, PROCEDURES[proc].config, sets)
    return resolve_experiment(PROCEDURE_PRESETS, PROCEDURES, "procedure", name, sets)


def resolve_procedure(name: str, sets: list[str], quick: bool = False) -> tuple[Procedure, Any]:
    """Preset ``name`` (+ its ``quick`` overrides) + ``key=value`` sets -> (procedure, config)."""
    r = _resolve(name, [*(quick_sets(name) if quick else []), *sets])
    return r.extra, r.config


def run_procedure(
    name: str, sets: list[str], out: Path, resume: bool = False, *, quick: bool = False
) -> dict[str, Any]:
    """Run preset ``name`` with overrides ``sets`` into ``out``; returns ``metrics.json``'s dict.

    Raises ``ConfigError`` (naming the key) before any work when an override is invalid.
    """
    proc, cfg = resolve_procedure(name, sets, quick)
    return run_experiment(Resolved(cfg, proc, name), out, resume)


FAMILY = Family(
    name="kd-procedure",
    help="KD procedures: online KD, LM distillation, sweeps, search, federated, data distillation",
    presets=PROCEDURE_PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=_resolve,
    run=run_experiment,
    quick=quick_sets,
    steps_key="steps",
    seed_key="seed",
    steps_help="student steps (procedures with rounds or stages: --set their budget keys)",
    dry_run=experiment_dry_run,  # every procedure reports its networks
)
