"""Conversions between network outputs and the canonical denoiser ``D(x_t, t) ≈ E[x | x_t]``.

With ``x_t = alpha * x + sigma * eps`` every prediction is an affine function of ``(x_t, D)``:

    eps   = (x_t - alpha * D) / sigma
    score = (alpha * D - x_t) / sigma**2
    v     = alpha * eps - sigma * D                    (Salimans & Ho 2022)
    flow  = alpha' * D + sigma' * eps                  (d x_t / dt along the probability flow)
    edm F : D = c_skip * x + c_out * F                 (Karras et al. 2022, Table 1, VE form)

This module is the only place where those formulas are written. Because each conversion is
affine in ``D`` with coefficients that depend only on ``(x_t, t)``, classifier-free guidance
gives the same result in any space (``tests/test_parametrization.py`` checks it).

CFG convention (one for the whole library): ``D_w = D_uncond + w * (D_cond - D_uncond)``;
``w = 1`` is no guidance, ``w = 0`` is unconditional (diffusers' ``guidance_scale``).
DreamFusion/threestudio write ``eps_c + w' (eps_c - eps_u)``, which is ``w = w' + 1`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NULL_LABEL",
    "PREDICTIONS",
    "cat_conditions",
    "cfg_combine",
    "dreamfusion_to_cfg_scale",
    "from_denoiser",
    "guided",
    "null_condition",
    "to_denoiser",
]

NULL_LABEL = -1
"""Label meaning "no condition": the unconditional branch of classifier-free guidance."""

PREDICTIONS = ("x0", "eps", "v", "flow", "score", "edm")

Denoise = Callable[..., Tensor]


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``(B,)`` (or a scalar) to broadcast against ``x``."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim())) if c.dim() else c


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def _need_derivs(prediction: str, d_alpha: Tensor | None, d_sigma: Tensor | None) -> None:
    if prediction == "flow" and (d_alpha is None or d_sigma is None):
        raise ValueError("prediction 'flow' needs d_alpha and d_sigma (the schedule derivatives)")


def to_denoiser(
    out: Tensor,
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    prediction: str,
    *,
    d_alpha: Tensor | None = None,
    d_sigma: Tensor | None = None,
    sigma_data: float = 0.5,
) -> Tensor:
    """Convert a network output of type ``prediction`` to ``D``.

    ``out``, ``x_t``: ``(B, *D)``; ``alpha``, ``sigma`` (and the derivatives): ``(B,)`` or scalar.
    ``edm`` is EDM's F-parametrisation in the VE view ``x = x_t / alpha``, ``s = sigma / alpha``.
    """
    _check_prediction(prediction)
    _need_derivs(prediction, d_alpha, d_sigma)
    a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if prediction == "x0":
        return out
    if prediction == "eps":
        return (x_t - s * out) / a
    if prediction == "score":
        return (x_t + s**2 * out) / a
    if prediction == "v":
        return (a * x_t - s * out) / (a**2 + s**2)
    if prediction == "flow":
        da, ds = _bcast(d_alpha, x_t), _bcast(d_sigma, x_t)
        # solve [a s; da ds] [D; eps] = [x_t; out] for D
        return (ds * x_t - s * out) / (a * ds - s * da)
    x_ve, s_ve = x_t / a, s / a
    c_skip = sigma_data**2 / (s_ve**2 + sigma_data**2)
    c_out = s_ve * sigma_data / (s_ve**2 + sigma_data**2).sqrt()
    return c_skip * x_ve + c_out * out


def from_denoiser(
    d: Tensor,
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    prediction: str,
    *,
    d_alpha: Tensor | None = None,
    d_sigma: Tensor | None = None,
    sigma_data: float = 0.5,
) -> Tensor:
    """Express the denoiser ``d`` as a prediction of type ``prediction`` (inverse of ``to_denoiser``)."""
    _check_prediction(prediction)
    _need_derivs(prediction, d_alpha, d_sigma)
    a, s = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if prediction == "x0":
        return d
    eps = (x_t - a * d) / s
    if prediction == "eps":
        return eps
    if prediction == "score":
        return (a * d - x_t) / s**2
    if prediction == "v":
        return a * eps - s * d
    if prediction == "flow":
        return _bcast(d_alpha, x_t) * d + _bcast(d_sigma, x_t) * eps
    x_ve, s_ve = x_t / a, s / a
    c_skip = sigma_data**2 / (s_ve**2 + sigma_data**2)
    c_out = s_ve * sigma_data / (s_ve**2 + sigma_data**2).sqrt()
    return (d - c_skip * x_ve) / c_out


def cfg_combine(uncond: Tensor, cond: Tensor, w: float | Tensor) -> Tensor:
    """``uncond + w * (cond - uncond)``; ``w`` is a float or a per-sample ``(B,)`` tensor."""
    w = _bcast(w, cond) if torch.is_tensor(w) else w
    return uncond + w * (cond - uncond)


def null_condition(cond: Any, null_label: int = NULL_LABEL) -> Any:
    """The unconditional counterpart of ``cond``: labels ``(B,)`` become ``null_label``; a
    structured condition (``teachers.text_cond.TextCond``) gives its ``null_like()``."""
    return torch.full_like(cond, null_label) if torch.is_tensor(cond) else cond.null_like()


def cat_conditions(conds: Sequence[Any]) -> Any:
    """Conditions stacked along the batch: ``torch.cat`` for labels, ``type(c).cat`` otherwise."""
    return torch.cat(list(conds)) if torch.is_tensor(conds[0]) else type(conds[0]).cat(conds)


def guided(denoise: Denoise, w: float | Tensor, null_label: int = NULL_LABEL) -> Denoise:
    """Wrap a conditional denoiser ``denoise(x_t, t, cond)`` with classifier-free guidance.

    The returned callable has the same signature. ``cond`` carries integer labels ``(B,)``
    (the unconditional branch uses ``null_label``) or a structured condition with
    ``null_like()`` and ``cat`` (text). Both branches run in one batched call.
    """

    def denoise_cfg(x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs class labels (cond), got None")
        if not torch.is_tensor(w) and w == 1.0:
            return denoise(x_t, t, cond)
        n = x_t.shape[0]
        both = denoise(
            torch.cat([x_t, x_t]),
            torch.cat([t, t]),
            cat_conditions([null_condition(cond, null_label), cond]),
        )
        return cfg_combine(both[:n], both[n:], w)

    return denoise_cfg


def dreamfusion_to_cfg_scale(w_prime: float) -> float:
    """DreamFusion/threestudio's ``eps_c + w'(eps_c - eps_u)`` is our ``w = w' + 1``."""
    return w_prime + 1.0
