"""The judge of reward-guided score distillation (``objectives.reward``): a small view
classifier trained on ground-truth renders, which tells the camera's azimuth bin from an image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ViewClassifier", "azimuth_bins", "train_view_classifier"]


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
