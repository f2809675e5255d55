"""DisBack: the recorded path moves from the teacher copy to the initial student, and the loop
distils toward s_{N-1}, ..., s_1 and then the teacher, in that order."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from scoredistill.config import ConfigError
from scoredistill.runs.distill import resolve
from scoredistill.schedules import get_schedule
from scoredistill.sources.critic import make_critic
from scoredistill.train.disback import BacktrackConfig, TeacherPath, record_degradation
from scoredistill.train.two_player import _target


class _Constant(nn.Module):
    """A denoiser that answers its own id: tells path nodes apart."""

    def __init__(self, ident: float) -> None:
        super().__init__()
        self.ident = nn.Parameter(torch.tensor(ident))

    def forward(self, x_t, t, cond=None):
        return torch.full_like(x_t, float(self.ident))


class _Teacher:
    schedule, num_classes, dim = get_schedule("edm"), 0, 2

    def denoise(self, x_t, t, cond=None):
        return torch.full_like(x_t, -1.0)


def test_the_path_is_walked_backwards_then_the_teacher() -> None:
    """Snapshots s_0..s_4, 10 steps per node: steps 0-9 -> s_3, 10-19 -> s_2, 20-29 -> s_1, then
    the teacher (never s_0, a copy of it, nor s_N, the fake critic's start)."""
    path = TeacherPath(_Teacher(), [_Constant(float(i)) for i in range(5)], steps_per_node=10)
    x, t = torch.zeros(3, 2), torch.ones(3)
    seen = [float(_target(path, step).denoise(x, t)[0, 0]) for step in (0, 9, 10, 25, 30, 999)]
    assert seen == [3.0, 3.0, 2.0, 1.0, -1.0, -1.0]
    assert _target(_Teacher, 5) is _Teacher  # a plain teacher is its own target
    assert path.schedule is _Teacher.schedule and path.dim == 2
    with pytest.raises(ValueError, match="node between"):
        TeacherPath(_Teacher(), [_Constant(0.0), _Constant(1.0)], 10)


def _gaussian_denoiser_error(critic, mean: float, std: float) -> float:
    """RMS error to the exact denoiser of N(mean, std^2 I) (closed form) over t in (0.2, 0.8)."""
    g = torch.Generator().manual_seed(5)
    t = torch.rand(2000, generator=g) * 0.6 + 0.2
    alpha, sigma = critic.schedule.alpha_sigma(t)
    x0 = mean + std * torch.randn(2000, 2, generator=g)
    x_t = alpha[:, None] * x0 + sigma[:, None] * torch.randn(2000, 2, generator=g)
    gain = alpha * std**2 / (alpha**2 * std**2 + sigma**2)
    exact = mean + gain[:, None] * (x_t - alpha[:, None] * mean)
    with torch.no_grad():
        return float(((critic(x_t, t, None) - exact) ** 2).mean().sqrt())


def test_recording_moves_from_the_teacher_copy_to_the_initial_student() -> None:
    """s_0 is the given critic untouched; the path's error to the exact denoiser of the initial
    generator's law (a Gaussian here) falls from s_0 to s_N."""
    torch.manual_seed(0)
    critic = make_critic(2, schedule=get_schedule("edm"), num_classes=0, hidden=64, depth=2)
    before = {k: v.clone() for k, v in critic.state_dict().items()}

    def student(n: int, rng: torch.Generator) -> torch.Tensor:
        return 1.5 + 0.3 * torch.randn(n, 2, generator=rng)

    cfg = BacktrackConfig(nodes=3, record_steps=300, record_lr=2e-3)
    path = record_degradation(critic, student, cfg, batch_size=256, seed=0)
    assert len(path) == 4
    for k, v in critic.state_dict().items():
        torch.testing.assert_close(v, before[k])
        torch.testing.assert_close(path[0].state_dict()[k], before[k])
    errors = [_gaussian_denoiser_error(m, 1.5, 0.3) for m in path]
    assert errors[-1] < 0.5 * errors[0], errors
    assert all(not p.requires_grad for m in path for p in m.parameters())


@pytest.mark.parametrize(
    ("sets", "match"),
    [(["backtrack.nodes=1"], "nodes must be 0"), (["backtrack.nodes=8", "backtrack.record_steps=4"],
                                                  "record_steps")],
)  # fmt: skip
def test_bad_paths_are_refused_naming_the_key(sets, match) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve("disback-ring8", sets)


@pytest.mark.slow
def test_disback_preset_runs_from_the_cli(tmp_path: Path) -> None:
    """The preset's smoke budget runs end to end; the path costs its recording, nothing else."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "scoredistill", "distill", "--preset", "disback-ring8", "--quick"]
    for item in ("train.steps=20", "critic.init_steps=20", "train.eval_samples=200"):
        cmd += ["--set", item]
    cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["mmd"])
    config = json.loads((out / "config.json").read_text())
    assert config["backtrack"]["nodes"] == 4
