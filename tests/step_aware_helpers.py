"""Shared pieces of the step-aware objective tests (``test_tdm.py``, ``test_phased_dmd.py``): an
exact teacher and a different exact "critic" (two 2-D Gaussian mixtures), inputs, the generator
gradient under a seeded rng, and a denoiser that records the times it is asked at."""

from __future__ import annotations

import torch
from torch import nn

from scoredistill.teachers.analytic import GaussianMixtureTeacher

F64 = torch.float64
TS = (1.0, 0.75, 0.5, 0.25)  # a 4-step student on edm; with reference edm, fractions = times


def exact_pair(schedule: str = "edm", dtype: torch.dtype = F64):
    """``(teacher, critic)``: two different exact mixtures on ``schedule``."""
    means = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=dtype)
    teacher = GaussianMixtureTeacher(means, [0.5, 0.5], stds=[0.3, 0.4], schedule=schedule)
    critic = GaussianMixtureTeacher(means + 0.3, [0.4, 0.6], stds=[0.5, 0.35], schedule=schedule)
    return teacher, critic


def inputs(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64) * 0.8


def generator_grad(obj, x, teacher, critic, seed: int, **step) -> torch.Tensor:
    """``∂ generator_loss / ∂x`` with the rng seeded by ``seed``."""
    x = x.detach().clone().requires_grad_(True)
    rng = torch.Generator().manual_seed(seed)
    obj.generator_loss(x, None, teacher=teacher, critic=critic, rng=rng, **step).value.backward()
    return x.grad


class Recorder:
    """A denoiser that records every time it is asked at."""

    def __init__(self, net) -> None:
        self.net, self.schedule, self.ts = net, net.schedule, []

    def denoise(self, x_t, t, cond=None):
        self.ts.append(t.detach().clone())
        return self.net.denoise(x_t, t, cond)


class ModuleDenoiser(nn.Module):
    """An exact denoiser behind an ``nn.Module`` with one dummy parameter (to watch .grad)."""

    def __init__(self, exact) -> None:
        super().__init__()
        self.exact, self.schedule = exact, exact.schedule
        self.dummy = nn.Parameter(torch.zeros(()))

    def denoise(self, x_t, t, cond=None):
        return self.exact.denoise(x_t, t, cond) + self.dummy * x_t
