"""CSD — Yu et al., "Text-to-3D with Classifier Score Distillation", ICLR 2024 (official
``CVMI-Lab/Classifier-Score-Distillation:deep_floyd_simple_guidance.py``, reference note b4), and
CSM — TV-3DG (2024, "classifier score matching", arXiv 2410.21299; no code released). Paper
equation numbers unchecked (the note records none).

SDS splits as ``eps_w - eps = (eps_∅ - eps) + w (eps_c - eps_∅)``; both keep the classifier term
``eps_c - eps_∅ = -sigma ∇ log p_t(c | x_t)`` and drop the rest. CSD in the official code's
coefficient form (its comment: SDS is ``cond = w, null = 1 - w, noise = -1``):

    t ~ U{20..980} of DeepFloyd IF's 1000 steps,  x_t = alpha x + sigma eps   (fresh eps)
    g = w(t) (a_c eps_c + a_neg eps_neg + a_∅ eps_∅ + a_eps eps),  then g /= ||g||_2 + 1e-8
    defaults a_c = 1, a_∅ = -1 (plain classifier score), w = 1, L2 norm over the whole batch

``csd-if.yaml`` anneals ``a_∅: -1 → 0`` and ``a_neg: 0 → -1`` over 5k steps (ending at
``eps_c - eps_neg``): the caller changes the fields per step (``dataclasses.replace``). The
steps are IF's (cosine table) mapped by log-SNR (``t_reference``); ``weighting`` is a function of
the log-SNR (``_steps.weight``).
``eps_neg`` uses the class ``negative_label``. With the gradient normalised only the learning
rate sets the step size.

CSM: ``g = w(t) s (eps_c - eps_∅)`` at ``x_t = alpha x + sigma eps*`` with a **deterministic**
noise ``eps*``. From the paper text (abstract) only: "classifier term only" and "deterministic
noise addition". UNVERIFIED, kept as fields: the noising rule (here one fixed Gaussian tensor per
run, ``fixed_noise``; pass ``noise=`` e.g. ``Particles.noise``), ``weighting``, ``guidance`` and
``t_range``. The visual-prompt fusion and calibration modules are not objectives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..parametrization import null_condition
from ._ingredients import Loss, add_noise, bcast, check_reference, sample_t, surrogate_loss
from ._steps import WEIGHTINGS, class_eps, fixed_noise, need_labels, score_logs, weight

__all__ = ["CSD", "CSM"]


@dataclass(frozen=True)
class CSD:
    """Classifier score distillation with the official coefficient vector."""

    t_range: tuple[float, float] = (0.02, 0.98)  # csd-if.yaml: max 0.98 (-> 0.5 at 5k steps)
    # csd-if.yaml's guidance is DeepFloyd/IF-I-XL-v1.0, whose DDPMScheduler table is
    # squaredcos_cap_v2 (its scheduler/scheduler_config.json)
    t_reference: str = "vp-cosine"
    cond_scale: float = 1.0  # a_c, official default
    null_scale: float = -1.0  # a_∅, official default (annealed to 0 in csd-if.yaml)
    negative_scale: float = 0.0  # a_neg, official "uncond_scale" (annealed to -1 in csd-if.yaml)
    noise_scale: float = 0.0  # a_eps (-1 with a_c = w, a_∅ = 1 - w gives SDS)
    negative_label: int | None = None  # class used as the negative prompt (needed if a_neg != 0)
    grad_normalize: bool = True  # official: g / (||g||_2 + 1e-8) over the whole batch
    weighting: str = "uniform"  # csd-if.yaml weighting_strategy

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.negative_scale != 0 and self.negative_label is None:
            raise ValueError("CSD.negative_scale != 0 needs negative_label (the negative class)")
        check_reference("CSD", self.t_reference)

    def gradient(self, x: Tensor, cond: Tensor | None, *, teacher, rng) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        cond = need_labels("CSD", cond)
        sched = teacher.schedule
        n, ref = x.shape[0], self.t_reference
        t = sample_t(n, sched, self.t_range, rng, dtype=x.dtype, device=x.device, reference=ref)
        with torch.no_grad():
            x_t, eps, alpha, sigma = add_noise(x.detach(), t, sched, rng)
            labels = [cond, null_condition(cond)]
            if self.negative_scale != 0:
                labels.append(torch.full_like(cond, self.negative_label))
            preds = class_eps(teacher, x_t, t, alpha, sigma, labels)
            g = self.cond_scale * preds[0] + self.null_scale * preds[1] + self.noise_scale * eps
            if self.negative_scale != 0:
                g = g + self.negative_scale * preds[2]
            g = torch.nan_to_num(bcast(weight(self.weighting, alpha, sigma), x) * g)
            if self.grad_normalize:
                g = g / (g.norm() + 1e-8)
        return {"g": g, "t": t, "x_t": x_t, "eps": eps, "eps_cond": preds[0], "eps_null": preds[1]}

    def generator_loss(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic=None, rng: torch.Generator | None
    ) -> Loss:
        """Surrogate whose gradient w.r.t. ``x: (B, *D)`` is ``g / B``; ``critic`` is unused."""
        parts = self.gradient(x, cond, teacher=teacher, rng=rng)
        return Loss(surrogate_loss(x, parts["g"]), score_logs(parts["g"], parts["t"]))


@dataclass(frozen=True)
class CSM:
    """Classifier score matching (TV-3DG): classifier term on deterministic noise. UNVERIFIED."""

    t_range: tuple[float, float] = (0.02, 0.98)  # UNVERIFIED: SDS's range assumed
    t_reference: str = "vp-scaled-linear"  # UNVERIFIED: SDS's (Stable Diffusion's) steps assumed
    guidance: float = 7.5  # s on eps_c - eps_∅; UNVERIFIED (SD's usual scale assumed)
    weighting: str = "uniform"  # UNVERIFIED: CSD's choice assumed
    noise_seed: int = 0  # the deterministic eps* when no ``noise=`` is passed (UNVERIFIED rule)

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check_reference("CSM", self.t_reference)

    def gradient(
        self, x: Tensor, cond: Tensor | None, *, teacher, rng, noise: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The per-sample update ``g`` (``(B, *D)``) and its parts, all without gradients."""
        cond = need_labels("CSM", cond)
        sched = teacher.schedule
        n, ref = x.shape[0], self.t_reference
        t = sample_t(n, sched, self.t_range, rng, dtype=x.dtype, device=x.device, reference=ref)
        with torch.no_grad():
            alpha, sigma = sched.alpha_sigma(t)
            eps = fixed_noise(x, noise, self.noise_seed)
            x_t = bcast(alpha, x) * x.detach() + bcast(sigma, x) * eps
            labels = [cond, null_condition(cond)]
            eps_c, eps_0 = class_eps(teacher, x_t, t, alpha, sigma, labels)
            w = weight(self.weighting, alpha, sigma)
            g = torch.nan_to_num(bcast(w, x) * self.guidance * (eps_c - eps_0))
        return {"g": g, "t": t, "x_t": x_t, "eps": eps, "eps_cond": eps_c, "eps_null": eps_0}

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
        return Loss(surrogate_loss(x, parts["g"]), score_logs(parts["g"], parts["t"]))
