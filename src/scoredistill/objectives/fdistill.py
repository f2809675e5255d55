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
an exact teacher has none, so the head sits on the critic's features as in DMD2. As in FastGen
``r`` is clamped to [0.1, 20] and ``h`` divided by its batch mean. Not implemented: FastGen's
per-time-bin EMA of ``r`` (it needs state; the objective holds none) and the global
(all-reduced) mean of ``h``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._gan import gan_generator_loss
from ._ingredients import NORMALIZATIONS, Loss, bcast, surrogate_loss
from .dmd import DMD, critic_with_gan

__all__ = ["H_FUNCTIONS", "FDistill"]

H_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "rkl": torch.ones_like,  # reverse KL: DMD
    "kl": lambda r: r,  # forward KL
    "js": lambda r: r / (1 + r),  # Jensen–Shannon
    "sh": torch.sqrt,  # squared Hellinger
    "sf": lambda r: 1 / (1 + r),  # softened reverse KL
    "jf": lambda r: 1 + r,  # Jeffreys
}

LogRatio = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class FDistill:
    """f-divergence distribution matching; ``divergence`` picks ``h`` from ``H_FUNCTIONS``."""

    divergence: str = "js"  # f-distill paper: JS is best overall (CIFAR-10, ImageNet-64)
    t_range: tuple[float, float] = (0.02, 0.98)  # the DMD2 loss it extends (b2)
    normalization: str = "per_sample"  # DMD2's w, as in FastGen's VSD loss
    eps: float = 1e-6  # FastGen common_loss.py adds 1e-6 to w
    guidance: float = 1.0  # teacher-only CFG (b20.2), 1 = none
    log_ratio_clip: tuple[float, float] | None = (-10.0, 10.0)  # FastGen clamps the logit
    ratio_clip: tuple[float, float] | None = (0.1, 20.0)  # FastGen ratio_lower / ratio_upper
    normalize_h: bool = True  # FastGen: h <- h / mean(h) over the batch
    critic_t_range: tuple[float, float] = (0.0, 1.0)  # the fake's DSM over all times (DMD2)
    sigma_data: float = 0.5  # EDM's sigma_d in the critic's weighting
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

    def weight(self, log_r: Tensor) -> Tensor:
        """``h(r)``, ``(B,)``, after FastGen's clamps and batch normalisation."""
        if self.log_ratio_clip is not None:
            log_r = log_r.clamp(*self.log_ratio_clip)
        r = log_r.exp()
        if self.ratio_clip is not None:
            r = r.clamp(*self.ratio_clip)
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
        dmd = DMD(self.t_range, self.normalization, self.eps, self.guidance)
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
                h = self.weight(log_r)
        g = bcast(h, x) * parts["g"]
        logs = {
            "g_abs": g.abs().mean().item(),
            "h_max": h.max().item(),
            "w": parts["w"].mean().item(),
        }
        value = surrogate_loss(x, g)
        if self.gan_generator_weight > 0:
            gan, gan_logs = gan_generator_loss(x, cond, critic, t_range=self.gan_t_range, rng=rng)
            value, logs = value + self.gan_generator_weight * gan, logs | gan_logs
        return Loss(value, logs)

    def critic_loss(self, x: Tensor, cond: Tensor | None, *, critic, rng, real=None) -> Loss:
        """EDM-weighted DSM of the critic on ``sg(x)`` plus the discriminator loss on ``x`` vs
        ``real = (x_real, labels | None)`` (weighted ``gan_critic_weight``)."""
        return critic_with_gan(self, x, cond, critic=critic, rng=rng, real=real)
