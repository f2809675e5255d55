"""``benchmarks/steps_table.py``: a student is "below" a teacher cell only when all three metrics
are lower on the same testbed and seed; a seed without teacher cells is refused (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def steps_table(bench):
    return bench("steps_table")


def _run(tmp: Path, name: str, seed: int, by_steps: dict) -> Path:
    run = tmp / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"testbed": "gmm64", "train": {"seed": seed}}))
    (run / "metrics.json").write_text(json.dumps({"by_steps": by_steps}))
    return run


def _m(mmd: float, local: float, sw2: float) -> dict:
    return {"mmd": mmd, "mmd_local": local, "sw2": sw2, "spread_ratio": 1.0}


def test_below_means_below_on_every_metric_of_the_paired_seed(steps_table, tmp_path, capsys):
    cells = [
        {"testbed": "gmm64", "seed": s, "nfe": n, "run": dict(zip(("mmd", "mmd_local", "sw2"), v, strict=True))}
        for s, n, v in [(0, 4, (0.01, 0.01, 0.1)), (0, 8, (0.001, 0.001, 0.05)),
                        (1, 4, (0.001, 0.001, 0.01)), (1, 8, (1e-4, 1e-4, 0.005))]
    ]  # fmt: skip
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    a = _run(tmp_path, "a", 0, {"2": _m(0.005, 0.005, 0.09), "4": _m(0.005, 0.02, 0.09)})
    b = _run(tmp_path, "b", 1, {"2": _m(0.005, 0.005, 0.09)})  # seed 1's cells are lower
    out = tmp_path / "rows.json"
    assert steps_table.main([str(a), str(b), "--cells", str(tmp_path / "cells.json"),
                             "--json", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())
    assert [(r["seed"], r["steps"], r["below_4"], r["below_8"]) for r in rows] == [
        (0, 2, True, False), (0, 4, False, False), (1, 2, False, False)]  # fmt: skip
    c = _run(tmp_path, "c", 2, {"2": _m(0.0, 0.0, 0.0)})
    assert steps_table.main([str(c), "--cells", str(tmp_path / "cells.json")]) == 2
    assert "seed 2" in capsys.readouterr().err
