"""The layering of pyproject.toml's import-linter contracts is enforced: a deliberately added
back-edge (a teacher importing the run layer) breaks the contracts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is a dev dependency")
def test_a_back_edge_breaks_the_layers(tree: Path) -> None:
    assert _lint(tree).returncode == 0  # the copy itself keeps every contract
    analytic = tree / "src" / "scoredistill" / "teachers" / "analytic.py"
    analytic.write_text(analytic.read_text() + "\nfrom ..runs import FAMILIES  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "scoredistill.teachers.analytic" in result.stdout
