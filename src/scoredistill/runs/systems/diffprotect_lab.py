"""Diff-Protect's testbed: a latent diffusion model on digits whose prior is known exactly.

- **VAE** (the LDM's first stage): an MLP ``E: x (B, 64) -> (mu, log var) (B, d)`` and decoder,
  trained locally on the digits' train split with a fixed seed (``train_vae``). The latent is
  ``z = scale · mu(x)``: the posterior mean, scaled to unit standard deviation as Stable
  Diffusion's ``scale_factor = 0.18215`` does for its latents.
- **Exact latent teacher**: a class-conditional Gaussian mixture fitted to the encoded train
  split (``teachers.testbeds.fit_class_mixture``), on Stable Diffusion's noise table
  (``vp-scaled-linear``). Its ``denoise``, ``class_posterior`` and ``log_prob`` are exact, so the
  mimicry outputs are scored without a learned classifier.
- **Learned teacher**: an MLP denoiser trained by DSM on exact samples of that mixture
  (``train.dsm.train_dsm``), the variant whose Jacobian a full-gradient attack must go through.
- **SDEdit** (Meng et al., ICLR 2022), the mimicry pipeline: ``z_s = alpha_s z + sigma_s eps``
  at strength ``s = t/T``, then deterministic DDIM from ``s`` back to clean data with
  ``ceil(ddim_steps · s)`` steps (Diff-Protect ``code/attacks.py::SDEdit.edit`` with
  ``restep='ddim100'``), unconditional (the paper's generic prompt "a photo").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...data import load_digits_images
from ...samplers import ddim
from ...schedules import Schedule
from ...teachers.analytic import GaussianMixtureTeacher
from ...teachers.mlp import MLPDenoiserNet
from ...teachers.neural import NeuralDenoiser
from ...teachers.testbeds import fit_class_mixture
from ...train.dsm import train_dsm
from ..kd_procedures.proc_common import seeded

__all__ = [
    "MLPVAE",
    "Lab",
    "build_lab",
    "learned_teacher",
    "sdedit",
    "train_learned_teacher",
    "train_vae",
]


class MLPVAE(nn.Module):
    """Gaussian-posterior VAE with SiLU MLPs: ``encode(x (B, D)) -> (mu, logvar) (B, d)``,
    ``decode(z (B, d)) -> x (B, D)``."""

    def __init__(self, dim: int = 64, latent: int = 8, hidden: int = 256) -> None:
        super().__init__()
        self.dim, self.latent = dim, latent
        self.enc = nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, 2 * latent)
        self.dec = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.enc(x.reshape(x.shape[0], self.dim))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.dec(z)


def vae_loss(vae: MLPVAE, x: Tensor, beta: float, rng: torch.Generator) -> Tensor:
    """Negative ELBO per image with a unit-variance Gaussian likelihood weighted by ``1/beta``:
    ``||x - Dec(mu + std xi)||^2 / 2 + beta KL(q(z|x) || N(0, I))`` (Kingma & Welling 2014, eq. 10;
    beta-VAE weighting, Higgins et al. 2017). ``x: (B, D)``."""
    mu, logvar = vae.encode(x)
    xi = torch.randn(mu.shape, generator=rng, dtype=mu.dtype)
    recon = vae.decode(mu + (0.5 * logvar).exp() * xi)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return (0.5 * (recon - x).pow(2).sum(1) + beta * kl).mean()


def train_vae(
    vae: MLPVAE, x: Tensor, *, steps: int, batch: int, lr: float, beta: float, seed: int
) -> float:
    """Adam on ``vae_loss`` with seeded minibatches; returns the mean loss of the last 5%."""
    rng = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (batch,), generator=rng)
        loss = vae_loss(vae, x[idx], beta, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    tail = losses[-max(1, steps // 20) :]
    return sum(tail) / len(tail)


@dataclass
class Lab:
    """The trained first stage, the exact latent prior and the data (``x: (N, 64)`` in [-1, 1])."""

    vae: MLPVAE
    scale: float  # z = scale * mu(x): unit standard deviation over the train split
    truth: GaussianMixtureTeacher  # exact latent mixture on the attack/mimicry schedule
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def encode(self, x: Tensor) -> Tensor:
        """``z = scale · mu(x)``, ``(B, d)``, differentiable in ``x`` (the attacked map)."""
        return self.scale * self.vae.encode(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.vae.decode(z / self.scale)


def load_split(data_seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits ``(x_train, y_train, x_test, y_test)``, ``x`` flattened to ``(N, 64)`` float32."""
    train, test = load_digits_images("train", data_seed), load_digits_images("test", data_seed)
    flat = [d.x.reshape(d.x.shape[0], -1) for d in (train, test)]
    return flat[0], train.labels, flat[1], test.labels


def fit_latent_truth(
    lab_vae: MLPVAE, x: Tensor, y: Tensor, *, components: int, reg: float, seed: int, schedule: str
) -> tuple[float, GaussianMixtureTeacher]:
    """The latent scale and the exact class mixture fitted to ``scale · mu(x)``."""
    with torch.no_grad():
        mu = lab_vae.encode(x)[0].double()
    scale = float(1.0 / mu.std())
    z = (scale * mu).numpy()
    mix = fit_class_mixture(z, y.numpy(), seed=seed, n_components=components, reg_covar=reg)
    return scale, mix.with_schedule(schedule)


def build_lab(
    *,
    latent: int,
    hidden: int,
    vae_steps: int,
    vae_beta: float,
    components: int,
    reg: float,
    schedule: str,
    seed: int,
    data_seed: int,
) -> tuple[Lab, float]:
    """Train the VAE and fit the latent truth (deterministic in ``seed``); returns the lab and the
    VAE's final training loss."""
    x_train, y_train, x_test, y_test = load_split(data_seed)
    with seeded(torch.Generator().manual_seed(seed)):
        vae = MLPVAE(x_train.shape[1], latent, hidden)
    loss = train_vae(vae, x_train, steps=vae_steps, batch=128, lr=2e-3, beta=vae_beta, seed=seed)
    vae.requires_grad_(False).eval()
    scale, truth = fit_latent_truth(
        vae, x_train, y_train, components=components, reg=reg, seed=seed, schedule=schedule
    )
    return Lab(vae, scale, truth, x_train, y_train, x_test, y_test), loss


def learned_teacher(dim: int, schedule: str, hidden: int, seed: int) -> NeuralDenoiser:
    """An untrained unconditional MLP denoiser (``sigma_data`` = 1: the latents are scaled to unit
    standard deviation)."""
    with seeded(torch.Generator().manual_seed(seed + 1)):
        net = MLPDenoiserNet(dim, hidden, 3, num_classes=0)
    return NeuralDenoiser(net, schedule, "edm", 1.0, 0)


def train_learned_teacher(
    denoiser: NeuralDenoiser, truth: GaussianMixtureTeacher, steps: int, seed: int
) -> float:
    """DSM on exact samples of ``truth`` (EDM loss, ``train.dsm``); returns the final loss."""

    def sample_data(n: int, rng: torch.Generator) -> Tensor:
        return truth.sample(n, rng=rng)

    logs = train_dsm(
        denoiser, sample_data, steps=steps, batch_size=512, seed=seed + 2, progress=False
    )
    denoiser.requires_grad_(False).eval()
    return float(logs["final_loss"])


def sdedit(
    denoise: Callable[..., Tensor],
    schedule: Schedule,
    z0: Tensor,
    strength: float,
    ddim_steps: int,
    rng: torch.Generator,
) -> Tensor:
    """SDEdit: noise ``z0: (B, d)`` to ``t = strength``, then DDIM back to clean data.

    ``ceil(ddim_steps · strength)`` DDIM steps on times uniform in ``[strength, t_min]`` (the
    first ``strength`` of a ``ddim_steps`` uniform grid), ending with the final denoise.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"SDEdit strength must be in (0, 1], got {strength}")
    n = max(2, math.ceil(ddim_steps * strength))
    ts = torch.linspace(strength, schedule.t_min, n, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(ts[:1].to(z0.dtype))
    eps = torch.randn(z0.shape, generator=rng, dtype=z0.dtype)
    with torch.no_grad():
        return ddim(denoise, schedule, alpha * z0 + sigma * eps, ts)
