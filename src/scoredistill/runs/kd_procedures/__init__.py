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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import ConfigError, preset_items, resolve, to_dict
from ...io import atomic_write_json
from ...presets.kd_procedures import DESCRIPTIONS, PROCEDURE_PRESETS
from ..family import Family, Resolved
from . import autodistil, comd, cvdd, diswot, federated, lm, online, sweep
from .proc_common import single_thread

__all__ = [
    "FAMILY",
    "PROCEDURES",
    "PROCEDURE_PRESETS",
    "Procedure",
    "quick_sets",
    "resolve_procedure",
    "run_procedure",
]


@dataclass(frozen=True)
class Procedure:
    """One procedure: its config type, ``run(cfg, out, resume) -> metrics`` and report."""

    config: type
    run: Callable[[Any, Path, bool], dict[str, Any]]
    report: Callable[[Any, dict[str, Any]], str]


PROCEDURES: dict[str, Procedure] = {
    "online": Procedure(online.OnlineConfig, online.procedure, online.report),
    "lm": Procedure(lm.LMDistillConfig, lm.procedure, lm.report),
    "sweep": Procedure(sweep.SweepConfig, sweep.procedure, sweep.report),
    "diswot": Procedure(diswot.DisWOTConfig, diswot.procedure, diswot.report),
    "federated": Procedure(federated.FedConfig, federated.procedure, federated.report),
    "cvdd": Procedure(cvdd.CVDDConfig, cvdd.procedure, cvdd.report),
    "comd": Procedure(comd.CoMDConfig, comd.procedure, comd.report),
    "autodistil": Procedure(autodistil.AutoDistilConfig, autodistil.procedure, autodistil.report),
}
_NOT_FIELDS = ("procedure", "quick")  # preset keys that are not config fields


def quick_sets(name: str) -> list[str]:
    """Preset ``name``'s smoke overrides (its ``"quick"`` dict) as ``key=value`` strings."""
    return preset_items(dict(PROCEDURE_PRESETS.get(name, {}).get("quick", {})))


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
    if name not in PROCEDURE_PRESETS:
        raise ConfigError(
            f"unknown procedure preset {name!r}; valid: {', '.join(sorted(PROCEDURE_PRESETS))}"
        )
    preset = PROCEDURE_PRESETS[name]
    proc = PROCEDURES[preset["procedure"]]
    _check_budget_keys(preset["procedure"], proc.config, sets)
    fields = {k: v for k, v in preset.items() if k not in _NOT_FIELDS}
    cfg, _ = resolve(proc.config(), {name: fields}, name, sets)
    return Resolved(cfg, proc, name)


def _run(resolved: Resolved, out: Path, resume: bool = False) -> dict[str, Any]:
    """Run a resolved procedure into ``out``; returns ``metrics.json``'s dict."""
    cfg, proc, name = resolved.config, resolved.extra, resolved.preset
    single_thread()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {"preset": name, **to_dict(cfg)})
    start = time.perf_counter()
    metrics = proc.run(cfg, out, resume)
    metrics = {"preset": name, **metrics, "wall_s": time.perf_counter() - start}
    atomic_write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(
        proc.report(cfg, metrics) + f"\nWall time {metrics['wall_s']:.1f} s.\n"
    )
    return metrics


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
    return _run(Resolved(cfg, proc, name), out, resume)


FAMILY = Family(
    name="kd-procedure",
    help="KD procedures: online KD, LM distillation, sweeps, search, federated, data distillation",
    presets=PROCEDURE_PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=_resolve,
    run=_run,
    quick=quick_sets,
    steps_key="steps",
    seed_key="seed",
    steps_help="student steps (procedures with rounds or stages: --set their budget keys)",
)
