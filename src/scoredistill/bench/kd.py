"""The KD suite: every ``scoredistill kd`` preset, 3 seeds, against the note's expected effect.

Per preset the table holds the mean ± std over seeds of the student, its reference (the method
the claim compares against), the no-teacher baseline and the teacher on the lead metric
(accuracy, or nDCG@10 for retrieval), ECE and agreement, next to the expected effect from
reference/knowledge_distillation.md d.2 (``EXPECTED``: each preset's claims, written beside the
preset in ``presets.kd`` and ``presets.kd_procedures``) and a verdict. ``DERIVED`` adds metrics
computed from a run's own ``metrics.json`` before the claims are checked.

Verdict rule. For a claim ``metric ⋈ against`` the per-seed paired difference
``d_s = metric_s − against_s`` (``against`` a metric name, ``"<preset>:<metric>"`` of another
preset's run with the same seed, or a constant) gives the mean ``d̄``
and standard error ``SE = std(d, ddof=1)/√n``:

- ``">"``  (better):          holds when ``d̄ > 2·SE`` and ``d̄ > 0``;
- ``"<"``  (lower):           holds when ``d̄ < −2·SE`` and ``d̄ < 0``;
- ``">="`` (not worse):       holds when ``d̄ ≥ −2·SE``;
- ``"~"``  (no difference):   holds when ``|d̄| ≤ 2·SE``.

Otherwise "does not hold here"; with one seed the verdict is "n/a (1 seed)".

The suite mixes two run families: method presets (``kd``) and procedure presets
(``kd-procedure``); :func:`family_of` tells them apart and :func:`table` writes the results.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import finished_run
from ..presets import kd as kd_presets
from ..presets import kd_procedures as procedure_presets
from ..presets.kd import Claim
from .runner import locked_cell

__all__ = [
    "DERIVED",
    "EXPECTED",
    "Claim",
    "family_of",
    "run_kd_suite",
    "suite_presets",
    "table",
    "verdict",
    "with_derived",
]

EXPECTED: dict[str, list[Claim]] = {**kd_presets.EXPECTED, **procedure_presets.EXPECTED}


def _fed_gap(m: dict[str, Any]) -> float | None:
    """|ALMA(method) − ALMA(uniform averaging)| of a federated run."""
    if "uniform_accuracy" not in m or "accuracy" not in m:
        return None
    return abs(m["accuracy"] - m["uniform_accuracy"])


def _gain_small_minus_large(m: dict[str, Any]) -> float | None:
    """KD gain of the smallest swept width minus that of the largest (``gain_w<width>`` keys)."""
    gains = {int(k[6:]): v for k, v in m.items() if k.startswith("gain_w") and k[6:].isdigit()}
    if len(gains) < 2:
        return None
    return gains[min(gains)] - gains[max(gains)]


DERIVED: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "fed_gap": _fed_gap,
    "gain_small_minus_large": _gain_small_minus_large,
}


def with_derived(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus every ``DERIVED`` metric that applies to it."""
    extra = {k: f(metrics) for k, f in DERIVED.items()}
    return {**metrics, **{k: v for k, v in extra.items() if v is not None}}


def verdict(diffs: list[float], kind: str) -> str:
    """The module docstring's rule on paired differences ``diffs`` (one per seed)."""
    if len(diffs) < 2:
        return "n/a (1 seed)"
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    ok = {
        ">": mean > 2 * se and mean > 0,
        "<": mean < -2 * se and mean < 0,
        ">=": mean >= -2 * se,
        "~": abs(mean) <= 2 * se,
    }[kind]
    return "holds" if ok else "does not hold here"


# ----------------------------------------------------------------------------- running
def family_of(preset: str) -> str:
    """The run family of a suite preset: ``"kd"`` (method) or ``"kd-procedure"``."""
    if preset in kd_presets.PRESETS:
        return "kd"
    if preset in procedure_presets.PROCEDURE_PRESETS:
        return "kd-procedure"
    raise ValueError(f"{preset!r} is no KD preset; valid: {', '.join(suite_presets())}")


def suite_presets(quick: bool = False) -> list[str]:
    """Every ``scoredistill kd`` preset, plus the procedures' presets that have a quick variant."""
    procedures = procedure_presets.PROCEDURE_PRESETS
    return [*kd_presets.PRESETS, *(n for n, p in procedures.items() if "quick" in p)]


def cell(family: str, preset: str, seed: int, sets: list[str], folder: Path) -> dict[str, Any]:
    """Metrics of one (preset, seed): read back when finished, else run (resuming); method
    presets share their teachers in ``<suite>/_teachers`` (a teacher depends on its task, not on
    the method)."""
    from ..runs import kd, kd_procedures

    finished = finished_run(folder)
    if finished is not None:
        return finished
    fam = kd.FAMILY if family == "kd" else kd_procedures.FAMILY
    resolved = fam.resolve(preset, [*sets, f"{fam.seed_key}={seed}"])
    if fam is kd.FAMILY:
        cache = folder.parent.parent / "_teachers"
        return locked_cell(
            folder,
            fam,
            resolved,
            lambda resume: kd.run_kd(resolved.config, folder, resume=resume, teacher_cache=cache),
        )
    return locked_cell(folder, fam, resolved, lambda resume: fam.run(resolved, folder, resume))


def folder(out: Path, preset: str, seed: int) -> Path:
    """``out/<preset>/seed-<S>`` (the layout docs/kd.md and the stored runs use)."""
    return out / preset / f"seed-{seed}"


def _lead(runs: list[dict[str, Any]]) -> str:
    """nDCG@10, else accuracy, else the first metric with a ``baseline_`` counterpart."""
    first = runs[0]
    for key in ("ndcg@10", "accuracy", *first):
        if key in first and f"baseline_{key}" in first:
            return key
    return "accuracy"


def _stat(runs: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    vals = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    if len(vals) != len(runs) or not vals:
        return None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _against(c: Claim, i: int, run: dict[str, Any], others: dict[str, list]) -> float | None:
    """The comparison value for seed index ``i``: a constant, a metric of the same run, or
    ``"<preset>:<metric>"`` of another preset's run with the same seed."""
    if not isinstance(c.against, str):
        return c.against
    preset, sep, metric = c.against.partition(":")
    if not sep:
        return run.get(c.against)
    other = others.get(preset, [])
    return other[i].get(metric) if i < len(other) else None


def _claims(
    preset: str, runs: list[dict[str, Any]], others: dict[str, list] | None = None
) -> list[dict[str, Any]]:
    out = []
    for c in EXPECTED.get(preset, []):
        pairs = [(r.get(c.metric), _against(c, i, r, others or {})) for i, r in enumerate(runs)]
        if any(a is None or b is None for a, b in pairs):
            out.append({"claim": c.text, "verdict": "not measured"})
            continue
        diffs = [a - b for a, b in pairs]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        out.append(
            {
                "claim": c.text,
                "metric": c.metric,
                "against": c.against,
                "kind": c.kind,
                "diff_mean": statistics.fmean(diffs),
                "diff_se": se,
                "verdict": verdict(diffs, c.kind),
            }
        )
    return out


def _summary(preset: str, runs: list[dict[str, Any]], others: dict[str, list]) -> dict[str, Any]:
    lead = _lead(runs)
    keys = {
        "student": lead,
        "reference": f"reference_{lead}",
        "baseline": f"baseline_{lead}",
        "teacher": f"teacher_{lead}",
        "ece": "ece",
        "agreement": "agreement",
    }
    stats = {name: _stat(runs, key) for name, key in keys.items()}
    return {"metric": lead, **stats, "claims": _claims(preset, runs, others)}


def _fmt(stat: tuple[float, float] | None, digits: int = 3) -> str:
    return "—" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def _markdown(presets: dict[str, Any], quick: bool, seeds: list[int] | None) -> str:
    n = len(next(iter(presets.values()))["runs"]) if presets else 0
    about = f"seeds {seeds}" if seeds is not None else f"{n} seed{'s' * (n != 1)}"
    lines = [
        f"# KD suite ({'quick' if quick else 'full'}; {about})",
        "",
        "Mean ± std over seeds. Verdict: paired per-seed difference vs 2 standard errors "
        "(`scoredistill.bench.kd` docstring).",
        "",
        "| preset | metric | student | reference | baseline | teacher | ECE | agreement "
        "| expected (note d.2) | Δ mean ± SE | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for name, s in presets.items():
        claims = s["claims"] or [{"claim": "—", "verdict": "—"}]
        for i, c in enumerate(claims):
            head = (
                [
                    name,
                    s["metric"],
                    *(
                        _fmt(s[k])
                        for k in ("student", "reference", "baseline", "teacher", "ece", "agreement")
                    ),
                ]
                if i == 0
                else ["", "", "", "", "", "", "", ""]
            )
            delta = f"{c['diff_mean']:+.3f} ± {c['diff_se']:.3f}" if "diff_mean" in c else "—"
            claim = c["claim"].replace("|", "\\|")  # a pipe would split the table cell
            lines.append("| " + " | ".join([*head, claim, delta, c["verdict"]]) + " |")
    return "\n".join(lines) + "\n"


def table(
    runs: dict[str, list[dict[str, Any]]], quick: bool, seeds: list[int] | None = None
) -> tuple[str, dict[str, Any]]:
    """The suite's ``results.md`` and ``results.json`` fields from ``{preset: [metrics per
    seed]}``: per preset the summary, its claims' verdicts (seeds paired across presets) and the
    runs with their ``DERIVED`` metrics."""
    derived = {name: [with_derived(m) for m in ms] for name, ms in runs.items()}
    presets = {name: {**_summary(name, ms, derived), "runs": ms} for name, ms in derived.items()}
    return _markdown(presets, quick, seeds), {"presets": presets}


def run_kd_suite(
    out: Path,
    *,
    quick: bool = False,
    seeds: tuple[int, ...] | list[int] = (0, 1, 2),
    presets: list[str] | None = None,
) -> dict[str, Any]:
    """``bench.run_suite("kd", …)``: ``presets`` (default: :func:`suite_presets`) × ``seeds``
    into ``out/<preset>/seed-<S>``; returns the results dict."""
    from .runner import run_suite

    return run_suite(
        "kd", Path(out), quick=quick, seeds=tuple(seeds), presets=tuple(presets or ()) or None
    )
