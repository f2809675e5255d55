"""Seed systems on exact testbeds (issue 14) as one run family: DD2, SiD-Protein, Distillation-DPO, …

A seed system is a paper's whole experiment, not one student trained with one objective: its own
testbed with exact ground truth, its baselines and the paper's claim as metrics. Each has a typed
config, a runner and a report (``SYSTEMS``); its presets are ``presets.systems.SYSTEM_PRESETS``.
:data:`FAMILY` resolves a preset through :func:`scoredistill.config.resolve` (unknown keys and bad
values raise :class:`~scoredistill.config.ConfigError` naming the key, before any work), runs, and
writes ``config.json``, ``metrics.json`` (with ``wall_s``) and ``report.md`` into ``out``.
Every system's config has ``steps`` and ``seed`` (``--steps``, ``--seed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import ConfigError, preset_items, resolve, to_dict
from ...io import atomic_write_json
from ...presets.systems import DESCRIPTIONS, SYSTEM_PRESETS
from ..family import Family, Resolved
from ..kd_procedures.proc_common import single_thread
from . import dd2, diffprotect, dpo, sid_protein

__all__ = ["FAMILY", "SYSTEMS", "System", "quick_sets", "run_system"]


@dataclass(frozen=True)
class System:
    """One seed system: its config type, ``run(cfg, out, resume) -> metrics`` and report."""

    config: type
    run: Callable[[Any, Path, bool], dict[str, Any]]
    report: Callable[[Any, dict[str, Any]], str]


SYSTEMS: dict[str, System] = {
    "dd2": System(dd2.DD2Config, dd2.procedure, dd2.report),
    "dpo": System(dpo.DPOConfig, dpo.procedure, dpo.report),
    "diffprotect": System(diffprotect.DiffProtectConfig, diffprotect.procedure, diffprotect.report),
    "sid_protein": System(sid_protein.SiDProteinConfig, sid_protein.procedure, sid_protein.report),
}
_NOT_FIELDS = ("system", "quick")  # preset keys that are not config fields


def quick_sets(name: str) -> list[str]:
    """Preset ``name``'s smoke overrides (its ``"quick"`` dict) as ``key=value`` strings."""
    return preset_items(dict(SYSTEM_PRESETS.get(name, {}).get("quick", {})))


def _resolve(name: str | None, sets: list[str]) -> Resolved:
    """Preset ``name`` + ``key=value`` sets -> the system's validated config (``extra``: the
    :class:`System`)."""
    if name not in SYSTEM_PRESETS:
        raise ConfigError(
            f"unknown system preset {name!r}; valid: {', '.join(sorted(SYSTEM_PRESETS))}"
        )
    preset = SYSTEM_PRESETS[name]
    system = SYSTEMS[preset["system"]]
    fields = {k: v for k, v in preset.items() if k not in _NOT_FIELDS}
    cfg, _ = resolve(system.config(), {name: fields}, name, sets)
    return Resolved(cfg, system, name)


def _run(resolved: Resolved, out: Path, resume: bool = False) -> dict[str, Any]:
    """Run a resolved system into ``out``; returns ``metrics.json``'s dict."""
    cfg, system, name = resolved.config, resolved.extra, resolved.preset
    single_thread()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {"preset": name, **to_dict(cfg)})
    start = time.perf_counter()
    metrics = system.run(cfg, out, resume)
    metrics = {"preset": name, **metrics, "wall_s": time.perf_counter() - start}
    atomic_write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(
        system.report(cfg, metrics) + f"\nWall time {metrics['wall_s']:.1f} s.\n"
    )
    return metrics


def run_system(
    name: str, sets: list[str], out: Path, resume: bool = False, *, quick: bool = False
) -> dict[str, Any]:
    """Run preset ``name`` with overrides ``sets`` into ``out``; returns ``metrics.json``'s dict."""
    resolved = _resolve(name, [*(quick_sets(name) if quick else []), *sets])
    return _run(resolved, out, resume)


FAMILY = Family(
    name="distill-system",
    help="seed systems on exact testbeds: DD2, SiD-Protein, Distillation-DPO, NASA, C-SDS, Diff-Protect",
    presets=SYSTEM_PRESETS,
    describe=DESCRIPTIONS.__getitem__,
    resolve=_resolve,
    run=_run,
    quick=quick_sets,
    steps_key="steps",
    seed_key="seed",
    steps_help="training (or attack) steps of the system's student",
)
