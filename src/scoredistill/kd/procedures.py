"""KD procedures as run presets: online KD, LM distillation, the fidelity sweep, DisWOT.

``PROCEDURE_PRESETS`` maps ``<procedure>-<task>`` to a plain dict: ``"procedure"`` names the
entry of ``PROCEDURES`` (config dataclass, runner, report), the other keys are config fields, and
``"quick"`` holds the overrides of the seconds-long smoke variant. ``run_procedure`` validates
``key=value`` overrides against the typed config (unknown keys and bad values raise
:class:`~scoredistill.config.ConfigError` naming the key), runs, and writes ``config.json``,
``metrics.json`` (headline metrics with ``baseline_*`` counterparts, ``wall_s``) and
``report.md`` (plus PNGs where a procedure draws one) into ``out``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, apply_overrides, from_dict, to_dict
from ..io import atomic_write_json
from . import autodistil, comd, cvdd, diswot, federated, lm, online, sweep
from .proc_common import single_thread

__all__ = ["PROCEDURES", "PROCEDURE_PRESETS", "Procedure", "resolve_procedure", "run_procedure"]


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

_FED_QUICK = {"n_clients": 3, "rounds": 2, "local_steps": 3, "distill_steps": 3}
_LM_QUICK = {
    "n_train": 64,
    "n_test": 64,
    "teacher_steps": 20,
    "steps": 10,
    "batch_size": 16,
    "language": {"length": 8},
}

PROCEDURE_PRESETS: dict[str, dict[str, Any]] = {
    # note d.2 item 2: MLP(256) + MLP(32) from scratch on make_classification, ~30 epochs
    "bdkd-online-classification": {
        "procedure": "online",
        "method": "bdkd",
        "task": "classification",
        "quick": {"steps": 20, "checkpoint_every": 10},
    },
    "dml-online-classification": {
        "procedure": "online",
        "method": "dml",
        "task": "classification",
        "quick": {"steps": 20, "checkpoint_every": 10},
    },
    # note d.2 item 17: GKD (TRL defaults β = 0.5, λ = 0.5) and MiniLLM (reverse KL, policy gradient)
    "gkd-markov": {"procedure": "lm", "method": "gkd", "quick": _LM_QUICK},
    "minillm-markov": {"procedure": "lm", "method": "minillm", "quick": _LM_QUICK},
    # the note's λ ∈ {0, 1} × β ∈ {0, 1} corners (forward / reverse KL; data / student samples)
    **{
        f"gkd-markov-{div}-{policy}": {
            "procedure": "lm",
            "method": "gkd",
            "beta": beta,
            "lmbda": lmbda,
            "quick": _LM_QUICK,
        }
        for div, beta in (("fkl", 0.0), ("rkl", 1.0))
        for policy, lmbda in (("offpolicy", 0.0), ("onpolicy", 1.0))
    },
    # note d.2 item 16: width {8, 32, 128} × T {1, 2, 5} × σ {0, 1, 2, 5} on digits
    "sweep-digits": {
        "procedure": "sweep",
        "task": "digits",
        "quick": {
            "widths": [8, 32],
            "temperatures": [2.0],
            "noises": [0.0, 5.0],
            "teacher_steps": 20,
            "steps": 10,
        },
    },
    # note d.2 item 10: 12 MLP candidates, one batch of 64 at init, short KD each
    "diswot-digits": {
        "procedure": "diswot",
        "task": "digits",
        "quick": {"n_candidates": 4, "teacher_steps": 20, "steps": 10},
    },
    # note d.2 items 13/14: 8 clients, Dirichlet α = 0.1, 20% proxy set, 10 rounds
    "knfu-digits": {"procedure": "federated", "method": "knfu", "quick": _FED_QUICK},
    "knfu-digits-alpha1": {
        "procedure": "federated",
        "method": "knfu",
        "dirichlet_alpha": 1.0,
        "quick": _FED_QUICK,
    },
    # EdgeFD: the proxy set gets as many pixel-shuffled (OOD) rows as half its size
    "edgefd-digits": {
        "procedure": "federated",
        "method": "edgefd",
        "ood_fraction": 0.5,
        "quick": _FED_QUICK,
    },
    # note d.2 item 12: committee of BN CNNs, IPC 10, 300 recovery steps, BSSL, T = 3
    "cvdd-digits": {
        "procedure": "cvdd",
        "task": "digits",
        "relabel_crops": 8,  # FKD-style: 8 stored views per image, each shifted ≤ 1 px
        "crop_pad": 1,
        "quick": {
            "committee_widths": [4, 4],
            "member_steps": 5,
            "ipc": 2,
            "recover_steps": 5,
            "student_steps": 5,
        },
    },
    # note d.2 item 15: assess / augment / retrain rounds with reverse transfer, 4 rounds
    "comd-digits": {
        "procedure": "comd",
        "task": "digits",
        "quick": {"pool_size": 40, "rounds": 2, "steps_per_round": 5, "teacher_steps": 20},
    },
    # note d.2 item 11: SuperMLP widths {16..128} x depths {1, 2}, K = 2 vs K = 1, sandwich KD
    "autodistil-digits": {
        "procedure": "autodistil",
        "task": "digits",
        "quick": {
            "widths": [8, 16],
            "super_steps": 5,
            "standalone_steps": 5,
            "teacher_steps": 20,
        },
    },
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update (nested config sections merge instead of replacing)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = _merge(out[key], value)
        out[key] = value
    return out


def resolve_procedure(name: str, sets: list[str], quick: bool = False) -> tuple[Procedure, Any]:
    """Preset ``name`` (+ its ``quick`` overrides) + ``key=value`` sets -> (procedure, config)."""
    if name not in PROCEDURE_PRESETS:
        raise ConfigError(
            f"unknown procedure preset {name!r}; valid: {', '.join(sorted(PROCEDURE_PRESETS))}"
        )
    preset = dict(PROCEDURE_PRESETS[name])
    proc = PROCEDURES[preset.pop("procedure")]
    fields = preset.pop("quick") if quick else {}
    preset.pop("quick", None)
    cfg = from_dict(proc.config, _merge(preset, fields))
    return proc, apply_overrides(cfg, sets)


def run_procedure(
    name: str, sets: list[str], out: Path, resume: bool = False, *, quick: bool = False
) -> dict[str, Any]:
    """Run preset ``name`` with overrides ``sets`` into ``out``; returns ``metrics.json``'s dict.

    Raises ``ConfigError`` (naming the key) before any work when an override is invalid.
    """
    proc, cfg = resolve_procedure(name, sets, quick)
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
