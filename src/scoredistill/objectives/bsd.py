"""BSD — Huang et al., "PlacidDreamer: Advancing Harmony in Text-to-3D Generation", ACM MM 2024
(balanced score distillation; official ``HansenHuang0823/PlacidDreamer:guidance/sd_utils.py::
train_step_BSD``, reference note b7; paper equation number unchecked, the note records none).

Two directions, a "classifier" ``c`` and a "denoise" ``d``, balanced by the min-norm point of
their convex hull (the closed form of two-task MGDA / Frank–Wolfe), per sample:

    t ~ U{20..500} of SD's 1000 steps (mapped by log-SNR),  x_t = alpha x + sigma eps
    c = k_c (eps_c - eps_∅),   d = k_d eps_∅          ("null"; ``_auto``: d = k_d (eps_∅ - eps))
    a* = clip(<d - c, d> / ||d - c||^2, 0, 1)  = argmin_{a in [0,1]} ||a c + (1 - a) d||
    g = w(t) (a* c + (1 - a*) d),   w = sqrt(alpha_bar_t)
    L = 0.5 ||x - sg(x - g)||^2

Official constants (backbone-dependent): ``k_c = 15, d = eps_∅`` (3D runs); ``_auto``:
``k_c = 1, d = 1.25 (eps_∅ - eps)``; the 2-D script ``d = 0.018 eps_∅``. ``d = eps_∅`` alone
is not a residual: it has SDS's mean for a Gaussian teacher (``E eps = 0``) but more variance.
Times and noise follow LucidDreamer: the upper bound decays 0.98 -> 0.5 over the warm-up (the
caller's schedule); ``noise=`` fixes ``eps`` (LucidDreamer ``fix_noise``). The official code
reduces with ``SpecifyGradient`` (``dL/dx = g``); here ``g / B`` as everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..parametrization import null_condition
from ._ingredients import Loss, bcast, check_reference, sample_t, surrogate_loss
from ._steps import WEIGHTINGS, class_eps, need_labels, score_logs, weight

__all__ = ["BSD", "min_norm_weight"]

DENOISE_TERMS = ("null", "residual")


def min_norm_weight(c: Tensor, d: Tensor) -> Tensor:
    """Per-sample ``a* = argmin_{a in [0, 1]} ||a c + (1 - a) d||`` for ``c, d: (B, *D)``."""
    diff = (d - c).flatten(1)
    num = (diff * d.flatten(1)).sum(1)
    den = diff.pow(2).sum(1)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 0.0).clamp(0, 1)


@dataclass(frozen=True)
class BSD:
    """Balanced score distillation: MGDA min-norm mix of a classifier and a denoise direction."""

    t_range: tuple[float, float] = (0.02, 0.5)  # LucidDreamer base after warm-up
    # LucidDreamer's steps (PlacidDreamer builds on it) index Stable Diffusion's DDIMScheduler
    # (scaled_linear): EnVision-Research/LucidDreamer guidance/sd_utils.py
    t_reference: str = "vp-scaled-linear"
    classifier_scale: float = 15.0  # k_c (train_step_BSD); 1 in the _auto variant
    denoise_term: str = "null"  # d = k_d eps_∅ ("null") or k_d (eps_∅ - eps) ("residual", _auto)
    denoise_scale: float = 1.0  # k_d: 1 (3D), 1.25 (_auto), 0.018 (2-D script)
    weighting: str = "sqrt_abar"  # w = sqrt(alpha_bar_t)

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"BSD.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.denoise_term not in DENOISE_TERMS:
            raise ValueError(
                f"BSD.denoise_term must be one of {DENOISE_TERMS}, got {self.denoise_term!r}"
            )
        check_reference("BSD", self.t_reference)

    def gradient(
        self, x: Tensor, cond: Tensor | None, *, teacher, rng, noise: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        cond = need_labels("BSD", cond)
        sched = teacher.schedule
        n, ref = x.shape[0], self.t_reference
        t = sample_t(n, sched, self.t_range, rng, dtype=x.dtype, device=x.device, reference=ref)
        with torch.no_grad():
            a, s = sched.alpha_sigma(t)
            if noise is None:
                noise = torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)
            x_t = bcast(a, x) * x.detach() + bcast(s, x) * noise
            eps_c, eps_0 = class_eps(teacher, x_t, t, a, s, [cond, null_condition(cond)])
            c = self.classifier_scale * (eps_c - eps_0)
            d = self.denoise_scale * (eps_0 - noise if self.denoise_term == "residual" else eps_0)
            a_star = min_norm_weight(c, d)
            mix = bcast(a_star, x) * c + bcast(1 - a_star, x) * d
            g = torch.nan_to_num(bcast(weight(self.weighting, a, s), x) * mix)
        return {"g": g, "t": t, "c": c, "d": d, "alpha_star": a_star, "eps": noise}

    def generator_loss(
        self,
        x: Tensor,
        cond: Tensor | None,
        *,
        teacher,
        critic=None,
        rng: torch.Generator | None,
        noise: Tensor | None = None,
    ) -> Loss:
        """Surrogate whose gradient w.r.t. ``x: (B, *D)`` is ``g / B``; ``critic`` is unused."""
        parts = self.gradient(x, cond, teacher=teacher, rng=rng, noise=noise)
        logs = {
            **score_logs(parts["g"], parts["t"]),
            "alpha_star": parts["alpha_star"].mean().item(),
        }
        return Loss(surrogate_loss(x, parts["g"]), logs)
