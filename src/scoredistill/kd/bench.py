"""The KD benchmark: every ``scoredistill kd`` preset, 3 seeds, against the note's expected effect.

``run_kd_suite(out)`` runs each preset for each seed in ``out/<preset>/seed-<S>`` (a finished
run is read back from its ``metrics.json``, an unfinished one resumed), then writes
``results.json`` and ``results.md``: per preset the mean ± std over seeds of the student, its
reference (the method the claim compares against), the no-teacher baseline and the teacher on
the lead metric (accuracy, or nDCG@10 for retrieval), ECE and agreement, next to the expected
effect from reference/knowledge_distillation.md d.2 (``EXPECTED``, written in ``kd.expected``)
and a verdict.

Verdict rule. For a claim ``metric ⋈ against`` the per-seed paired difference
``d_s = metric_s − against_s`` (``against`` a metric name, ``"<preset>:<metric>"`` of another
preset's run with the same seed, or a constant) gives the mean ``d̄``
and standard error ``SE = std(d, ddof=1)/√n``:

- ``">"``  (better):          holds when ``d̄ > 2·SE`` and ``d̄ > 0``;
- ``"<"``  (lower):           holds when ``d̄ < −2·SE`` and ``d̄ < 0``;
- ``">="`` (not worse):       holds when ``d̄ ≥ −2·SE``;
- ``"~"``  (no difference):   holds when ``|d̄| ≤ 2·SE``.

Otherwise "does not hold here"; with one seed the verdict is "n/a (1 seed)".
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from .expected import EXPECTED, Claim, with_derived
from .presets import PRESETS, QUICK

__all__ = ["EXPECTED", "Claim", "run_kd_suite", "verdict"]


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
def _run_one(preset: str, seed: int, folder: Path, quick: bool) -> dict[str, Any]:
    """Metrics of one (preset, seed): read back when finished, else run (resuming)."""
    done = folder / "metrics.json"
    if done.exists():
        return json.loads(done.read_text())
    if preset in PRESETS:
        from .run import resolve, run_kd

        sets = [*(QUICK if quick else []), f"train.seed={seed}"]
        cache = folder.parent.parent / "_teachers"  # teachers shared across presets
        return run_kd(resolve(preset, sets), folder, resume=folder.exists(), teacher_cache=cache)
    from .procedures import run_procedure  # the procedures' presets (online KD, LM, sweep, …)

    return run_procedure(preset, [f"seed={seed}"], folder, resume=folder.exists(), quick=quick)


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


def _summary(preset: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
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
    return {"metric": lead, **stats, "claims": _claims(preset, runs)}


def _fmt(stat: tuple[float, float] | None, digits: int = 3) -> str:
    return "—" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# KD suite ({'quick' if results['quick'] else 'full'}; seeds {results['seeds']})",
        "",
        "Mean ± std over seeds. Verdict: paired per-seed difference vs 2 standard errors "
        "(`scoredistill.kd.bench` docstring).",
        "",
        "| preset | metric | student | reference | baseline | teacher | ECE | agreement "
        "| expected (note d.2) | Δ mean ± SE | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for name, s in results["presets"].items():
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


def suite_presets(quick: bool = False) -> list[str]:
    """Every ``scoredistill kd`` preset, plus the procedures' presets that have a quick variant."""
    names = list(PRESETS)
    try:
        from .procedures import PROCEDURE_PRESETS
    except ImportError:  # the procedures module is optional
        return names
    return names + [n for n, p in PROCEDURE_PRESETS.items() if "quick" in p]


def run_kd_suite(
    out: Path,
    *,
    quick: bool = False,
    seeds: tuple[int, ...] | list[int] = (0, 1, 2),
    presets: list[str] | None = None,
) -> dict[str, Any]:
    """Run ``presets`` (default: :func:`suite_presets`) × ``seeds``; write ``results.json`` and
    ``results.md`` in ``out``; return the results dict. ``quick`` uses each preset's ``QUICK``
    budget (seconds per run: checks the plumbing, not the claims)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"quick": quick, "seeds": list(seeds), "presets": {}}
    for name in presets or suite_presets(quick):
        runs = [with_derived(_run_one(name, s, out / name / f"seed-{s}", quick)) for s in seeds]
        results["presets"][name] = {**_summary(name, runs), "runs": runs}
        (out / "results.json").write_text(json.dumps(results, indent=2))
    all_runs = {name: r["runs"] for name, r in results["presets"].items()}
    for name, r in results["presets"].items():  # claims against other presets' runs
        r["claims"] = _claims(name, r["runs"], all_runs)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(_markdown(results))
    return results
