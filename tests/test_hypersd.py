"""Hyper-SD TSCD (objectives/hypersd.py): segment boundaries, the exact segment target, the
k = 1 limit (CD), the boundary condition at segment starts, the run family.

The exact oracle is a single Gaussian ``N(mu, c^2 I)``, whose PF-ODE map is affine and written by
hand in the VE view (``x = x_t / alpha``, ``s = sigma / alpha``; tests/test_pf_ode.py):

    Phi(x, s -> s') = mu + (x - mu) sqrt(c^2 + s'^2) / sqrt(c^2 + s^2).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from scoredistill.cli import main
from scoredistill.config import ConfigError
from scoredistill.objectives.cd import CD
from scoredistill.objectives.hypersd import HyperSD, segment_boundary, to_boundary
from scoredistill.runs import FAMILIES
from scoredistill.sources.consistency import BoundaryConsistency
from scoredistill.teachers.analytic import GaussianMixtureTeacher

MU, C, SD = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.3, 0.9
D64 = torch.float64


def _gaussian(schedule: str = "edm") -> GaussianMixtureTeacher:
    return GaussianMixtureTeacher(
        MU[None].numpy(), np.ones(1), stds=np.array([C]), schedule=schedule
    )


def _data(n: int, seed: int = 0) -> torch.Tensor:
    return MU + C * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=D64)


def _phi(x_t, t, t_b, schedule, clean_end):
    """The hand-written PF-ODE map ``x_t -> x_{t_b}`` (``clean_end``: to sigma = 0)."""
    a, s = (c[:, None] for c in schedule.alpha_sigma(t))
    a_b, s_b = (c[:, None] for c in schedule.alpha_sigma(t_b))
    a_b = torch.where(clean_end[:, None], torch.ones_like(a_b), a_b)
    s_b = torch.where(clean_end[:, None], torch.zeros_like(s_b), s_b)
    ratio = torch.sqrt(C**2 + (s_b / a_b) ** 2) / torch.sqrt(C**2 + (s / a) ** 2)
    x_b = MU + (x_t / a - MU) * ratio
    return a_b * x_b


def _exact_segment_student(obj: HyperSD, k: int, schedule):
    """The clean estimate ``g`` whose DDIM step to the segment end is the exact map:
    ``a_b g + s_b (x - a g) / s = Phi``, solved for ``g``. ``b`` read off ``t`` alone is one
    segment late at inner boundaries, where the loss only calls the target and the map to
    ``t_b = t`` is the identity whatever ``g`` is; at ``t_min`` it is ``Phi(x, t_min -> 0)``."""
    ts = obj.cd.times(schedule)

    def g(x_t, t, cond=None):
        n = (ts[None, :] - t[:, None]).abs().argmin(1)
        b = segment_boundary(n, obj.cd.grid, k)
        clean = b == obj.cd.grid
        y = _phi(x_t, t, ts[b], schedule, clean)
        a, s = (c[:, None] for c in schedule.alpha_sigma(t))
        a_b, s_b = (c[:, None] for c in schedule.alpha_sigma(ts[b]))
        a_b = torch.where(clean[:, None], torch.ones_like(a_b), a_b)
        s_b = torch.where(clean[:, None], torch.zeros_like(s_b), s_b)
        return (y - s_b * x_t / s) / (a_b - s_b * a / s)

    return g


def test_segment_boundary_is_the_next_multiple_of_the_segment_length() -> None:
    n = torch.tensor([0, 5, 9, 10, 15, 20, 35, 39, 40])
    assert segment_boundary(n, 40, 4).tolist() == [10, 10, 10, 20, 20, 30, 40, 40, 40]
    for k in (1, 2, 4, 8):
        length = 40 // k
        expect = [min(m for m in range(length, 41, length) if m > i) for i in range(40)]
        assert segment_boundary(torch.arange(40), 40, k).tolist() == expect
    assert segment_boundary(torch.arange(40), 40, 1).eq(40).all()  # k = 1: every n -> t_min


@pytest.mark.parametrize("schedule", ["edm", "vp-cosine"])
def test_segment_target_of_the_exact_teacher_is_the_exact_map_to_the_boundary(schedule) -> None:
    teacher = _gaussian(schedule)
    obj = HyperSD(cd=CD(grid=40, skip=2, solver="exact"), segments=(4,), stage_steps=())
    ts = obj.cd.times(teacher.schedule)
    g = _exact_segment_student(obj, 4, teacher.schedule)
    n = torch.arange(0, 40, 2)  # every start index
    x_t = _data(len(n), 3) * teacher.schedule.alpha_sigma(ts[n])[0][:, None]
    x_t = x_t + 0.7 * teacher.schedule.alpha_sigma(ts[n])[1][:, None]  # off the data manifold
    b = segment_boundary(n, 40, 4)
    y = obj.target_point(x_t, ts[n], ts[n + 2], b, target=g, teacher=teacher, cond=None)
    exact = _phi(x_t, ts[n], ts[b], teacher.schedule, b == 40)
    # the exact PF-ODE map is solved to rtol = atol = 1e-9; 1e-7 leaves 100x of that
    torch.testing.assert_close(y, exact, rtol=1e-7, atol=1e-7)
    loss = obj.loss(_data(64, 4), None, student=g, target=g, teacher=teacher,
                    rng=torch.Generator().manual_seed(5))  # fmt: skip
    assert loss.value.item() < 1e-14  # only solver error, (1e-7)^2
    # the k = 1 consistency function is not a 4-segment fixed point: the check can fail
    wrong = _exact_segment_student(obj, 1, teacher.schedule)
    loss = obj.loss(_data(64, 4), None, student=wrong, target=wrong, teacher=teacher,
                    rng=torch.Generator().manual_seed(5))  # fmt: skip
    assert loss.value.item() > 1e-6  # 4e-4 (vp-cosine) to 1e-1: far above solver error


def _student() -> BoundaryConsistency:
    torch.manual_seed(0)
    student = BoundaryConsistency(2, _gaussian().schedule, SD, hidden=16, depth=2).double()
    torch.nn.init.normal_(student.net.out.weight, std=0.3)  # the output layer starts at zero
    return student


@pytest.mark.parametrize("hyper", [
    HyperSD(cd=CD(grid=40, skip=4), segments=(1,), stage_steps=()),
    HyperSD(cd=CD(grid=40, skip=4), segments=(2, 1), stage_steps=(3,)),  # step 5: stage k = 1
])  # fmt: skip
def test_one_segment_is_cd(hyper: HyperSD) -> None:
    student, teacher, x0 = _student(), _gaussian(), _data(64, 8)
    target = copy.deepcopy(student).requires_grad_(False)
    torch.nn.init.normal_(target.net.out.weight, std=0.3)  # a target that differs

    def loss(obj):
        student.zero_grad()
        value = obj.loss(x0, None, student=student, target=target, teacher=teacher,
                         rng=torch.Generator().manual_seed(1), step=5).value  # fmt: skip
        value.backward()
        return value.item(), [p.grad.clone() for p in student.parameters()]

    (l_h, g_h), (l_cd, g_cd) = loss(hyper), loss(hyper.cd)
    assert l_cd > 0 and abs(l_h - l_cd) <= 1e-12
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(g_h, g_cd, strict=True))
    assert hyper.segments_at(2) == hyper.segments[0] and hyper.target_decay == 0.95


def test_boundary_condition_at_segment_starts() -> None:
    schedule = _gaussian().schedule
    ts = CD(grid=40, skip=4).times(schedule)
    b = torch.tensor([10, 20, 30, 40])
    x, f = _data(4, 1), _data(4, 2) * 5  # f: any clean estimate
    # at t = t_b the map to the boundary is the identity, whatever f is (float64 rounding)
    y = to_boundary(f, x, ts[b], b, schedule, ts)
    torch.testing.assert_close(y[:3], x[:3], rtol=1e-12, atol=1e-12)
    # the last boundary is the clean end (alpha, sigma) = (1, 0): the point is f itself
    assert torch.equal(to_boundary(f, x, ts[b - 3], b, schedule, ts)[3], f[3])


def test_contract_batch_of_one_and_stages() -> None:
    obj = HyperSD(cd=CD(grid=80, skip=2), segments=(8, 4, 1), stage_steps=(2, 3))
    assert [obj.segments_at(s) for s in range(7)] == [8, 8, 4, 4, 4, 1, 1]
    student = _student()
    target = copy.deepcopy(student).requires_grad_(False)
    for batch in (1, 32):
        loss = obj.loss(_data(batch, 9), None, student=student, target=target,
                        teacher=_gaussian(), rng=torch.Generator().manual_seed(0))  # fmt: skip
        assert torch.isfinite(loss.value) and loss.logs["segments"] == 8.0
        loss.value.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())
    assert all(p.grad is None for p in target.parameters())


def test_bad_segments_name_the_key() -> None:
    fam = FAMILIES["distill-consistency"]
    cfg, obj = fam.resolve("hypersd-ring8", []).config, fam.resolve("hypersd-ring8", []).extra
    assert cfg.method == "hypersd" and obj.segments == (8, 4, 2, 1)
    with pytest.raises(ConfigError, match=re.escape("objective.segments")):
        fam.resolve("hypersd-ring8", ["objective.segments=[8,3,1]"])  # 3 does not divide 1000
    with pytest.raises(ConfigError, match=re.escape("objective.segments")):
        fam.resolve("hypersd-ring8", ["objective.cd.skip=20"])  # 125-step segments, skip 20
    with pytest.raises(ConfigError, match=re.escape("objective.stage_steps")):
        fam.resolve("hypersd-ring8", ["objective.stage_steps=[100]"])
    sets = ["objective.segments=[2,1]", "objective.stage_steps=[100]"]  # fewer stages
    assert fam.resolve("hypersd-ring8", sets).extra.segments_at(100) == 1


@pytest.mark.slow
def test_quick_cli_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["distill", "--preset", "hypersd-ring8", "--quick", "--seed", "1", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_steps"]) == {"1", "2", "3", "4"} and metrics["nfe"] == 2
    assert np.isfinite(metrics["by_steps"]["1"]["mmd"])
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["segments"] for r in logs if "segments" in r} >= {1.0}  # reached the last stage
