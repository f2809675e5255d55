"""Hyper-SD's TSCD: trajectory segmented consistency distillation (Ren et al. 2024, "Hyper-SD:
Trajectory Segmented Consistency Model for Efficient Image Synthesis", arXiv 2404.13686, Sec. 3.1
and Fig. 2).

CD (``objectives/cd.py``: LCM's skipping-step DDIM solver, EMA target ``f_theta-``) run *inside*
``k`` equal segments of the teacher grid ``t_0 = t_max > ... > t_N = t_min``: segment ``j`` holds
the indices ``[j L, (j + 1) L]``, ``L = N / k``, and a start index ``n`` is mapped to the lower
(less noisy) end of its segment, ``b(n) = (floor(n / L) + 1) L``. With ``x^_{t_{n+skip}}`` CD's
solver step (``n + skip <= b(n)``: ``skip`` divides ``L``),

    L_TSCD = d( y_theta(x_{t_n}, t_n), y_theta-(x^_{t_{n+skip}}, t_{n+skip}) ),
    y(x_t, t) = alpha_b f(x_t, t) + sigma_b (x_t - alpha_t f(x_t, t)) / sigma_t,

``y`` being the student's point at the segment boundary ``t_b = t_{b(n)}``: one DDIM step from
``x_t`` with the student's clean estimate ``f`` (the TCD/CTM parametrisation Hyper-SD's LoRA is
sampled with). At the last boundary ``b = N`` the point is the clean end ``(alpha, sigma) =
(1, 0)``, so ``y = f`` there: with ``k = 1`` the loss *is* CD's (same draws, same numbers). At a
segment start ``t = t_b`` the map is the identity for any ``f`` (the boundary condition inside
segments); at ``t_min`` the student's own ``c_skip``/``c_out`` gives it. The exact segment map
of the teacher is the PF-ODE map ``Phi(x_t, t -> t_b)`` (``teachers.pf_ode``).

Progressive stages (paper: k = 8 -> 4 -> 2 -> 1): ``segments[i]`` for ``stage_steps[i]``
optimizer steps, the last entry until the end of the run; the student and its EMA target carry
over between stages. The solver's teacher stays the original teacher in every stage (the paper's
Fig. 2 caption reads as if a stage's segment model supplies the next stage's trajectory; no
training code exists to settle it). Left out: the adversarial term mixed into the paper's loss.

Optional stages after TSCD (both off by default, so the TSCD-only run draws what it always did):

The paper's text was not available; its two other components are read from third-party
summaries (reference note b15; besthub.dev: "score distillation (via DMD) is applied to improve
one-step generation ... combining MSE with score-based losses, while also incorporating the
previously described human-feedback signal"), section numbers unchecked:

- **One-step score distillation** (DMD on the one-step model):
  ``+ dmd_weight * DMD.generator_loss(x)`` on the student's one-step sample ``x = f_theta(
  sigma_max z, t_max)`` (gradient ``g / B``, ``objectives/dmd.py``, DMD2's law and normaliser),
  with a fake-score critic trained by ``DMD.critic_loss`` on fresh one-step samples; the loop's
  critic machinery is rCM's (``train/consistency.py``: ``uses_critic``, ``critic_loss``), the
  critic a DSM fit of the teacher (``runs/consistency.py``). On from ``dmd_start`` (None: the
  first step of the last stage, the global ``k = 1`` model). The paper's weight is unknown;
  1 is DMD2's unweighted distribution-matching term, added to TSCD's (l2) loss.
- **Human feedback** (ReFL): ``+ reward_weight * L_ReFL`` (``objectives/refl.py``)
  with the exact reward ``log p(x)`` of the teacher mixture in place of aesthetic/ImageReward/
  segmentation models; on from ``reward_start`` (None: the last stage's first step). Weight
  1e-3 is ImageReward ReFL's ``grad_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveInt
from ._ingredients import Loss
from .cd import CD
from .dmd import DMD
from .refl import ReFL, denoised_at_step, teacher_log_prob

__all__ = ["HyperSD", "segment_boundary", "to_boundary"]


def segment_boundary(n: Tensor, grid: int, segments: int) -> Tensor:
    """Grid index of the lower end of each index's segment: ``(n // L + 1) L``, ``L = grid /
    segments``; ``n = grid`` (``t_min``) maps to itself. ``n: (B,)`` int64."""
    length = grid // segments
    return torch.where(n >= grid, n, (n // length + 1) * length)


def to_boundary(f: Tensor, x_t: Tensor, t: Tensor, b: Tensor, schedule, ts: Tensor) -> Tensor:
    """The point at segment boundary ``ts[b]`` reached by one DDIM step from ``x_t: (B, D)`` at
    ``t: (B,)`` with clean estimate ``f: (B, D)``; ``b = N`` is the clean end ``(1, 0)``."""
    a_t, s_t = (c.to(x_t.dtype)[:, None] for c in schedule.alpha_sigma(t))
    a_b, s_b = (c.to(x_t.dtype) for c in schedule.alpha_sigma(ts[b]))
    last = b == len(ts) - 1
    a_b = torch.where(last, torch.ones_like(a_b), a_b)[:, None]
    s_b = torch.where(last, torch.zeros_like(s_b), s_b)[:, None]
    return a_b * f + s_b * (x_t - a_t * f) / s_t


@dataclass(frozen=True)
class HyperSD:
    # the CD inside each segment: LCM's solver and EMA target, but skip 25 (40 DDIM jumps), not
    # 20: the segments must end on solver times, and 20 does not divide 1000 / 8 = 125
    cd: CD = field(default_factory=lambda: CD(skip=25))
    segments: tuple[PositiveInt, ...] = (8, 4, 2, 1)  # k per stage (Hyper-SD Sec. 3.1)
    # optimizer steps of every stage but the last (which runs to the end); not in the paper:
    # a CPU budget's split, 3/8 of cd-ring8's 2000 steps on the three segmented stages. Extra
    # entries are unused, so ``--set`` can shorten ``segments`` first, then ``stage_steps``
    stage_steps: tuple[PositiveInt, ...] = (250, 250, 250)
    dmd: DMD = field(default_factory=DMD)  # one-step stage: DMD2's g and critic DSM
    dmd_weight: NonNegativeFloat = 0.0  # 0: no DMD stage; DMD2's term is unweighted (1)
    dmd_start: NonNegativeInt | None = None  # None: the last stage's first step
    refl: ReFL = field(default_factory=ReFL)  # the human-feedback term (ImageReward's ReFL)
    reward_weight: NonNegativeFloat = 0.0  # 0: no feedback stage; ReFL grad_scale 1e-3
    reward_start: NonNegativeInt | None = None  # None: the last stage's first step

    def __post_init__(self) -> None:
        grid, skip = self.cd.grid, self.cd.skip
        bad = [k for k in self.segments if grid % k or (grid // k) % skip]
        if bad:
            raise ConfigError(
                f"config key 'segments': each segment count must divide grid = {grid} into "
                f"segments of a multiple of skip = {skip} steps (got {bad} in "
                f"{list(self.segments)}); valid: e.g. 8, 4, 2, 1 with grid 1000, skip 25"
            )
        if len(self.stage_steps) < len(self.segments) - 1:
            raise ConfigError(
                f"config key 'stage_steps' needs one entry per stage but the last "
                f"({len(self.segments) - 1} for segments {list(self.segments)}), got "
                f"{list(self.stage_steps)}"
            )

    @property
    def target_decay(self) -> float:
        """The loop keeps CD's EMA target (LCM's 0.95)."""
        return self.cd.target_decay

    @property
    def last_stage_start(self) -> int:
        """The first optimizer step of the last (``k = segments[-1]``) stage."""
        return sum(self.stage_steps[: len(self.segments) - 1])

    @property
    def needs_critic(self) -> bool:
        """Whether the run builds a critic (the DMD stage is on)."""
        return self.dmd_weight > 0

    def uses_critic(self, step: int) -> bool:
        """Whether the DMD term (and the critic's training) is on at student step ``step``."""
        start = self.last_stage_start if self.dmd_start is None else self.dmd_start
        return self.dmd_weight > 0 and step >= start

    def uses_reward(self, step: int) -> bool:
        start = self.last_stage_start if self.reward_start is None else self.reward_start
        return self.reward_weight > 0 and step >= start

    def one_step(self, student, n: int, cond, rng: torch.Generator, dtype) -> Tensor:
        """The student's one-step sample ``f(sigma_max z, t_max)``, ``(n, D)``, with gradients."""
        z = torch.randn(n, student.dim, generator=rng, dtype=dtype)
        return denoised_at_step(student, z, cond, steps=1, stop=0, rng=rng)

    def segments_at(self, step: int) -> int:
        """``k`` of the stage that optimizer step ``step`` (0-based) belongs to."""
        end = 0
        for k, n in zip(self.segments, self.stage_steps, strict=False):
            end += n
            if step < end:
                return k
        return self.segments[-1]

    def loss(
        self,
        x0: Tensor,
        cond: Tensor | None,
        *,
        student,
        target,
        teacher,
        rng: torch.Generator,
        step: int = 0,
        critic=None,
    ) -> Loss:
        """``x0: (B, D)``; ``student``/``target`` are clean estimates ``f(x_t, t, cond)``;
        ``critic`` the DMD stage's fake score (``.denoise``), given while ``uses_critic``."""
        cd, k = self.cd, self.segments_at(step)
        t, t_next, x_t, n = cd.draw(x0, teacher, rng)
        b = segment_boundary(n, cd.grid, k)
        with torch.no_grad():
            y_target = self.target_point(
                x_t, t, t_next, b, target=target, teacher=teacher, cond=cond
            )
        f = student(x_t, t.to(x0.dtype), cond)
        y = to_boundary(f, x_t, t, b, teacher.schedule, cd.times(teacher.schedule))
        per = cd.distance_per_sample(y - y_target)
        value, logs = per.mean(), {"distance": per.mean().item(), "segments": float(k)}
        if critic is not None and self.uses_critic(step):
            x = self.one_step(student, x0.shape[0], cond, rng, x0.dtype)
            dmd = self.dmd.generator_loss(x, cond, teacher=teacher, critic=critic, rng=rng)
            value = value + self.dmd_weight * dmd.value
            logs |= {**dmd.logs, "dmd_loss": dmd.value.item()}
        if self.uses_reward(step):
            n, reward = x0.shape[0], teacher_log_prob(teacher)
            refl = self.refl.loss(student, n, cond, reward=reward, rng=rng, dtype=x0.dtype)
            value = value + self.reward_weight * refl.value
            logs |= refl.logs
        return Loss(value, logs)

    def critic_loss(
        self, x0: Tensor, cond: Tensor | None, *, student, critic, rng: torch.Generator, index: int
    ) -> Loss:
        """DMD's DSM of ``critic`` on fresh no-grad one-step samples (``x0`` gives the batch size,
        ``cond`` their labels); ``index`` (the loop's critic-step count) is unused."""
        with torch.no_grad():
            x = self.one_step(student, x0.shape[0], cond, rng, x0.dtype)
        return self.dmd.critic_loss(x, cond, critic=critic, rng=rng)

    def target_point(
        self, x_t: Tensor, t: Tensor, t_next: Tensor, b: Tensor, *, target, teacher, cond
    ) -> Tensor:
        """``y_theta-(x^_{t_next}, t_next)``: the teacher's solver step from ``x_t: (B, D)`` at
        ``t``, then the target network's point at the boundaries ``b: (B,)`` (grid indices)."""
        x_next = self.cd.solve(teacher, x_t, t, t_next, cond)
        f_target = target(x_next, t_next.to(x_t.dtype), cond)
        ts = self.cd.times(teacher.schedule)
        return to_boundary(f_target, x_next, t_next, b, teacher.schedule, ts)
