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
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..parametrization import NULL_LABEL
from ..schedules import Schedule, get_schedule
from ..teachers.analytic import GaussianMixtureTeacher
from ..teachers.neural import MLPDenoiserNet, NeuralDenoiser

__all__ = ["RenderMixtureCritic", "copy_teacher_as_critic", "make_critic"]


def make_critic(
    dim: int,
    *,
    schedule: Schedule | str,
    num_classes: int = 0,
    hidden: int = 256,
    depth: int = 4,
    sigma_data: float = 0.5,
    azimuth_cond: bool = False,
) -> NeuralDenoiser:
    """A fresh trainable MLP denoiser (EDM preconditioning) on ``schedule``.

    Its output layer starts at zero, so the untrained critic is ``c_skip x_t / alpha``: the exact
    denoiser of ``N(0, sigma_data^2 I)``. ``num_classes > 0`` adds a class embedding with a null
    class (``NULL_LABEL``) for guidance; ``azimuth_cond`` conditions on a continuous camera
    azimuth in degrees instead (``MLPDenoiserNet``; ``NULL_LABEL`` = no camera).
    """
    sched = get_schedule(schedule) if isinstance(schedule, str) else schedule
    net = MLPDenoiserNet(dim, hidden, depth, num_classes, azimuth_cond=azimuth_cond)
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


class RenderMixtureCritic:
    """The exact fake score of a 3-D field, built afresh from its current renders (issue 15).

    The field's render distribution over cameras ``az ~ U[0, 360)``, each render widened to
    ``N(render, std^2 I)`` (the particles' exact critic, ``runs.optimize``, in 3-D):

    - ``cond = az`` (degrees): ``q(x | az) = N(render(az), std^2 I)``, one Gaussian;
    - ``cond = NULL_LABEL`` (no camera): ``q(x) = mean_k N(render(az_k), std^2 I)`` over ``M``
      cameras ``az_k = offset + 360 k / M`` (a stratified draw of the camera marginal).

    Args:
        render: ``azimuths (n,) -> (n, *D)`` detached renders at the training elevation.
        marginal_azimuths: ``(M,)`` the unconditional mixture's cameras.
    """

    def __init__(
        self,
        render: Callable[[Tensor], Tensor],
        marginal_azimuths: Tensor,
        std: float,
        schedule: Schedule,
    ) -> None:
        self.render, self.std, self.schedule = render, float(std), schedule
        means = render(marginal_azimuths).flatten(1)
        self.marginal = self._mixture(means)

    def _mixture(self, means: Tensor, labelled: bool = False) -> GaussianMixtureTeacher:
        n = means.shape[0]
        labels = torch.arange(n) if labelled else None
        return GaussianMixtureTeacher(
            means.double(), torch.ones(n), stds=torch.full((n,), self.std), labels=labels,
            schedule=self.schedule,
        )  # fmt: skip

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``D(x_t, t, cond)``, ``x_t: (B, *D)``; rows with ``cond = NULL_LABEL`` (or ``cond =
        None``) use the marginal mixture, the others their camera's Gaussian."""
        t = torch.as_tensor(t, dtype=x_t.dtype).expand(x_t.shape[0])
        out = self.marginal.denoise(x_t.double(), t.double(), None).to(x_t.dtype)
        if cond is None:
            return out
        rows = cond != NULL_LABEL
        if bool(rows.any()):
            k = int(rows.sum())
            one = self._mixture(self.render(cond[rows].double()).flatten(1), labelled=True)
            d = one.denoise(x_t[rows].double(), t[rows].double(), torch.arange(k))
            out[rows] = d.to(x_t.dtype)
        return out
