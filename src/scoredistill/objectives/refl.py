"""ReFL: reward feedback learning on a few-step student's denoised output at a late step (Xu et
al. 2023, "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation",
Alg. 1; the human-feedback stage of Hyper-SD, Ren et al. 2024, arXiv 2404.13686).

The student samples without gradients down to a randomly drawn late step ``j`` of its sampler,
then predicts the clean ``x^_0 = f_theta(x_{t_j}, t_j)`` with gradients, and the reward ``r`` of
that prediction is pushed up through a hinge:

    L_ReFL = E_j mean_b ReLU(margin - r(x^_0))          (ReLU(2 - r): ImageReward ``ReFL.py``)

so ``dL/dx^_0 = -grad r(x^_0) / B`` wherever ``r < margin``; ``margin = None`` drops the hinge
(``L = -mean r``). ImageReward stops at a step drawn uniformly in 30..39 of a 40-step sampler
(the last quarter) and scales the loss by ``grad_scale = 1e-3`` (``ImageReward/ReFL.py``,
``loss = F.relu(-rewards + 2); loss.mean() * args.grad_scale``); here the grid is the student's
own multistep sampler (Song et al.'s, ``BoundaryConsistency.sample``) of ``steps`` steps and
``j`` is one of its last ``late_steps``; the scale is the caller's weight. ``reward`` is a
differentiable ``(x: (B, D), cond) -> (B,)``: on the exact testbeds the teacher mixture's own
``log p(x)`` (``teachers/analytic.py``, ``GaussianMixtureTeacher.log_prob``), which is maximal at
the mode centres: the term pulls samples in, the reward hacking to measure (not tuned away).
``objectives/reward.py`` (a view classifier's cross-entropy on score-distillation renders) is a
different term of a different loop; nothing of it fits here but the idea.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, PositiveInt
from ._ingredients import Loss

__all__ = ["ReFL", "denoised_at_step", "teacher_log_prob"]

Reward = Callable[[Tensor, Tensor | None], Tensor]


def denoised_at_step(
    student, z: Tensor, cond: Tensor | None, *, steps: int, stop: int, rng: torch.Generator
) -> Tensor:
    """Song et al.'s multistep sampler of ``student`` over ``student.times(steps)`` from
    ``x_T = sigma(t_max) z`` (``z: (B, D)``), without gradients up to step ``stop`` (0-based),
    whose clean estimate ``f(x_{t_stop}, t_stop)`` is returned with gradients. With ``stop =
    steps - 1`` the value is ``student.sample(z, cond, steps=steps, rng=rng)`` (same draws)."""
    ts = student.times(steps)
    x = torch.zeros_like(z)
    for i, t in enumerate(ts[: stop + 1]):
        tb = torch.full((len(z),), t, dtype=z.dtype, device=z.device)
        alpha, sigma = (c[:, None] for c in student.schedule.alpha_sigma(tb))
        noise = z if i == 0 else torch.randn(z.shape, generator=rng, dtype=z.dtype)
        x_t = alpha * x + sigma * noise
        if i == stop:
            return student(x_t, tb, cond)
        with torch.no_grad():
            x = student(x_t, tb, cond)
    raise ValueError(f"stop must lie in [0, {steps - 1}], got {stop}")


def teacher_log_prob(teacher) -> Reward:
    """The exact reward ``r(x) = log p(x | cond)`` of a mixture teacher (clean data law)."""
    if not hasattr(teacher, "log_prob"):
        raise ConfigError(
            f"config key 'objective.reward_weight': the reward needs an exact teacher with "
            f"log_prob (a Gaussian-mixture testbed), got {type(teacher).__name__}; set it to 0"
        )
    return lambda x, cond: teacher.log_prob(x, None, cond)


@dataclass(frozen=True)
class ReFL:
    margin: float | None = 2.0  # ImageReward ReFL's hinge ReLU(2 - r); None: -r, no hinge
    steps: PositiveInt = 4  # the student sampler's grid the late step is drawn from
    # the gradient step is one of the last late_steps of that grid (ReFL: 30..39 of 40, the
    # last quarter; 1 of 4 here would always be the final step, 2 keeps a draw)
    late_steps: PositiveInt = 2

    def __post_init__(self) -> None:
        if self.late_steps > self.steps:
            raise ConfigError(
                f"config key 'objective.refl.late_steps' must be <= steps = {self.steps}, got "
                f"{self.late_steps}"
            )

    def loss(
        self, student, n: int, cond: Tensor | None, *, reward: Reward, rng: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> Loss:  # fmt: skip
        """``L_ReFL`` on ``n`` fresh student samples (labels ``cond``, ``(n,)`` or None)."""
        late = int(torch.randint(self.late_steps, (1,), generator=rng))
        stop = self.steps - 1 - late
        z = torch.randn(n, student.dim, generator=rng, dtype=dtype)
        x0 = denoised_at_step(student, z, cond, steps=self.steps, stop=stop, rng=rng)
        r = reward(x0, cond)
        per = -r if self.margin is None else F.relu(self.margin - r)
        logs = {"reward": r.mean().item(), "reward_loss": per.mean().item(), "refl_step": stop}
        return Loss(per.mean(), logs)
