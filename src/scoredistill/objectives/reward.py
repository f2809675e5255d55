"""Reward-guided score distillation, in the spirit of VLM3D (reference note b9).

VLM3D adds to an SDS-type loss a differentiable reward on the rendered views: a VLM's
``logit_No - logit_Yes`` to "is this object consistent across views, no Janus?". Here the judge
is a small view classifier trained on ground-truth renders, and the reward asks that each view
look like a view from where its camera is:

    L = L_base(x) + lambda_r * CE(f(x), bin(camera)),   CE = -log softmax(f(x))[bin]

so ``dL/dx = g_base / B + lambda_r * d CE / dx`` (the CE is a batch mean, like the surrogate).
``L_base`` is any score objective (``base``); the classifier is a network passed in as an
argument (``classifier=``, frozen), with the camera's azimuth bin (``view=``, ``(B,)``).
The classifier and its training loop are ``train.view_classifier``.
As in VLM3D the reward is a separate loss term with its own preprocessing, not a patch of the
base objective. Departure: VLM3D weights the term by a schedule (``lambda_qwen: [0, 300, 1,
10000]``); here ``weight`` is constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._ingredients import Loss

__all__ = ["RewardGuided"]


@dataclass(frozen=True)
class RewardGuided:
    """A base score objective plus ``weight`` times the view classifier's cross-entropy."""

    base: Any  # the score objective whose surrogate is kept (SDS, ESD, ...)
    weight: float = 1.0  # lambda_r; VLM3D ramps its lambda to 1 (here constant)

    @property
    def needs_critic(self) -> bool:
        return hasattr(self.base, "critic_loss")

    def generator_loss(
        self,
        x: Tensor,
        cond: Tensor | None,
        *,
        teacher,
        critic=None,
        rng: torch.Generator | None,
        classifier: nn.Module,
        view: Tensor,
        **base_kw: Any,
    ) -> Loss:
        """``L_base + weight * CE(classifier(x), view)`` for ``x: (B, *D)``, ``view: (B,)``."""
        base = self.base.generator_loss(x, cond, teacher=teacher, critic=critic, rng=rng, **base_kw)
        logits = classifier(x)
        ce = F.cross_entropy(logits, view)
        acc = float((logits.argmax(1) == view).double().mean())
        logs = {**base.logs, "reward_ce": ce.item(), "reward_acc": acc}
        return Loss(base.value + self.weight * ce, logs)

    def critic_loss(self, x: Tensor, cond: Tensor | None, *, critic, rng) -> Loss:
        """The base objective's critic loss (VSD/ESD)."""
        return self.base.critic_loss(x, cond, critic=critic, rng=rng)
