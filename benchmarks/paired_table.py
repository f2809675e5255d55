"""One markdown table from several ``paired_draws.py --json`` files.

Per run and metric, three paired differences on the compared draws (mean ± its standard error):
student − the teacher's best cell (and on how many draws the student is below), exact − teacher
(can these draws show *any* sampler below that cell? where a perfect student is level with it,
no student can be shown below it), and student − exact (can the student be told from a perfect
sampler?). A difference is *resolved* when it is at least two standard errors from 0 ("below" /
"above"), otherwise "level"::

    python benchmarks/paired_table.py runs/s42/*.h8.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paired_draws import _summary


def verdict(mean: float, se: float) -> str:
    """ "below" / "above" when ``mean`` is at least two standard errors from 0, else "level"."""
    if mean != 0 and abs(mean) >= 2 * se:
        return "below" if mean < 0 else "above"
    return "level"


def _diff(s: dict, name: str) -> str:
    mean, se = s[f"{name}_mean"], s[f"{name}_se"]
    return f"{mean:+.2g} ± {se:.1g} {verdict(mean, se)}"


def rows(payload: dict) -> list[str]:
    """The table rows of one file: one per metric."""
    summary, n = _summary(payload["draws"]), len(payload["draws"])  # files of any version
    draws = f"{payload['select']} / {n}" if payload.get("select") else f"same {n}"
    return [
        f"| {payload['run']} | {draws} | {k} | {_diff(s, 'diff')} ({s['draws_below']}/{n}) "
        f"| {_diff(s, 'exact_diff')} | {_diff(s, 'from_exact')} |"
        for k, s in summary.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    print(
        "| run | draws (selection / compared) | metric | student − teacher (draws below) "
        "| exact − teacher | student − exact |"
    )
    print("|---|---|---|---|---|---|")
    for path in args.files:
        print("\n".join(rows(json.loads(path.read_text()))))


if __name__ == "__main__":
    main()
