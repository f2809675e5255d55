"""A shared check for the teacher-folder tests (SD, SD3, SDXL, Flux): a damaged copy of a
pipeline folder is refused by ``load_latent_teacher`` with one line matching a pattern."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from scoredistill.teachers.diffusers import TeacherFolderError
from scoredistill.teachers.diffusers_latent import load_latent_teacher


def assert_damage_refused(
    folder: Path, tmp_path: Path, change: Callable[[Path], object], pattern: str
) -> None:
    """Copy ``folder`` to ``tmp_path/pipe``, apply ``change`` to the copy, and check that loading
    it raises one ``TeacherFolderError`` line matching ``pattern``."""
    shutil.copytree(folder, tmp_path / "pipe")
    change(tmp_path / "pipe")
    with pytest.raises(TeacherFolderError, match=pattern) as err:
        load_latent_teacher(tmp_path / "pipe")
    assert "\n" not in str(err.value)
