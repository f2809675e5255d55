"""Ingredients shared by every objective: times, noise, the gradient surrogate, the critic loss.

Conventions (DESIGN.md, "Diffusion conventions"):

- forward process ``x_t = alpha * x + sigma * eps`` on the critic's/teacher's ``Schedule``;
- a time range ``(lo, hi)`` is a paper's range in the paper's own timesteps: fractions ``u`` of the
  sampler range ``[t_min, t_max]`` of a *reference* schedule (an objective's ``t_reference``, the
  schedule the paper's steps index: SD's ``vp-scaled-linear``, DDPM's ``vp-linear``, EDM's Karras
  grid ``edm``). Each draw ``u ~ U[lo, hi]`` keeps its log-SNR on the schedule in use
  (``ref_to_t``): ``lambda = log_snr(ref, t_ref(u))``, ``t = t_from_log_snr(schedule, lambda)``,
  clamped to ``[t_min, t_max]``; so an objective sees the same noise levels on every schedule
  (issue 15). On the 1000-entry tables step ``k`` is ``u = k / 999``; the papers' "2 %" is step 20,
  ``u = 0.02`` (0.1 % apart). Without a reference ``u`` is a fraction of the schedule's own range.
  ``lo == hi`` fixes ``t``;
- weights ``w(t)`` are functions of the log-SNR alone (``_steps.weight``), never of the raw
  ``sigma`` of one schedule, so they too are equal on VP and EDM at equal SNR;
- the gradient surrogate ``0.5 * ||x - sg(x - g)||^2``, summed over non-batch dims and averaged
  over the batch, so ``d loss / d x = g / B``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..parametrization import NULL_LABEL, guided
from ..schedules import Schedule, get_schedule, log_snr, t_from_log_snr

__all__ = [
    "GuidedView",
    "Loss",
    "accepts",
    "add_noise",
    "bcast",
    "check_reference",
    "denoise_pair_through_input",
    "denoising_loss",
    "drop_labels",
    "edm_weight",
    "frozen_params",
    "guided_denoise",
    "matching_logs",
    "mean_abs",
    "normalizer",
    "per_t_bins",
    "ref_to_t",
    "sample_t",
    "sample_t_lognormal",
    "sample_u",
    "student_fractions",
    "surrogate_loss",
    "t_to_ref",
]


@dataclass
class Loss:
    """A scalar loss to call ``backward`` on, and floats worth logging."""

    value: Tensor
    logs: dict[str, float] = field(default_factory=dict)


def accepts(objective: Any, name: str) -> bool:
    """Whether ``generator_loss`` takes keyword ``name`` (a wrapper: its base's): what a source
    (``camera=``, ``pixels=``) or a loop (``progress=``) hands an objective besides its samples."""
    params = inspect.signature(objective.generator_loss).parameters
    if name in params:
        return True
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return var_kw and hasattr(objective, "base") and accepts(objective.base, name)


def bcast(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``x: (B, *D)``."""
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


def mean_abs(x: Tensor) -> Tensor:
    """Per-sample mean of ``|x|`` over the non-batch dims, shape ``(B,)``."""
    return x.abs().flatten(1).mean(1)


def per_t_bins(name: str, values: Tensor, t: Tensor, bins: int = 4) -> dict[str, float]:
    """Means of per-sample ``values: (B,)`` in ``bins`` equal bins of ``t`` (a diagnostic users
    ask for: where in time the teacher and the critic disagree). Empty bins are left out."""
    idx = (t.clamp(0, 1 - 1e-9) * bins).long()
    out = {}
    for b in range(bins):
        sel = idx == b
        if bool(sel.any()):
            out[f"{name}@t{b / bins:.2f}-{(b + 1) / bins:.2f}"] = values[sel].mean().item()
    return out


NORMALIZATIONS = ("per_sample", "batch", "none")


def normalizer(x: Tensor, d_real: Tensor, normalization: str, eps: float) -> Tensor:
    """DMD2's ``w = mean_pix |x - D_real|``, ``(B,)``, detached (reference note b2).

    ``per_sample`` (DMD2), ``batch`` (one batch-wide scalar, FastVideo) or ``none`` (w = 1).
    """
    if normalization == "none":
        return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    w = mean_abs(x.detach() - d_real.detach())
    if normalization == "batch":
        w = w.mean().expand(x.shape[0])
    elif normalization != "per_sample":
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return w + eps


def guided_denoise(net, guidance: float | Tensor, cond: Tensor | None):
    """``net.denoise``, with classifier-free guidance of scale ``guidance`` when labels are given.

    Without labels there is nothing to guide: the plain denoiser is returned.
    """
    if cond is None or (not torch.is_tensor(guidance) and guidance == 1.0):
        return net.denoise
    return guided(net.denoise, guidance)


def drop_labels(cond: Any, p: float, rng: torch.Generator | None) -> Any:
    """Labels replaced by ``NULL_LABEL`` with probability ``p`` each (classifier-free training);
    a text condition (``TextCond``) gets its null embedding in the dropped rows."""
    if p <= 0:
        return cond
    if not torch.is_tensor(cond):
        return cond.with_null_rows(torch.rand(len(cond), generator=rng) < p)
    drop = torch.rand(cond.shape, generator=rng, device=cond.device) < p
    return torch.where(drop, torch.full_like(cond, NULL_LABEL), cond)


class GuidedView:
    """A denoiser seen through CFG of scale ``guidance``: ``.denoise`` is ``D_w`` (so a DSM loss on
    it trains the guided output, SiD-LSG's κ1); rows labelled ``NULL_LABEL`` stay unguided."""

    def __init__(self, net, guidance: float, cond: Tensor | None) -> None:
        self.schedule, self._denoise = net.schedule, guided_denoise(net, guidance, cond)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self._denoise(x_t, t, cond)


def surrogate_loss(x: Tensor, g: Tensor) -> Tensor:
    """``0.5 * ||x - sg(x - g)||^2`` summed over non-batch dims, mean over the batch.

    Its gradient with respect to ``x: (B, *D)`` is ``g / B``; its value is ``0.5 mean_b |g_b|^2``,
    which measures the step size, not progress (reference note b2).
    """
    target = (x - g).detach()
    return 0.5 * (x - target).pow(2).flatten(1).sum(1).mean()


OWN_SCHEDULE = "schedule"  # t_reference: the schedule in use (no mapping)


def check_reference(owner: str, reference: str) -> None:
    """Raise ``ValueError`` naming ``owner.t_reference`` unless ``reference`` is a schedule name
    or ``"schedule"`` (the schedule in use: fractions of the teacher's own range)."""
    if reference == OWN_SCHEDULE:
        return
    try:
        get_schedule(reference)
    except ValueError as err:
        raise ValueError(f"{owner}.t_reference: {err}, or 'schedule' (the one in use)") from None


def ref_to_t(schedule: Schedule, u: Tensor, reference: str | None = None) -> Tensor:
    """Times on ``schedule`` with the log-SNR of the fractions ``u`` of ``reference``'s range.

    ``t_ref = t_min + (t_max - t_min) u`` on the reference, ``lambda = log_snr(ref, t_ref)``,
    ``t = t_from_log_snr(schedule, lambda)`` clamped to the schedule's ``[t_min, t_max]``. The
    identity (no bisection) when ``reference`` is ``None``, ``"schedule"`` or names ``schedule``.
    """
    own = reference is None or reference == OWN_SCHEDULE
    ref = schedule if own else get_schedule(reference)
    t_ref = ref.t_min + (ref.t_max - ref.t_min) * u
    if ref == schedule:
        return t_ref
    lam = log_snr(ref, t_ref.to(torch.float64))
    return t_from_log_snr(schedule, lam).clamp(schedule.t_min, schedule.t_max).to(t_ref.dtype)


def t_to_ref(schedule: Schedule, t: float, reference: str | None = None) -> float:
    """The fraction ``u`` of ``reference``'s range whose time has the log-SNR of ``t`` on
    ``schedule``: the inverse of ``ref_to_t``, clamped to [0, 1]."""
    own = reference is None or reference == OWN_SCHEDULE
    ref = schedule if own else get_schedule(reference)
    t_ref = torch.tensor(float(t), dtype=torch.float64)
    if ref != schedule:
        t_ref = t_from_log_snr(ref, log_snr(schedule, t_ref))
    return min(max(float((t_ref - ref.t_min) / (ref.t_max - ref.t_min)), 0.0), 1.0)


def student_fractions(
    schedule: Schedule, student_times: tuple[float, ...] | None, reference: str | None = None
) -> tuple[float, ...]:
    """A few-step student's times ``t_1 > ... > t_K`` as fractions of ``reference``'s steps
    (``t_to_ref``), then 0.0 for clean data: step ``k`` (1-based) spans ``(u[k], u[k-1])``.
    Without times (a one-step student) ``(1.0, 0.0)``: the whole range (TDM, Phased DMD)."""
    if not student_times:
        return (1.0, 0.0)
    return (*(t_to_ref(schedule, t, reference) for t in student_times), 0.0)


def sample_u(
    n: int,
    t_range: tuple[float, float],
    rng: torch.Generator | None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``(n,)`` float64 fractions, uniform in ``t_range = (lo, hi)``, ``0 <= lo <= hi <= 1``."""
    lo, hi = t_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"t_range must satisfy 0 <= lo <= hi <= 1, got {t_range!r}")
    return torch.rand(n, generator=rng, dtype=torch.float64, device=device) * (hi - lo) + lo


def sample_t(
    n: int,
    schedule: Schedule,
    t_range: tuple[float, float],
    rng: torch.Generator | None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    reference: str | None = None,
) -> Tensor:
    """``(n,)`` times on ``schedule``: ``u ~ U(t_range)`` on ``reference``, mapped by log-SNR
    (``ref_to_t``; module docstring). ``reference=None``: fractions of the schedule's own range."""
    u = sample_u(n, t_range, rng, device)
    return ref_to_t(schedule, u, reference).to(dtype)


def sample_t_lognormal(
    n: int,
    schedule: Schedule,
    p_mean: float,
    p_std: float,
    rng: torch.Generator | None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Times whose VE noise level ``sigma/alpha`` is ``exp(N(p_mean, p_std^2))`` (EDM, eq. 7 of
    Karras et al. 2022), clamped to the schedule's ``[t_min, t_max]``."""
    log_s = torch.randn(n, generator=rng, dtype=torch.float64, device=device) * p_std + p_mean
    t = t_from_log_snr(schedule, -2 * log_s)
    return t.clamp(schedule.t_min, schedule.t_max).to(dtype)


def add_noise(
    x: Tensor, t: Tensor, schedule: Schedule, rng: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_t, eps, alpha, sigma)`` with ``x_t = alpha x + sigma eps``; ``alpha, sigma: (B,)``."""
    alpha, sigma = schedule.alpha_sigma(t.to(x.dtype))
    eps = torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)
    return bcast(alpha, x) * x + bcast(sigma, x) * eps, eps, alpha, sigma


def edm_weight(alpha: Tensor, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM's ``lambda(s) = (s^2 + s_d^2) / (s s_d)^2`` at the VE level ``s = sigma / alpha``."""
    s = sigma / alpha
    return (s**2 + sigma_data**2) / (s * sigma_data) ** 2


def denoising_loss(
    critic,
    x: Tensor,
    cond: Tensor | None,
    rng: torch.Generator | None,
    *,
    t: Tensor | None = None,
    t_range: tuple[float, float] = (0.0, 1.0),
    t_reference: str | None = None,
    sigma_data: float | None = None,
    reduction: str = "mean",
) -> Loss:
    """Denoising score matching of ``critic.denoise`` on ``sg(x)``, EDM-weighted on the VE view.

    ``L = E_t E_eps lambda(sigma/alpha) ||D(alpha sg(x) + sigma eps, t) - sg(x)||^2``.
    ``reduction="mean"`` averages over every element (EDM, DMD2); ``"sum"`` sums over non-batch
    dims and averages over the batch (SiD). ``t`` overrides sampling from ``t_range`` (fractions
    of ``t_reference``'s range, ``sample_t``). ``sigma_data=None`` takes the critic's own
    (its EDM preconditioning's ``sigma_data``; 0.5, EDM's image value, when it has none), so the
    weighting and the network's scaling agree.
    """
    if sigma_data is None:
        sigma_data = float(getattr(critic, "sigma_data", 0.5))
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    x = x.detach()
    if t is None:
        t = sample_t(
            x.shape[0],
            critic.schedule,
            t_range,
            rng,
            dtype=x.dtype,
            device=x.device,
            reference=t_reference,
        )
    x_t, _, alpha, sigma = add_noise(x, t, critic.schedule, rng)
    w = edm_weight(alpha, sigma, sigma_data)
    err = (critic.denoise(x_t, t, cond) - x).pow(2).flatten(1)
    per_sample = err.mean(1) if reduction == "mean" else err.sum(1)
    value = (w * per_sample).mean()
    return Loss(value, {"critic_loss": value.item(), "critic_mse": err.mean().item()})


@contextlib.contextmanager
def frozen_params(*nets: object) -> Iterator[None]:
    """Within the block, parameters of the ``nn.Module``s among ``nets`` record no gradient.

    Gradients still flow through the networks' *inputs* (SiD, reference note b20.4). Graphs
    built inside keep the parameters out even after ``requires_grad`` is restored on exit.
    """
    params = [p for n in nets if isinstance(n, nn.Module) for p in n.parameters()]
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)


def matching_logs(parts: dict[str, Tensor]) -> dict[str, float]:
    """Diagnostics of a distribution-matching update ``g`` (DMD, VSD): its size and where in
    time the teacher and the critic disagree."""
    diff = mean_abs(parts["d_fake"] - parts["d_real"])
    return {
        "g_abs": parts["g"].abs().mean().item(),
        "d_diff_abs": diff.mean().item(),
        **per_t_bins("d_diff", diff, parts["t"]),
    }


def denoise_pair_through_input(
    x: Tensor,
    cond: Tensor | None,
    *,
    teacher,
    critic,
    t_range,
    guidance: float,
    rng,
    guidance_fake: float = 1.0,
    t_reference: str | None = None,
) -> tuple[Tensor, Tensor]:
    """``(f_real, f_fake)`` at ``x_t = alpha x + sigma eps`` with gradients flowing through
    ``x_t`` into ``x`` but not into either network's parameters (SiD, SIM; note b20.4).
    ``guidance`` guides the teacher, ``guidance_fake`` the critic (1 = none); ``t_range`` is in
    fractions of ``t_reference`` (``sample_t``)."""
    sched = teacher.schedule
    t = sample_t(
        x.shape[0], sched, t_range, rng, dtype=x.dtype, device=x.device, reference=t_reference
    )
    x_t, _, _, _ = add_noise(x, t, sched, rng)
    with frozen_params(teacher, critic):
        f_r = guided_denoise(teacher, guidance, cond)(x_t, t, cond)
        f_f = guided_denoise(critic, guidance_fake, cond)(x_t, t, cond)
    return f_r, f_f
