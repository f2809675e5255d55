"""Distillation suites (``onestep``, ``fdistill``): each method's metrics, mean ± std over seeds,
next to the teacher's DDIM and DPM-Solver++(2M) rows at 1–16 NFE on the same testbed."""

from __future__ import annotations

from typing import Any

from ..eval.report import COLUMNS, format_value, mean_std
from ..presets.distill import PRESETS

__all__ = ["DISTILL_SUITES", "table"]


def _grid(methods: tuple[str, ...], testbeds: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{m}-{tb}" for tb in testbeds for m in methods if f"{m}-{tb}" in PRESETS)


_MAIN = ("dmd2", "dmd2-gan", "dmd", "vsd", "sid", "sim", "fdistill-js", "sfd")
DISTILL_SUITES: dict[str, tuple[str, ...]] = {
    # every method on every testbed (the README's leaderboard)
    "onestep": _grid(_MAIN, ("ring8", "grid25", "cond2d", "gmm64", "digits")),
    # f-distill's claim: forward-KL-like divergences keep the weights of rare modes
    "fdistill": _grid(
        ("dmd2", "fdistill-rkl", "fdistill-kl", "fdistill-js", "fdistill-sh"),
        ("ring8-unbalanced",),
    ),
}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return mean_std(
        [r | {"initial_mmd": r["initial"]["mmd"]} if "initial" in r else r for r in runs]
    )


def _teacher_rows(testbed_name: str, n: int) -> list[dict]:
    from ..eval.baseline import baseline_rows
    from ..teachers.testbeds import get_testbed

    rows, _ = baseline_rows(get_testbed(testbed_name), ("ddim", "dpmpp-2m"), (1, 2, 4, 8, 16), n, 0)
    return rows


def _mean_std(r: dict[str, Any], k: str) -> str:
    return f"{format_value(r[k])} ± {format_value(r[k + '_std'])}" if k in r else ""


def _markdown(testbeds: dict[str, Any]) -> str:
    titles = {}
    for k, t in COLUMNS:
        if k != "wall_s":
            titles[k] = t
        if k == "mode_tv":  # mode weights of blurred samples: where f-distill's claim shows
            titles["mode_tv_assigned"] = "assigned TV↓"
    titles["initial_mmd"] = "untrained MMD²"
    lines = []
    for testbed, block in testbeds.items():
        cols = [k for k in titles if any(k in r for r in block["methods"].values())]
        head = " | ".join(titles[k] for k in cols)
        lines += [f"### {testbed}", "", f"| row | NFE | {head} | wall s |"]
        lines.append("|---|---:|" + "---:|" * (len(cols) + 1))
        for name, r in block["methods"].items():
            cells = " | ".join(_mean_std(r, k) for k in cols)
            lines.append(f"| **{name}** | {r['nfe']:.0f} | {cells} | {r['wall_s']:.0f} |")
        for r in block["teacher"]:
            cells = " | ".join(format_value(r.get(k, "")) for k in cols)
            lines.append(f"| {r['sampler']} | {r['nfe']} | {cells} | {r['wall_s']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def table(runs: dict[str, list[dict[str, Any]]], quick: bool) -> tuple[str, dict[str, Any]]:
    """Per testbed: every preset's mean ± std beside the teacher's rows of the same sample size."""
    testbeds: dict[str, Any] = {}
    for preset, cells in runs.items():
        name = PRESETS[preset]["testbed"]
        block = testbeds.setdefault(name, {"methods": {}, "teacher": []})
        block["methods"][preset] = _summary(cells)
        if not block["teacher"]:
            block["teacher"] = _teacher_rows(name, int(cells[0]["n"]))
    return _markdown(testbeds), {"testbeds": testbeds}
