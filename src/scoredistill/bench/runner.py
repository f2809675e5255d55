"""The one bench runner: every suite is presets × seeds of run families, then a table.

A cell is one run folder ``DIR/runs/<preset>-seed<S>`` made by the preset's family
(``runs.FAMILIES``); a finished folder (``metrics.json`` present) is read back, so re-running the
same command after an interruption continues the benchmark. ``--quick`` adds each family's smoke
overrides (``Family.quick``): seconds per run, it checks that the suite runs, not the numbers.
The suite's ``table(runs, quick)`` turns ``{preset: [metrics per seed]}`` into the markdown of
``results.md`` and the extra fields of ``results.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, to_dict
from ..io import atomic_write_json, finished_run, json_safe

__all__ = ["SEEDS", "Suite", "cell_folder", "locked_cell", "run_cell", "run_suite"]

SEEDS = (0, 1, 2)
Table = Callable[[dict[str, list[dict[str, Any]]], bool], tuple[str, dict[str, Any]]]
Cell = Callable[[str, str, int, list[str], Path], dict[str, Any]]


def locked_cell(out: Path, fam: Any, resolved: Any, run: Callable[[bool], Any]) -> Any:
    """``run(resume)`` under ``out``'s run lock, like any run folder: two bench commands on one
    ``--out`` cannot interleave, and a partial cell (killed) resumes from its last checkpoint
    (none: it restarts and its log restarts too) after the config check of ``--resume``."""
    from ..train.run_folder import open_run_folder

    resume = out.exists()
    with open_run_folder(out, to_dict(resolved.config), resume=resume, steps_key=fam.steps_key):
        return run(resume)


def run_cell(family: str, preset: str, seed: int, sets: list[str], out: Path) -> dict[str, Any]:
    """One run of ``preset`` at ``seed`` into ``out``, or the finished folder's metrics."""
    from ..runs import FAMILIES

    finished = finished_run(out)
    if finished is not None:
        return finished
    fam = FAMILIES[family]
    resolved = fam.resolve(preset, [*sets, f"{fam.seed_key}={seed}"])
    return locked_cell(out, fam, resolved, lambda resume: fam.run(resolved, out, resume))


def cell_folder(out: Path, preset: str, seed: int) -> Path:
    """Where a cell's run folder lives: ``out/runs/<preset>-seed<S>``."""
    return out / "runs" / f"{preset}-seed{seed}"


@dataclass(frozen=True)
class Suite:
    """A benchmark suite: its presets, the family that runs each, its table writer; ``cell``
    and ``folder`` replace the plain run and its folder (the KD suite shares teachers)."""

    presets: tuple[str, ...]
    family_of: Callable[[str], str]  # preset -> name in runs.FAMILIES
    table: Table
    about: str = ""
    cell: Cell = run_cell
    folder: Callable[[Path, str, int], Path] = cell_folder
    takes_set: bool = True  # False: --set is refused (presets of several families and configs)
    optional: tuple[str, ...] = ()  # runnable with --presets, not in the default set

    @property
    def accepted(self) -> tuple[str, ...]:
        return self.presets + self.optional


def run_suite(
    suite: str,
    out: Path,
    *,
    quick: bool = False,
    extra: list[str] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    presets: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run every preset of ``suite`` (or the given subset) for each seed; write ``results.json``
    (partial results after each preset, so a kill keeps them) and ``results.md``."""
    from ..runs import FAMILIES
    from . import SUITES

    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    spec = SUITES[suite]
    unknown = sorted(set(presets or ()) - set(spec.accepted))
    if unknown:
        valid = ", ".join(spec.accepted)
        raise ValueError(f"presets {unknown} are not in suite {suite!r}: {valid}")
    if extra and not spec.takes_set:
        raise ConfigError(f"--set is not supported by --suite {suite}; use each preset's fields")
    head: dict[str, Any] = {"suite": suite, "quick": quick, "seeds": list(seeds)}
    runs: dict[str, list[dict[str, Any]]] = {}
    for preset in presets or spec.presets:
        family = spec.family_of(preset)
        sets = [*(FAMILIES[family].quick(preset) if quick else []), *(extra or [])]
        runs[preset] = [
            spec.cell(family, preset, s, sets, spec.folder(out, preset, s)) for s in seeds
        ]
        atomic_write_json(out / "results.json", json_safe({**head, "runs": runs}))
    markdown, fields = spec.table(runs, quick)
    seeds_text = ",".join(str(s) for s in seeds)
    budget = " at the --quick smoke budget (checks the runs, not the numbers)" if quick else ""
    markdown = f"Suite `{suite}`, seeds {seeds_text}, mean ± std over seeds{budget}.\n\n{markdown}"
    results = {**head, **fields}
    atomic_write_json(out / "results.json", json_safe(results))
    (out / "results.md").write_text(markdown)
    print(markdown)
    print(json.dumps({"wrote": [str(out / "results.json"), str(out / "results.md")]}))
    return results
