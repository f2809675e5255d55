"""f-distill — Xu et al., "One-step Diffusion Models with f-Divergence Distribution Matching",
2025 (Theorem 1; ``NVlabs/FastGen:fastgen/methods/distribution_matching/f_distill.py``, note b8).

For ``D_f(p || q) = E_q[f(p/q)]`` and the density ratio ``r = p_t / q_t`` at ``x_t``:

    ∇_θ D_f(p_t || q_t) = E[ h(r(x_t)) (s_fake - s_real)(x_t) ∂x_t/∂θ ],    h(r) = f''(r) r^2
    g = h(r) (D_fake - D_real) / w,      L = 0.5 ||x - sg(x - g)||^2

i.e. DMD2's update (``dmd.py``) with a per-sample factor ``h``; reverse KL (``h ≡ 1``) is DMD.
With the exact ratio and ``w = 1``, ``E[(dx/dθ)^T g] = (sigma^2/alpha^2) ∇_θ D_f(p_t || q_t)``.
``h`` per divergence (and the ``D_f`` it differentiates): rkl 1 (KL(q||p)), kl ``r`` (KL(p||q)),
js ``r/(1+r)`` (2·JS), sh ``r^0.5`` (4(1 - BC), i.e. 4× the squared Hellinger ``1 - ∫√(pq)``;
revsic/flowmodels uses 0.25 r^0.5), sf ``1/(1+r)``, jf ``1 + r``.
``r`` comes from ``log_ratio(x_t, t, cond) -> (B,)`` when given (an exact ``log p_t - log q_t``),
else from the critic's discriminator head (``critic.logit``; FastGen: mean logit, clamped to
[-10, 10]), trained by the mandatory diffusion-GAN term of ``_gan.py`` (FastGen asserts
``gan_loss_weight_gen > 0``). Departure: FastGen's discriminator reads frozen *teacher* features;
an exact teacher has none, so the head sits on the critic's features as in DMD2.

As FastGen's default (``fastgen/configs/methods/config_f_distill.py``: ``ratio_normalization =
True``, ``bin_num = 10``, ``ratio_ema_rate = 0.0``; ``FdistillModel._get_f_div_weighting_h``):

    r = clamp(exp(clamp(logit, -10, 10)), 0.1, 20)
    r <- r / (mean of r over the batch samples in r's time bin + 1e-6)    (``ratio_bins``)
    h = h(r),   h <- h / mean_batch(h)                                     (``normalize_h``)

the ratio (not ``h``) is normalised per bin, before ``h``. FastGen's bins are ``bin_num`` equal
bins of its ``t`` over ``[min_t, max_t]``; for its EDM networks (CIFAR-10, ImageNet-64, the
paper's) ``t = sigma`` on [0.002, 80], so here the bins are equal in the noise level
``sigma / alpha`` over ``ratio_bin_range`` (schedule invariant). With ``ratio_ema_rate = 0`` a
bin's mean is the current batch's, so this is stateless; FastGen's ImageNet-64 config sets the
EMA to 0.5, which needs state the objective does not hold (not implemented), as is the
all-reduce of the bin sums and of ``mean(h)`` across ranks. The normalisations bias the estimator
of Theorem 1 (tests turn them off to check it). Times: DMD2's steps on Karras' grid
(``t_reference = "edm"``); FastGen's f-distill config draws its ``polynomial`` law instead
(Karras indices 2..998, ``EDMNoiseSchedule.sample_t``), not followed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._gan import gan_generator_loss
from ._ingredients import NORMALIZATIONS, Loss, bcast, check_reference, surrogate_loss
from .dmd import DMD, critic_with_gan

__all__ = ["H_FUNCTIONS", "FDistill", "normalize_per_bin"]

H_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "rkl": torch.ones_like,  # reverse KL: DMD
    "kl": lambda r: r,  # forward KL
    "js": lambda r: r / (1 + r),  # Jensen–Shannon
    "sh": torch.sqrt,  # squared Hellinger
    "sf": lambda r: 1 / (1 + r),  # softened reverse KL
    "jf": lambda r: 1 + r,  # Jeffreys
}

LogRatio = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def normalize_per_bin(r: Tensor, level: Tensor, bins: int, span: tuple[float, float]) -> Tensor:
    """``r / (mean of r in its bin + 1e-6)`` for ``r, level: (B,)``, with ``bins`` equal bins of
    ``level`` over ``span = (lo, hi)`` (ends clamped into the first and last bin); FastGen's
    ``_get_f_div_weighting_h`` at ``ratio_ema_rate = 0``, its epsilons included."""
    lo, hi = span
    idx = ((level.double() - lo) / ((hi - lo) / bins)).floor().long().clamp(0, bins - 1)
    count = torch.bincount(idx, minlength=bins).double()
    total = torch.bincount(idx, weights=r.double(), minlength=bins)
    mean = total / (count + 1e-6)
    return (r.double() / (mean[idx] + 1e-6)).to(r.dtype)


@dataclass(frozen=True)
class FDistill:
    """f-divergence distribution matching; ``divergence`` picks ``h`` from ``H_FUNCTIONS``."""

    divergence: str = "js"  # f-distill paper: JS is best overall (CIFAR-10, ImageNet-64)
    t_range: tuple[float, float] = (0.02, 0.98)  # the DMD2 loss it extends (b2)
    # FastGen's f-distill runs are EDM networks (CIFAR-10, ImageNet-64) on Karras' 1000 sigmas;
    # the steps are DMD2's, mapped by log-SNR (dmd.py)
    t_reference: str = "edm"
    normalization: str = "per_sample"  # DMD2's w, as in FastGen's VSD loss
    eps: float = 1e-6  # FastGen common_loss.py adds 1e-6 to w
    guidance: float = 1.0  # teacher-only CFG (b20.2), 1 = none
    log_ratio_clip: tuple[float, float] | None = (-10.0, 10.0)  # FastGen clamps the logit
    ratio_clip: tuple[float, float] | None = (0.1, 20.0)  # FastGen ratio_lower / ratio_upper
    normalize_h: bool = True  # FastGen: h <- h / mean(h) over the batch
    ratio_bins: int = 10  # FastGen ratio_normalization=True, bin_num=10 (EMA 0); 0 = off
    ratio_bin_range: tuple[float, float] = (0.002, 80.0)  # FastGen EDM min_t, max_t (t = sigma)
    critic_t_range: tuple[float, float] = (0.0, 1.0)  # the fake's DSM over all times (DMD2)
    sigma_data: float | None = None  # EDM's sigma_d in the critic's weighting; None: the critic's
    gan_generator_weight: float = 5e-3  # FastGen SDXL f-distill config (mandatory > 0 there)
    gan_critic_weight: float = 1e-2  # DMD2's D loss weight, which f-distill inherits
    gan_t_range: tuple[float, float] = (0.0, 1.0)  # noise levels the discriminator sees

    @property
    def needs_real(self) -> bool:
        """Whether ``critic_loss`` needs teacher samples (the GAN's real class)."""
        return self.gan_generator_weight > 0

    def __post_init__(self) -> None:
        if self.divergence not in H_FUNCTIONS:
            raise ValueError(
                f"FDistill.divergence must be one of {sorted(H_FUNCTIONS)}, got {self.divergence!r}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"FDistill.normalization must be one of {NORMALIZATIONS}, "
                f"got {self.normalization!r}"
            )
        lo, hi = self.ratio_bin_range
        if self.ratio_bins < 0 or not 0 <= lo < hi:
            raise ValueError(
                "FDistill.ratio_bins must be >= 0 and ratio_bin_range (lo, hi) with 0 <= lo < hi, "
                f"got {self.ratio_bins}, {self.ratio_bin_range}"
            )
        check_reference("FDistill", self.t_reference)

    def weight(self, log_r: Tensor, level: Tensor | None = None) -> Tensor:
        """``h(r)``, ``(B,)``, after FastGen's clamps and normalisations (module docstring);
        ``level: (B,)`` is each sample's noise level ``sigma / alpha`` (needed for the bins)."""
        if self.log_ratio_clip is not None:
            log_r = log_r.clamp(*self.log_ratio_clip)
        r = log_r.exp()
        if self.ratio_clip is not None:
            r = r.clamp(*self.ratio_clip)
        if self.ratio_bins > 0:
            if level is None:
                raise ValueError("FDistill.weight with ratio_bins > 0 needs level (sigma / alpha)")
            r = normalize_per_bin(r, level, self.ratio_bins, self.ratio_bin_range)
        h = H_FUNCTIONS[self.divergence](r)
        return h / h.mean() if self.normalize_h else h

    def generator_loss(
        self,
        x: Tensor,
        cond: Tensor | None,
        *,
        teacher,
        critic,
        rng: torch.Generator | None,
        log_ratio: LogRatio | None = None,
    ) -> Loss:
        """Surrogate with gradient ``h(r) g_DMD / B`` w.r.t. ``x: (B, *D)``."""
        dmd = DMD(
            self.t_range,
            self.t_reference,
            normalization=self.normalization,
            eps=self.eps,
            guidance=self.guidance,
        )
        parts = dmd.gradient(x, cond, teacher=teacher, critic=critic, rng=rng)
        if self.divergence == "rkl":
            h = torch.ones_like(parts["w"])
        else:
            if log_ratio is None and self.gan_generator_weight <= 0:
                raise ValueError(
                    f"FDistill(divergence={self.divergence!r}) needs a density ratio: "
                    "gan_generator_weight > 0 (the discriminator head) or log_ratio(x_t, t, cond)"
                )
            with torch.no_grad():
                ratio = log_ratio if log_ratio is not None else critic.logit
                log_r = ratio(parts["x_t"], parts["t"], cond).reshape(-1).to(x.dtype)
                alpha, sigma = teacher.schedule.alpha_sigma(parts["t"])
                h = self.weight(log_r, sigma / alpha)
        g = bcast(h, x) * parts["g"]
        logs = {
            "g_abs": g.abs().mean().item(),
            "h_max": h.max().item(),
            "w": parts["w"].mean().item(),
        }
        value = surrogate_loss(x, g)
        if self.gan_generator_weight > 0:
            gan, gan_logs = gan_generator_loss(
                x, cond, critic, t_range=self.gan_t_range, rng=rng, t_reference=self.t_reference
            )
            value, logs = value + self.gan_generator_weight * gan, logs | gan_logs
        return Loss(value, logs)

    def critic_loss(self, x: Tensor, cond: Tensor | None, *, critic, rng, real=None) -> Loss:
        """EDM-weighted DSM of the critic on ``sg(x)`` plus the discriminator loss on ``x`` vs
        ``real = (x_real, labels | None)`` (weighted ``gan_critic_weight``)."""
        return critic_with_gan(self, x, cond, critic=critic, rng=rng, real=real)
