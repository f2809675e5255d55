"""Intermediate-angle grids of few-step TrigFlow sampling (``sources.consistency``): the default
grid, grids given as ``sigma / sigma_d``, validation, the ``mid`` a run's scorer passes on, and
the ``student.sample_mid`` config key."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from scoredistill.cli import main
from scoredistill.config import ConfigError
from scoredistill.runs import FAMILIES
from scoredistill.runs.consistency import _student_draw
from scoredistill.sources.consistency import (
    MID_ANGLES,
    TrigFlowStudent,
    mid_from_ratios,
    trigflow_angles,
)
from scoredistill.teachers.testbeds import get_testbed

SD = 0.5


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_default_grid_is_mid_angles_after_the_top_angle(steps: int) -> None:
    assert trigflow_angles(steps, SD) == [math.atan(80.0 / SD), *MID_ANGLES[steps]]
    assert MID_ANGLES == {2: (1.1,), 3: (1.3, 1.0), 4: (1.3, 1.0, 0.6)}


def test_ratio_grid_maps_to_atan_and_back_to_the_ve_level() -> None:
    ratios = [3.0, 1.0, 0.25]
    mid = mid_from_ratios(ratios)
    assert mid[1] == pytest.approx(math.pi / 4, abs=1e-15)  # sigma = sigma_d: 45 degrees
    for sd in (0.1, 0.5, 2.0):  # the same angles are the same sigma / sigma_d on every sigma_d
        levels = [sd * math.tan(a) for a in trigflow_angles(4, sd, mid)[1:]]
        assert levels == pytest.approx([sd * r for r in ratios], rel=1e-12)
    with pytest.raises(ValueError, match="ratios"):
        mid_from_ratios([1.0, 0.0])


@pytest.mark.parametrize(
    "mid", [(1.0, 1.0, 0.5), (0.6, 1.0, 1.3), (1.3, 1.0, 0.0), (2.0, 1.0, 0.5)]
)
def test_grid_must_fall_strictly_inside_the_top_angle(mid: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="strictly decreasing"):
        trigflow_angles(4, SD, mid)


def _two_step_by_hand(student: TrigFlowStudent, z: torch.Tensor, b: float, eps: torch.Tensor):
    top = torch.full((len(z),), math.atan(80.0 / student.sigma_data))
    x = student(student.sigma_data * z, top)
    x_hat = math.cos(b) * x + math.sin(b) * student.sigma_data * eps
    return student(x_hat, torch.full((len(z),), b))


def test_a_runs_draw_with_mid_renoises_at_that_angle() -> None:
    testbed = get_testbed("ring8")  # unconditional: the draw is z, then the re-noise eps
    torch.manual_seed(0)
    student = TrigFlowStudent(2, SD, hidden=16, depth=2).requires_grad_(False)
    for b in (1.1, 0.4):
        x, labels, _ = _student_draw(student, testbed, 2, 64, 3, None if b == 1.1 else (b,))
        rng = torch.Generator().manual_seed(3 + 12345)
        z, eps = torch.randn(64, 2, generator=rng), torch.randn(64, 2, generator=rng)
        assert labels is None
        torch.testing.assert_close(x, _two_step_by_hand(student, z, b, eps), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "sets"),
    [
        ("scm-ring8", ["student.sample_mid=[1.0,0.5]"]),  # 2 steps take one angle
        ("rcm-ring8", ["student.sample_steps=3", "student.sample_mid=[0.5,1.0]"]),  # rising
        ("scm-ring8", ["student.sample_mid=[1.6]"]),  # above atan(80 / sigma_d) < pi / 2
        ("cd-ring8", ["student.sample_mid=[1.0]"]),  # CD samples on the teacher's schedule
        ("scm-ring8", ["student.sample_mid=[-1.0]"]),  # PositiveFloat
    ],
)
def test_bad_sample_mid_names_the_key(preset: str, sets: list[str]) -> None:
    fam = FAMILIES["distill-consistency"]
    with pytest.raises(ConfigError, match=re.escape("student.sample_mid")):
        fam.resolve(preset, sets)


def test_sample_mid_defaults_to_mid_angles_and_takes_a_valid_grid() -> None:
    fam = FAMILIES["distill-consistency"]
    assert fam.resolve("rcm-ring8", []).config.student.sample_mid == ()
    sets = ["student.sample_steps=4", "student.sample_mid=[1.1,0.6,0.3]"]
    assert fam.resolve("rcm-ring8", sets).config.student.sample_mid == (1.1, 0.6, 0.3)


@pytest.mark.slow
def test_a_run_scores_its_sample_steps_on_sample_mid(tmp_path: Path) -> None:
    """The same trained student (same seed, same 5 updates) at the default and at another
    2-step grid: the 1-step rows agree, the 2-step rows differ."""
    base = ["train.steps=5", "train.eval_samples=200", "eval.steps=[1,2]", "eval.levels=[0.5]",
            "eval.consistency_samples=8", 'eval.teacher_samplers=["ddim"]', "eval.teacher_nfe=[2]"]  # fmt: skip
    rows = {}
    for name, extra in (("default", []), ("low", ["student.sample_mid=[0.5]"])):
        sets = [a for s in [*base, *extra] for a in ("--set", s)]
        out = tmp_path / name
        assert main(["distill", "--preset", "scm-ring8", "--quick", *sets, "--out", str(out)]) == 0
        rows[name] = json.loads((out / "metrics.json").read_text())["by_steps"]
    assert rows["default"]["1"]["mmd"] == rows["low"]["1"]["mmd"]
    assert rows["default"]["2"]["mmd"] != rows["low"]["2"]["mmd"]
