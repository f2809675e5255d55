"""The critic ("fake score"): a trainable denoiser of the student's distribution.

Two-player methods (VSD, DMD/DMD2, SiD, SIM, f-distill) keep a denoiser ``D_fake`` fitted to the
generator's samples. It starts where the generator starts relative to the teacher:

- neural teacher: ``copy_teacher_as_critic`` (DMD, DMD2 and SiD initialise the fake from the
  teacher's weights);
- exact teacher (a Gaussian mixture, no weights to copy): ``make_critic`` then
  ``train.dsm.init_critic_from_teacher``, which fits the teacher's distribution by denoising score
  matching on teacher samples, so the critic begins close to the teacher as it does after a
  weight copy.
"""

from __future__ import annotations

import copy

from torch import nn

from ..schedules import Schedule, get_schedule
from ..teachers.neural import MLPDenoiserNet, NeuralDenoiser

__all__ = ["copy_teacher_as_critic", "make_critic"]


def make_critic(
    dim: int,
    *,
    schedule: Schedule | str,
    num_classes: int = 0,
    hidden: int = 256,
    depth: int = 4,
    sigma_data: float = 0.5,
) -> NeuralDenoiser:
    """A fresh trainable MLP denoiser (EDM preconditioning) on ``schedule``.

    Its output layer starts at zero, so the untrained critic is ``c_skip x_t / alpha``: the exact
    denoiser of ``N(0, sigma_data^2 I)``. ``num_classes > 0`` adds a class embedding with a null
    class (``NULL_LABEL``) for guidance.
    """
    sched = get_schedule(schedule) if isinstance(schedule, str) else schedule
    net = MLPDenoiserNet(dim, hidden, depth, num_classes)
    return NeuralDenoiser(net, sched, "edm", sigma_data, num_classes).train()


def copy_teacher_as_critic(denoiser: nn.Module) -> nn.Module:
    """A trainable deep copy of a neural teacher (parameters require grad, train mode).

    The copy shares no storage with the teacher: training it leaves the teacher unchanged.
    Exact teachers have no weights; use ``make_critic`` + ``init_critic_from_teacher``.
    """
    if not isinstance(denoiser, nn.Module):
        raise TypeError(
            f"copy_teacher_as_critic needs a neural (nn.Module) teacher, got "
            f"{type(denoiser).__name__}; for exact teachers use make_critic and "
            "init_critic_from_teacher"
        )
    return copy.deepcopy(denoiser).requires_grad_(True).train()
