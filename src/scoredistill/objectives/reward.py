"""Reward-guided score distillation, in the spirit of VLM3D (reference note b9).

VLM3D adds to an SDS-type loss a differentiable reward on the rendered views: a VLM's
``logit_No - logit_Yes`` to "is this object consistent across views, no Janus?". Here the judge
is a small view classifier trained on ground-truth renders, and the reward asks that each view
look like a view from where its camera is:

    L = L_base(x) + lambda_r * CE(f(x), bin(camera)),   CE = -log softmax(f(x))[bin]

so ``dL/dx = g_base / B + lambda_r * d CE / dx`` (the CE is a batch mean, like the surrogate).
``L_base`` is any score objective (``base``); the classifier is a network passed in as an
argument (``classifier=``, frozen), with the camera's azimuth bin (``view=``, ``(B,)``).
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

__all__ = ["RewardGuided", "ViewClassifier", "azimuth_bins", "train_view_classifier"]


def azimuth_bins(azimuth: Tensor, n_bins: int) -> Tensor:
    """``(B,)`` long: the nearest of ``n_bins`` azimuths ``360 k / n_bins`` (degrees in)."""
    width = 360.0 / n_bins
    return torch.remainder(torch.round(azimuth.double() / width), n_bins).long()


class ViewClassifier(nn.Module):
    """MLP ``(B, *D) -> (B, n_bins)`` logits of the azimuth bin of an image."""

    def __init__(self, dim: int, n_bins: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, n_bins),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def train_view_classifier(
    images: Tensor,
    azimuths: Tensor,
    n_bins: int,
    *,
    rng: torch.Generator,
    steps: int = 300,
    lr: float = 2e-3,
    batch_size: int = 128,
    noise_std: float = 0.1,
) -> tuple[ViewClassifier, float]:
    """Fit a ``ViewClassifier`` to ground-truth ``images (N, *D)`` at ``azimuths (N,)``.

    Inputs get ``N(0, noise_std^2)`` pixel noise so that imperfect student renders are still
    judged. Returns the frozen classifier (eval mode) and its accuracy on the clean images.
    """
    labels = azimuth_bins(azimuths, n_bins)
    with torch.random.fork_rng():  # the classifier's initial weights, from rng alone
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=rng)))
        clf = ViewClassifier(images[0].numel(), n_bins)
    opt = torch.optim.Adam(clf.parameters(), lr)
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=rng)
        x = images[idx] + noise_std * torch.randn(images[idx].shape, generator=rng)
        loss = F.cross_entropy(clf(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    clf.eval().requires_grad_(False)
    with torch.no_grad():
        acc = float((clf(images).argmax(1) == labels).double().mean())
    return clf, acc


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
