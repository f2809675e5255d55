"""DisBack: distribution backtracking (Zhang et al. 2024, arXiv 2408.15991), for any objective.

Score distillation starts with a large *score mismatch*: the teacher's score ``s_0`` and the
initial student's distribution are far apart. DisBack records the path between them and lets
the student walk it backwards (the paper's two stages; ``SYZhang0805/DisBack``):

1. **Degradation recording.** A copy of the teacher's denoiser is trained by denoising score
   matching on samples of the *initial* generator ``G_0``, and ``N + 1`` snapshots are kept at
   equal spacing: ``s_0`` (the teacher copy) ... ``s_N`` (fits ``G_0``). The official
   ``main/degradation.py`` does this with DMD2's fake-score loss on ``G_0``'s samples.
2. **Distribution backtracking.** The generator is distilled with the *intermediate* scores as
   its target, ``s_{N-1}, s_{N-2}, ..., s_1`` in turn, then with the real teacher. Any score
   distillation objective serves (the paper runs it on DMD2-style and SiD-style losses), so
   here the objective is untouched: the loop asks :meth:`TeacherPath.at` for the target of each
   generator step. The fake critic starts from ``s_N``, the score that already fits ``G_0``.

On an exact testbed the teacher is a closed form, not a network, so "a copy of the teacher" is
the critic after its DSM fit to the teacher (``critic.init_steps``), the same network the fake
score starts from in every other preset.

Departures (no stage-2 schedule is given in the released code): each intermediate node is the
target for an equal share of the first ``fraction`` of the generator steps; recording restarts
Adam at each snapshot (``train_dsm`` per segment).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from ..config import ConfigError, LearningRate, PositiveInt, Range
from .dsm import train_dsm

__all__ = ["BacktrackConfig", "TeacherPath", "record_degradation"]


@dataclass(frozen=True)
class BacktrackConfig:
    nodes: Annotated[int, Range(0, note="0: off")] = 0  # intermediate targets s_1..s_{N-1}: N-1
    record_steps: PositiveInt = 600  # DSM steps from the teacher copy to s_N (on G_0's samples)
    record_lr: LearningRate = 1e-3
    fraction: Annotated[float, Range(0.0, 1.0)] = 0.5  # share of generator steps on s_{N-1..1}

    def __post_init__(self) -> None:
        if self.nodes == 1:
            raise ConfigError(
                "backtrack.nodes must be 0 (off) or >= 2 (s_0 and s_N with a node between)"
            )
        if self.nodes and self.record_steps < self.nodes:
            raise ConfigError(
                f"backtrack.record_steps ({self.record_steps}) must be >= backtrack.nodes "
                f"({self.nodes}): each path segment needs a DSM step"
            )


class _Frozen:
    """A recorded snapshot as a teacher: ``.denoise`` through the frozen module."""

    def __init__(self, module: nn.Module, like: Any) -> None:
        self.module = module.requires_grad_(False)
        self.schedule, self.num_classes, self.dim = like.schedule, like.num_classes, like.dim

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.module(x_t, t, cond)


class TeacherPath:
    """The target of generator step ``k``: ``s_{N-1}``, ..., ``s_1``, then the teacher itself.

    ``snapshots`` are ``[s_0, ..., s_N]``; each of ``s_{N-1} .. s_1`` is the target for
    ``steps_per_node`` consecutive generator steps, the real ``teacher`` afterwards. Everything
    but ``denoise`` is the teacher's (schedule, class count, exact helpers).
    """

    def __init__(self, teacher: Any, snapshots: list[nn.Module], steps_per_node: int) -> None:
        if len(snapshots) < 3:
            raise ValueError("a path needs s_0, s_N and at least one node between")
        self.teacher, self.steps_per_node = teacher, steps_per_node
        self.nodes = [_Frozen(m, teacher) for m in reversed(snapshots[1:-1])]

    def at(self, step: int) -> Any:
        """The teacher generator step ``step`` (0-based) distils toward."""
        i = step // max(1, self.steps_per_node)
        return self.nodes[i] if i < len(self.nodes) else self.teacher

    def __getattr__(self, name: str) -> Any:  # schedule, num_classes, dim, denoise, ...
        return getattr(self.teacher, name)


def record_degradation(
    critic: nn.Module,
    sample_generator: Callable[[int, torch.Generator], Any],
    cfg: BacktrackConfig,
    *,
    batch_size: int,
    seed: int,
) -> list[nn.Module]:
    """Stage 1: ``[s_0, ..., s_N]`` with ``N = cfg.nodes``, from DSM on ``G_0``'s samples.

    ``critic`` is the teacher copy ``s_0`` and is left unchanged; ``sample_generator(n, rng)``
    draws the frozen initial generator's samples (``x`` or ``(x, labels)``).
    """
    path = [copy.deepcopy(critic).requires_grad_(False)]
    current = copy.deepcopy(critic)
    per = cfg.record_steps // cfg.nodes
    for node in range(cfg.nodes):
        steps = per if node < cfg.nodes - 1 else cfg.record_steps - per * (cfg.nodes - 1)
        train_dsm(
            current,
            sample_generator,
            steps=steps,
            batch_size=batch_size,
            lr=cfg.record_lr,
            seed=seed + 104729 * (node + 1),
            lr_schedule="constant",
            progress=False,
        )
        path.append(copy.deepcopy(current).requires_grad_(False))
    return path
