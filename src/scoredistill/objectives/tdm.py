"""TDM — Luo et al., "Learning Few-Step Diffusion Models by Trajectory Distribution Matching", 2025.

Trajectory distribution matching, data-free (arXiv 2503.06674; official demo
``Luo-Yihong/TDM:train_tdm_demo.py`` run as its README says, ``--use_huber --use_separate``;
reference note b10). Step ``k`` of a K-step student (time ``t_k``; the next student time
``t_{k+1}``, with ``t_{K+1}`` clean data) outputs ``x̂_0 = G_θ(x_{t_k}, t_k)``. That output is
re-noised *inside its own interval* and matched there by a DMD term, normalised as in DMD:

    t   ~ U[max(u(t_{k+1}), t_floor), u(t_k) - top_margin]      (fractions of t_reference's steps)
    x_t = alpha_t x̂_0 + sigma_t eps
    Δ   = D_fake(x_t) - D_real^κ(x_t),    w = mean_pix |x̂_0 - D_real^κ(x_t)|     (sg, per sample)
    L_G = Σ_pix [sqrt((x̂_0 - sg(x̂_0 - Δ))^2 + c^2) - c] / w        (pseudo-Huber, c = 1e-3)

``D_real^κ = D_∅ + κ(D_c - D_∅)`` is the demo's ``D_r + (κ-1)(D_r^c - D_r^u)``. With
``distance="mse"`` the loss is DMD's surrogate ``0.5 ||x̂_0 - sg(x̂_0 - Δ/w)||^2`` (``dmd.py``), so a
one-step student (one interval: the whole range) is DMD. The fake critic learns the student's
trajectory distribution on the same intervals, its x0-MSE weighted by Min-SNR (γ = 5):

    L_fake = E_k E_t [ min(alpha_t^2 / sigma_t^2, 5) · mean_pix (D_fake(x_t) - sg(x̂_0))^2 ]

The intervals do not overlap, so a critic of ``(x_t, t)`` alone serves every step (TDM's README).
The library's student re-noises with fresh noise between steps (``sources.FewStepGenerator``), so
its state at ``t_{k+1}`` is ``alpha x̂_0 + sigma eps``: the demo's two stages (a DDIM move to
``t_{k+1}`` along the student's own ``ε̂``, then forward diffusion to ``t``) compose into the one
forward step above, and the demo's "mixed noise" is exactly Gaussian, so its importance weight
``exp(-mean(m^2)/2) / exp(-mean(eps^2)/2)`` is 1 and is left out. Pixels are summed and the batch
averaged, as everywhere in the library (the demo averages over pixels too: a constant factor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._ingredients import (
    NORMALIZATIONS,
    Loss,
    add_noise,
    check_reference,
    matching_logs,
    sample_t,
    student_fractions,
    surrogate_loss,
)
from .dmd import dmd_update

__all__ = ["DISTANCES", "TDM"]

DISTANCES = ("huber", "mse")


@dataclass(frozen=True)
class TDM:
    """Trajectory distribution matching of a K-step student (K = 4 in the paper and demo)."""

    t_floor: float = 0.02  # lowest score time: the demo's max(20, t_mid), step 20 of 1000
    top_margin: float = 0.01  # score times stop 10 steps below t_k (demo: randint(lo, t_k - 10))
    # PixArt-α's DDPMScheduler (linear betas 1e-4..0.02, 1000 steps): the steps the demo indexes
    t_reference: str = "vp-linear"
    distance: str = "huber"  # the README's --use_huber; "mse": DMD's squared distance
    huber_c: float = 1e-3  # demo: args.huber_c = 1e-3
    snr_cap: float = 5.0  # the fake's x0-MSE weight min(SNR, 5)
    # teacher CFG κ: 4.5 in the README's PixArt command; 1 = none (the exact conditional law)
    guidance: float = 1.0
    normalization: str = "per_sample"  # demo: w = mean |x̂_0 - D_real^κ| per sample
    eps: float = 0.0  # added to w; the demo adds none

    step_aware = True  # the loop passes ``step`` and ``student_times`` (train.two_player)

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"TDM.distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"TDM.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if not (self.huber_c > 0 and self.snr_cap > 0):
            raise ValueError(
                f"TDM.huber_c and snr_cap must be > 0, got {self.huber_c}, {self.snr_cap}"
            )
        check_reference("TDM", self.t_reference)

    def score_times(self, x: Tensor, schedule, step: int | None, student_times, rng) -> Tensor:
        """``(B,)`` times inside student step ``step``'s interval (module docstring). ``step=None``
        (a one-step student): the whole range."""
        u = student_fractions(schedule, student_times, self.t_reference)
        k = 1 if step is None else int(step)
        if not 1 <= k < len(u):
            raise ValueError(
                f"TDM: step must lie in 1..{len(u) - 1} (the student's steps), got {step}"
            )
        lo, hi = max(u[k], self.t_floor), u[k - 1] - self.top_margin
        if lo > hi:
            raise ValueError(
                f"TDM: student step {k} spans fractions ({u[k]:.4g}, {u[k - 1]:.4g}) of "
                f"{self.t_reference!r}: nothing is left between t_floor and top_margin"
            )
        ref = self.t_reference
        return sample_t(
            x.shape[0], schedule, (lo, hi), rng, dtype=x.dtype, device=x.device, reference=ref
        )

    def gradient(
        self, x: Tensor, cond, *, teacher, critic, rng, step=None, student_times=None
    ) -> dict[str, Tensor]:
        """``Δ = D_fake - D_real`` (``(B, *D)``), ``g = Δ / w`` and their parts, without gradients."""
        t = self.score_times(x, teacher.schedule, step, student_times, rng)
        with torch.no_grad():
            x_t, _, _, _ = add_noise(x.detach(), t, teacher.schedule, rng)
        parts = dmd_update(x, x_t, t, cond, teacher=teacher, critic=critic, objective=self)
        delta = torch.nan_to_num(parts["d_fake"] - parts["d_real"])
        return {**parts, "delta": delta, "t": t}

    def generator_loss(
        self,
        x: Tensor,
        cond: Tensor | None,
        *,
        teacher,
        critic,
        rng: torch.Generator | None,
        step: int | None = None,
        student_times: tuple[float, ...] | None = None,
    ) -> Loss:
        """The pseudo-Huber (or squared) distance of ``x = x̂_0: (B, *D)``, the output of student
        step ``step``, to its target ``sg(x̂_0 - Δ)``, divided by ``w``."""
        parts = self.gradient(
            x, cond, teacher=teacher, critic=critic, rng=rng, step=step, student_times=student_times
        )
        if self.distance == "mse":
            value = surrogate_loss(x, parts["g"])
        else:
            r = x - (x - parts["delta"]).detach()  # = Δ, with dr/dx = I
            huber = (r.pow(2) + self.huber_c**2).sqrt() - self.huber_c
            value = (huber.flatten(1).sum(1) / parts["w"]).mean()
        logs = {**matching_logs(parts), "w": parts["w"].mean().item()}
        return Loss(value, logs)

    def critic_loss(
        self,
        x: Tensor,
        cond: Tensor | None,
        *,
        critic,
        rng,
        step: int | None = None,
        student_times: tuple[float, ...] | None = None,
    ) -> Loss:
        """Min-SNR-weighted x0-MSE of the critic on ``sg(x)`` at times in step ``step``'s interval."""
        x = x.detach()
        t = self.score_times(x, critic.schedule, step, student_times, rng)
        x_t, _, alpha, sigma = add_noise(x, t, critic.schedule, rng)
        weight = (alpha**2 / sigma**2).clamp(max=self.snr_cap)
        err = (critic.denoise(x_t, t, cond) - x).pow(2).flatten(1).mean(1)
        value = (weight * err).mean()
        return Loss(value, {"critic_loss": value.item(), "critic_mse": err.mean().item()})
