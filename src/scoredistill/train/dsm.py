"""Denoising score matching: training a learned teacher, and fitting a critic to a teacher.

EDM's loss and time distribution (Karras et al. 2022, eq. 2, Table 1) on the VE view, Adam with
a warm-up and cosine decay, an EMA by half-life. ``train_learned_teacher`` is the job behind
``scoredistill train-teacher`` for the 2-D MLP teacher; ``init_critic_from_teacher`` gives an
exact teacher's critic the start a weight copy would give (``sources.critic``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..parametrization import NULL_LABEL
from ..schedules import Schedule, t_from_log_snr
from ..teachers import testbeds
from ..teachers.mlp import MLPDenoiserNet
from ..teachers.neural import NeuralDenoiser, denoiser_errors, save_learned_teacher
from ..teachers.trigflow import mixture_sigma_data
from .common import cosine_factor, ema_decay, ema_update

__all__ = [
    "dsm_loss",
    "init_critic_from_teacher",
    "sample_training_t",
    "teacher_score_matching",
    "train_dsm",
    "train_learned_teacher",
]

P_MEAN, P_STD = -1.2, 1.2  # EDM Table 1: log(sigma/alpha) ~ N(P_mean, P_std^2) during training
SampleData = Callable[[int, torch.Generator], "Tensor | tuple[Tensor, Tensor]"]


def _per_sample(c: Tensor, x: Tensor) -> Tensor:
    return c.reshape(-1, *([1] * (x.dim() - 1)))


def sample_training_t(schedule: Schedule, n: int, rng: torch.Generator) -> Tensor:
    """``(n,)`` float64 times with ``log(sigma/alpha) ~ N(P_MEAN, P_STD^2)`` (EDM, Table 1),
    mapped by ``t_from_log_snr`` (``lambda = -2 log(sigma/alpha)``), clamped to
    ``[t_min, t_max]``. Drawn on ``rng``'s device."""
    log_s = P_MEAN + P_STD * torch.randn(n, generator=rng, dtype=torch.float64, device=rng.device)
    t = t_from_log_snr(schedule, -2.0 * log_s, iters=32)  # 2^-32 in t: below float32 spacing
    return t.clamp(schedule.t_min, schedule.t_max)


Target = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def dsm_loss(
    denoiser: Any,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    cond: Tensor | None = None,
    target: Target | None = None,
) -> Tensor:
    """EDM's denoising loss on the VE view (Karras et al. 2022, eq. 2 with Table 1's weight):

        x_t = alpha_t x0 + sigma_t eps,   s = sigma_t / alpha_t
        lambda(s) = (s^2 + sigma_data^2) / (s sigma_data)^2
        L = mean_b  lambda(s_b) * ||D(x_t, t_b, cond_b) - y_b||^2 / dim,   y = x0

    ``x0``, ``eps``: ``(B, *D)``; ``t``: ``(B,)``; ``denoiser`` has ``schedule``, ``sigma_data``
    and ``denoise``. With EDM preconditioning this is ``||F - F_target||^2`` per dimension.
    ``target(x_t, t, cond)`` replaces ``y = x0`` (``teacher_score_matching``: the teacher's
    ``E[x0 | x_t]``, the minimiser of the x0 loss, so both losses have the same optimum).
    """
    sd, (alpha, sigma) = denoiser.sigma_data, denoiser.schedule.alpha_sigma(t)
    x_t = _per_sample(alpha, x0) * x0 + _per_sample(sigma, x0) * eps
    s = sigma / alpha
    weight = (s**2 + sd**2) / (s * sd) ** 2
    y = x0 if target is None else target(x_t, t, cond)
    sq_err = (denoiser.denoise(x_t, t, cond) - y).pow(2).flatten(1).mean(1)
    return (weight * sq_err).mean()


def _lr_factor(step: int, steps: int, kind: str) -> float:
    ramp = min(1.0, (step + 1) / max(1, steps // 20))  # 5% linear warm-up: small first steps
    return ramp * (cosine_factor(step, steps) if kind == "cosine" else 1.0)


def train_dsm(
    denoiser: NeuralDenoiser,
    sample_data: SampleData,
    *,
    steps: int,
    batch_size: int = 1024,
    lr: float = 2e-3,
    seed: int = 0,
    ema_halflife_steps: float = 100.0,
    lr_schedule: str = "cosine",
    cond_drop_prob: float = 0.1,
    progress: bool = True,
    target: Target | None = None,
) -> dict[str, float]:
    """Train by ``dsm_loss`` (its ``target``) with Adam; ``denoiser`` ends holding the EMA weights.

    ``sample_data(n, rng)`` returns clean ``x0: (n, *D)`` or ``(x0, labels)``; labels become
    ``NULL_LABEL`` with probability ``cond_drop_prob`` (CFG training). The EMA half-life ramps
    up as in EDM (at most 5% of the steps done). A non-finite loss or gradient raises
    ``RuntimeError`` naming the step. Returns ``steps``, ``final_loss``, ``wall_time_s``.
    """
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    rng = torch.Generator().manual_seed(seed)
    online = copy.deepcopy(denoiser).train()
    p0 = next(online.parameters())
    opt = torch.optim.Adam(online.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: _lr_factor(k, steps, lr_schedule))
    losses: list[float] = []
    start = time.perf_counter()
    desc = "dsm" if target is None else "tsm"  # a teacher's denoiser as the target: MSD's TSM
    bar = tqdm(range(steps), disable=not progress, desc=desc, dynamic_ncols=True)
    for step in bar:
        out = sample_data(batch_size, rng)
        x0, cond = (out[0].to(p0), out[1]) if isinstance(out, tuple) else (out.to(p0), None)
        if cond is not None and cond_drop_prob > 0:
            drop = torch.rand(batch_size, generator=rng) < cond_drop_prob
            cond = torch.where(drop.to(cond.device), NULL_LABEL, cond)
        t = sample_training_t(online.schedule, batch_size, rng).to(p0)
        eps = torch.randn(x0.shape, generator=rng, dtype=p0.dtype).to(p0.device)
        loss = dsm_loss(online, x0, t, eps, cond, target)
        if not torch.isfinite(loss):
            raise RuntimeError(f"DSM loss is non-finite ({loss.item()}) at step {step}; lr={lr}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not torch.isfinite(nn.utils.clip_grad_norm_(online.parameters(), math.inf)):
            raise RuntimeError(f"DSM gradient is non-finite at step {step}; lr={lr}")
        opt.step()
        sched.step()
        half = max(min(ema_halflife_steps, 0.05 * (step + 1)), 1e-8)
        ema_update(denoiser, online, ema_decay(half))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    tail = losses[-max(1, steps // 20) :]  # the last 5%: one step's loss is noisy
    return {
        "steps": steps,
        "final_loss": sum(tail) / len(tail),
        "wall_time_s": time.perf_counter() - start,
    }


def train_learned_teacher(
    testbed_name: str = "moons",
    *,
    seed: int = 0,
    steps: int = 4000,
    out_dir: str | Path,
    hidden: int = 256,
    depth: int = 4,
    batch_size: int = 1024,
    lr: float = 2e-3,
    progress: bool = True,
) -> dict[str, Any]:
    """Train an MLP teacher (``sigma_data`` = the mixture's std) on exact samples of a testbed,
    save it to ``out_dir``; returns the logs, ``denoiser_errors`` (EDM schedule) and ``path``."""
    truth = testbeds.get_testbed(testbed_name, seed, "edm").truth
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MLPDenoiserNet(truth.dim, hidden, depth, num_classes=truth.num_classes)
    denoiser = NeuralDenoiser(
        net, truth.schedule, "edm", mixture_sigma_data(truth), truth.num_classes
    )

    def sample_data(n: int, rng: torch.Generator) -> Tensor | tuple[Tensor, Tensor]:
        x, comp = truth.sample(n, rng=rng, return_components=True)
        return x if truth.labels is None else (x, truth.labels[comp])

    hyper = {"batch_size": batch_size, "lr": lr, "seed": seed}
    logs = train_dsm(denoiser, sample_data, steps=steps, progress=progress, **hyper)
    info = {**logs, **hyper, **denoiser_errors(denoiser, truth)}
    path = save_learned_teacher(
        denoiser, out_dir, truth_testbed=testbed_name, truth_seed=seed, train_info=info
    )
    return {**info, "path": str(path)}


def init_critic_from_teacher(
    critic: NeuralDenoiser,
    teacher_sample: SampleData,
    *,
    steps: int,
    batch_size: int = 1024,
    lr: float = 2e-3,
    seed: int = 0,
    cond_drop_prob: float = 0.1,
    progress: bool = False,
) -> dict[str, float]:
    """Fit ``critic`` to the teacher's distribution by DSM (``train_dsm``).

    ``teacher_sample(n, rng)`` returns ``x: (n, dim)`` or ``(x, labels)`` drawn from the teacher
    (exact samples of a mixture, or a sampler run on any teacher). ``critic`` ends holding the
    EMA weights, with ``requires_grad`` left on. Returns ``steps``, ``final_loss``,
    ``wall_time_s``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return train_dsm(
        critic,
        teacher_sample,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        cond_drop_prob=cond_drop_prob,
        progress=progress,
    )


def teacher_score_matching(
    student: NeuralDenoiser,
    teacher: Any,
    sample_data: SampleData,
    *,
    steps: int,
    batch_size: int = 1024,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """MSD's teacher score matching (TSM; Song et al. 2024, arXiv 2410.23274, the first of the
    three stages for students smaller than the teacher, whose weights cannot be copied):

        L_TSM = E_{x0, t, eps} lambda(s) ||D_student(x_t, t, c) - D_teacher(x_t, t, c)||^2 / dim

    ``dsm_loss`` with the teacher's denoiser as the target (no gradient to the teacher), on
    ``x_t`` noised from ``sample_data``'s draws, EDM's weight and time law; conditions as drawn
    (no CFG dropout: the student serves its own classes). The paper's TSM weighting and noise
    law were not read (only its abstract and summaries, reference note b11): EDM's here, the same
    as the critic's teacher fit. Returns ``train_dsm``'s log; ``student`` ends at its EMA.
    """

    def teacher_denoiser(x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        with torch.no_grad():
            return teacher.denoise(x_t, t, cond).to(x_t.dtype)

    return train_dsm(
        student,
        sample_data,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        cond_drop_prob=0.0,
        progress=progress,
        target=teacher_denoiser,
    )
