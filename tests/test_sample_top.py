"""``student.sample_top``: a TrigFlow student's first sampling angle.

- ``trigflow_angles`` starts at ``top`` (default ``atan(80 / sigma_d)``) and refuses a top
  outside ``(0, pi/2]`` or a grid that does not fall below it.
- A draw started at ``top`` is ``f(sigma_d z, top)`` (one step), then re-noises as before.
- Config: a top above pi/2, on CD, or below a step count's default grid fails naming the key;
  a run scores every step count from that top (its 1-step row is the by-hand value).
"""

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
from scoredistill.sources.consistency import MID_ANGLES, TrigFlowStudent, trigflow_angles
from scoredistill.teachers.testbeds import get_testbed

SD = 0.5


def test_angles_start_at_top_and_must_fall_below_it() -> None:
    assert trigflow_angles(2, SD) == trigflow_angles(2, SD, None, None)
    assert trigflow_angles(2, SD, None, 1.5) == [1.5, *MID_ANGLES[2]]
    assert trigflow_angles(1, SD, None, math.pi / 2) == [math.pi / 2]
    for bad in (0.0, -0.1, 1.6):
        with pytest.raises(ValueError, match=r"\(0, pi/2\]"):
            trigflow_angles(1, SD, None, bad)
    with pytest.raises(ValueError, match="strictly decreasing"):
        trigflow_angles(3, SD, None, 1.2)  # MID_ANGLES[3] = (1.3, 1.0) is not below 1.2


@pytest.mark.parametrize("top", [None, 1.5])
def test_a_draw_from_top_is_the_student_at_that_angle_then_the_usual_renoise(top) -> None:
    testbed = get_testbed("ring8")
    torch.manual_seed(0)
    student = TrigFlowStudent(2, SD, hidden=16, depth=2).requires_grad_(False)
    first = math.atan(80.0 / SD) if top is None else top
    rng = torch.Generator().manual_seed(3 + 12345)
    z, eps = torch.randn(64, 2, generator=rng), torch.randn(64, 2, generator=rng)
    one, _, _ = _student_draw(student, testbed, 1, 64, 3, None, top)
    x = student(SD * z, torch.full((64,), first))
    torch.testing.assert_close(one, x, rtol=0, atol=0)
    two, _, _ = _student_draw(student, testbed, 2, 64, 3, None, top)
    b = MID_ANGLES[2][0]
    want = student(math.cos(b) * x + math.sin(b) * SD * eps, torch.full((64,), b))
    torch.testing.assert_close(two, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "sets"),
    [
        ("sana-sprint-ring8", ["student.sample_top=1.6"]),  # above pi / 2
        ("cd-ring8", ["student.sample_top=1.5"]),  # CD samples on the teacher's schedule
        ("scm-ring8", ["student.sample_top=1.2"]),  # 3 and 4 steps' default grids start at 1.3
        ("scm-ring8", ["student.sample_top=-1"]),  # PositiveFloat
    ],
)
def test_bad_sample_top_names_the_key(preset: str, sets: list[str]) -> None:
    with pytest.raises(ConfigError, match=re.escape("student.sample_top")):
        FAMILIES["distill-consistency"].resolve(preset, sets)


def test_sample_top_defaults_to_none_and_takes_a_valid_angle() -> None:
    fam = FAMILIES["distill-consistency"]
    assert fam.resolve("sana-sprint-ring8", []).config.student.sample_top is None
    cfg = fam.resolve("sana-sprint-ring8", ["student.sample_top=1.5"]).config
    assert cfg.student.sample_top == 1.5


def test_a_run_scores_every_step_count_from_its_top(tmp_path: Path) -> None:
    base = ["train.steps=5", "train.eval_samples=200", "eval.steps=[1,2]", "eval.levels=[0.5]",
            "eval.consistency_samples=8", 'eval.teacher_samplers=["ddim"]', "eval.teacher_nfe=[2]"]  # fmt: skip
    rows = {}
    for name, extra in (("default", []), ("top", ["student.sample_top=1.2"])):
        sets = [a for s in [*base, *extra] for a in ("--set", s)]
        out = tmp_path / name
        assert main(["distill", "--preset", "scm-ring8", "--quick", *sets, "--out", str(out)]) == 0
        rows[name] = json.loads((out / "metrics.json").read_text())["by_steps"]
    for k in ("1", "2"):  # the same trained student, started elsewhere
        assert rows["default"][k]["mmd"] != rows["top"][k]["mmd"]
