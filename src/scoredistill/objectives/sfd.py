"""SFD — Chen et al., "Score Forgetting Distillation", ICLR 2025 (official
``tqch/score-forgetting-distillation``: ``DDPM/functions/losses.py``, ``DDPM/runners/diffusion.py``,
``DDPM/configs/cifar10_sfd.yml``; reference note b13).

The generator loss is SiD's (``sid_alpha = 1.2``) with one change: for samples labelled
``forget_class`` the teacher is queried with the *override* label ``safe_class`` while the fake
keeps ``forget_class``:

    c_r = safe_class if c == forget_class else c,      c_f = c
    f_r = D_real(x_t; c_r),  f_f = D_fake(x_t; c_f),   L_G = SiD's L_G with these

so the student's ``forget_class`` outputs are pulled toward the teacher's ``safe_class``
distribution and every other class is distilled as usual (rows of other labels get exactly the
base method's gradient). The fake learns DSM on both kinds of sample, forget samples weighted by
``forget_critic_weight``. The base method is held by composition (``SiD`` by default, as in the
official code; ``DMD`` also works: both query the teacher as ``teacher.denoise(x_t, t, cond)``).
The official steps [38, 712] index CIFAR-10 DDPM's linear table, so the base's ``t_reference`` is
``vp-linear``: ``sigma/alpha`` in [0.137, 13.0] on every schedule (read as fractions of EDM's
Karras grid they would start at 0.005).
On the text-to-image path prompt ``i`` of the list is label ``i`` (``runs/sd.py``), so the label
override is a prompt override: the teacher gets the safe prompt's text embedding on forget rows
(preset ``sfd-sd``, keys ``forget_prompt``/``safe_prompt``).
Departures: a fixed override label (the official code also offers random other classes or a
classifier's pseudo-label); the gradient *value* clipping at 1.0 belongs to the trainer. Without
labels (``cond is None``) there is nothing to forget: SFD is the base method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..parametrization import NULL_LABEL
from ._ingredients import Loss
from .dmd import DMD
from .sid import SiD

__all__ = ["SFD", "OverrideLabel"]


class OverrideLabel(nn.Module):
    """A denoiser that answers label ``old`` as if asked for ``new`` (other labels unchanged).

    An ``nn.Module`` so that ``frozen_params`` reaches the wrapped network's parameters.
    """

    def __init__(self, net, old: int, new: int) -> None:
        super().__init__()
        self.net, self.old, self.new = net, old, new
        self.schedule = net.schedule

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is not None:
            cond = torch.where(cond == self.old, torch.full_like(cond, self.new), cond)
        return self.net.denoise(x_t, t, cond)


@dataclass(frozen=True)
class SFD:
    """Score forgetting distillation: ``forget_class`` is matched to the teacher's ``safe_class``."""

    forget_class: int = 0  # set per testbed: the class c_f to forget
    safe_class: int = 1  # set per testbed: the override label c_o the teacher is asked for
    # official: SiD, alpha 1.2, t in [38, 712] of CIFAR-10 DDPM's 1000 steps, i.e. indices into
    # the linear beta table 1e-4..0.02 (DDPM/configs/cifar10_sfd.yml, functions/losses.py)
    base: SiD | DMD = field(
        default_factory=lambda: SiD(sid_alpha=1.2, t_range=(0.038, 0.712), t_reference="vp-linear")
    )
    forget_critic_weight: float = 0.01  # official: forget samples' coefficient in the fake DSM

    def __post_init__(self) -> None:
        if self.forget_class < 0 or self.safe_class < 0 or self.forget_class == self.safe_class:
            raise ValueError(
                "SFD.forget_class and SFD.safe_class must be distinct labels >= 0, got "
                f"forget_class={self.forget_class}, safe_class={self.safe_class}"
            )
        if NULL_LABEL in (self.forget_class, self.safe_class):
            raise ValueError(f"SFD labels may not be the null label {NULL_LABEL}")

    def generator_loss(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic, rng: torch.Generator | None
    ) -> Loss:
        """The base loss for ``x: (B, *D)`` with the teacher's label overridden on forget rows."""
        if cond is None:
            return self.base.generator_loss(x, cond, teacher=teacher, critic=critic, rng=rng)
        override = OverrideLabel(teacher, self.forget_class, self.safe_class)
        loss = self.base.generator_loss(x, cond, teacher=override, critic=critic, rng=rng)
        loss.logs["forget_frac"] = (cond == self.forget_class).double().mean().item()
        return loss

    def critic_loss(self, x: Tensor, cond: Tensor | None, *, critic, rng) -> Loss:
        """The base critic loss, per-sample weight ``forget_critic_weight`` on forget rows."""
        if cond is None:
            return self.base.critic_loss(x, cond, critic=critic, rng=rng)
        forget = cond == self.forget_class
        value, logs = x.new_zeros(()), {}
        for rows, weight, tag in (
            (~forget, 1.0, "remain"),
            (forget, self.forget_critic_weight, "forget"),
        ):
            n = int(rows.sum())
            if n == 0:
                continue
            part = self.base.critic_loss(x[rows], cond[rows], critic=critic, rng=rng)
            value = value + weight * n / x.shape[0] * part.value  # the base averages per sample
            logs.update({f"{k}_{tag}": v for k, v in part.logs.items()})
        logs["critic_loss"] = value.item()
        return Loss(value, logs)
