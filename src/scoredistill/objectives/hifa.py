"""HiFA — Zhu, Zhuang & Xu, "HiFA: High-fidelity Text-to-3D Generation with Advanced Diffusion
Guidance", ICLR 2024: score distillation with a pixel-space term.

One ``t`` per step, ``z_t = alpha z + sigma eps``; the target latent ``z^`` is the guided teacher's
multi-step denoise of ``z_t`` (DDIM(eta) from ``t`` down to 0 in steps of ``1/K`` of SD's 1000,
no gradient); with the render ``x`` (the image the latents ``z = E(x)`` encode) and the decoder
``D``:

    L = w [ lambda_sds 0.5 ||z - sg(z^)||^2 + lambda_rgb 0.5 ||x - sg(D(z^))||^2 ]

summed over elements (mean over the batch here). The second term pulls the pixels themselves
toward the decoded target, which the first cannot: the latent term reaches ``x`` only through the
encoder's transposed Jacobian, blind to the directions the encoder discards (a render can then
"fool" the encoder, docs/text_to_image.md "The fields are not objects").

Defaults are the official code's (JunzheJosephZhu/HiFA ``main.py``, ``nerf/sd.py``):
``lambda_rgb`` 0.1, ``lambda_sds`` 1, ``sds_weight="constant"`` (w = 0.05), ``guidance_scale``
100 (``eps_u + s (eps_c - eps_u)``: this library's ``D_∅ + w (D_c - D_∅)``, so 100),
``denoising_steps`` 4 with DDIM ``eta`` 1, ``scheduler="ddim"``; pixels in [0, 1] (the residual
here is halved from the renders' [-1, 1]). ``t`` follows ``timestep_scheduling="sqrt"``, the
official default: deterministic, ``t = min + (max - min)(1 - sqrt(progress))`` with
``(min_percent, max_percent) = (0.3, 0.98)`` of SD's table (mapped by log-SNR, as every score
objective), ``progress = step / steps`` from the optimisation loop; ``"linear"`` drops the square
root, ``"random"`` draws ``t = 20 + 960 u`` (``t_range``). The last DDIM step lands at
``t_K < 1/K`` and its clean estimate is ``z^`` (diffusers' DDIM steps once more to
``alphas_cumprod[0]``, adding noise of std <= 0.03).

``pixels`` is the render (a field source passes it, ``runs.optimize_sd_field``); without it the
image is ``D(z)`` through the decoder (latent particles), or ``z`` itself where the teacher has no
decoder (a pixel-space teacher: the image term is then the latent term, ``lambda_rgb / 4`` of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..samplers import ancestral
from ._ingredients import Loss, add_noise, check_reference, guided_denoise, ref_to_t, sample_u

__all__ = ["T_SCHEDULES", "HiFA", "denoise_grid"]

T_SCHEDULES = ("sqrt", "linear", "random")


def denoise_grid(u: float, steps: int) -> Tensor:
    """HiFA's DDIM grid as fractions of SD's steps: ``u, u - 1/K, ...`` while ``>= 0``
    (``range(t, -1, -1000 // K)`` in ``nerf/sd.py``'s ``denoise``), float64."""
    n = int(u * steps + 1e-9) + 1
    return torch.tensor([u - k / steps for k in range(n)], dtype=torch.float64)


def _image_and_target(x: Tensor, z_hat: Tensor, teacher, pixels: Tensor | None):
    """``(image, sg(target))`` of the image term: the renders against ``D(z^)``; without
    renders ``D(x)`` against ``D(z^)``; without a decoder ``x`` against ``z^``."""
    decode = getattr(teacher, "decode", None)
    if decode is None:
        if pixels is not None:
            raise ValueError("HiFA: renders (pixels=) need a teacher with a decoder")
        return x, z_hat
    with torch.no_grad():
        target = decode(z_hat)
    return (decode(x) if pixels is None else pixels), target


@dataclass(frozen=True)
class HiFA:
    """SDS with a multi-step target and HiFA's image-space term (module docstring)."""

    t_schedule: str = "sqrt"  # timestep_scheduling: "sqrt" | "linear" | "random"
    t_anneal: tuple[float, float] = (0.3, 0.98)  # (min_percent, max_percent) of sqrt / linear
    t_range: tuple[float, float] = (0.02, 0.98)  # "random": t = 20 + 960 u
    t_reference: str = "vp-scaled-linear"  # SD's 1000-step table, as SDS
    guidance: float = 100.0  # guidance_scale 100 (diffusers' CFG form)
    lambda_sds: float = 1.0
    lambda_rgb: float = 0.1
    scale: float = 0.05  # sds_weight "constant": w = 0.05
    denoise_steps: int = 4  # denoising_steps
    eta: float = 1.0  # DDIM eta

    def __post_init__(self) -> None:
        check_reference("HiFA", self.t_reference)
        if self.denoise_steps < 1:
            raise ValueError(f"HiFA.denoise_steps must be >= 1, got {self.denoise_steps}")
        if self.lambda_rgb < 0 or self.lambda_sds < 0:
            raise ValueError("HiFA.lambda_rgb and HiFA.lambda_sds must be >= 0")
        if self.t_schedule not in T_SCHEDULES:
            raise ValueError(
                f"HiFA.t_schedule must be one of {T_SCHEDULES}, got {self.t_schedule!r}"
            )
        if not 0.0 <= self.t_anneal[0] <= self.t_anneal[1] <= 1.0:
            raise ValueError(
                f"HiFA.t_anneal must satisfy 0 <= min <= max <= 1, got {self.t_anneal}"
            )

    def fraction(self, progress: float | None, rng) -> float:
        """The step's ``t`` as a fraction of SD's table (``t_schedule``)."""
        if self.t_schedule == "random":
            return float(sample_u(1, self.t_range, rng)[0])
        if progress is None:
            raise ValueError(
                f"HiFA.t_schedule={self.t_schedule!r} anneals t over the run and needs the "
                "loop's progress (step / steps); 'random' does not"
            )
        lo, hi = self.t_anneal
        p = math.sqrt(progress) if self.t_schedule == "sqrt" else progress
        return lo + (hi - lo) * (1.0 - p)

    def target(
        self, x: Tensor, cond, *, teacher, rng, progress: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(z^, t)``: the guided multi-step denoise of ``x`` noised at the step's ``t``."""
        sched = teacher.schedule
        u = self.fraction(progress, rng)
        ts = ref_to_t(sched, denoise_grid(u, self.denoise_steps), self.t_reference)
        t = ts[:1].to(x.dtype).expand(x.shape[0])
        with torch.no_grad():
            x_t = add_noise(x.detach(), t, sched, rng)[0]
            denoise = guided_denoise(teacher, self.guidance, cond)
            z_hat = ancestral(denoise, sched, x_t, ts.to(x.dtype), cond, rng=rng, eta=self.eta)
        return torch.nan_to_num(z_hat), t

    def generator_loss(
        self,
        x: Tensor,
        cond,
        *,
        teacher,
        critic=None,
        rng,
        pixels: Tensor | None = None,
        progress: float | None = None,
    ) -> Loss:
        """HiFA's loss on latents ``x: (B, *D)``; ``pixels``: the images they encode;
        ``progress``: ``step / steps`` of the run (the annealed ``t``)."""
        z_hat, t = self.target(x, cond, teacher=teacher, rng=rng, progress=progress)
        latent = 0.5 * (x - z_hat).pow(2).flatten(1).sum(1).mean()
        value = self.scale * self.lambda_sds * latent
        logs = {"t": float(t[0]), "latent_term": float(latent.detach())}
        if self.lambda_rgb > 0:
            image, target = _image_and_target(x, z_hat, teacher, pixels)
            rgb = 0.5 * ((image - target) / 2).pow(2).flatten(1).sum(1).mean()
            value = value + self.scale * self.lambda_rgb * rgb
            logs["rgb_term"] = float(rgb.detach())
        return Loss(value, logs)
