"""Diff-Protect's attacks: L-infinity PGD on the image with four gradients (Xue et al., "Toward
effective protection against diffusion-based mimicry through score distillation", ICLR 2024).

The semantic loss of a latent diffusion model at ``z = E(x)`` is (AdvDM, Liang et al. 2023)

    L_S(x) = E_{t, eps} || eps_phi(z_t, t) - eps ||^2,     z_t = alpha_t E(x) + sigma_t eps.

- **full** (AdvDM): ``g_x = grad_x L_S`` on one ``(t, eps)`` draw, through the encoder *and* the
  denoiser: ``J_E^T · 2 alpha_t (d eps_phi / d z_t)^T (eps_phi - eps)``.
- **sds** (Diff-Protect, its eq. for the SDS gradient; ``code/attacks.py::pgd_sds``): drop the
  denoiser's Jacobian, ``g_z = eps_phi(z_t, t) - eps`` with no weight and no guidance, and
  backpropagate it through the encoder only, ``g_x = J_E^T g_z`` (``z.backward(gradient=g_z)``).
  ``g_z`` is :class:`~scoredistill.objectives.sds.SDS`'s update with ``weighting="uniform"``,
  ``guidance=1`` and ``t ~ U(0, 1)`` of the schedule (the paper's ``t ~ U{0..T-1}``).
- **oracle**: the white-box reference of what the budget can do, ``g_x = grad_x -log p(y | E(x))``
  under the exact latent mixture (the true label ``y`` known).
- **random**: ``x + eps_inf · sign(N(0, I))``, the same budget without a gradient.

PGD (Madry et al. 2018): ``x <- clip_[-1,1](Pi_{||x - x0||_inf <= eps}(x + dir · step ·
sign(g_x)))`` from ``x0`` (no random start, as ``pgd_sds``); ``dir = +1`` ascends ("+"),
``dir = -1`` descends ("-", SDS(-): "minimising the semantic loss").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ...objectives._ingredients import add_noise, sample_t
from ...objectives._steps import eps_hat
from ...objectives.sds import SDS
from ...teachers.analytic import GaussianMixtureTeacher

__all__ = [
    "DIFF_PROTECT_SDS",
    "PGDResult",
    "cpu_time_ratio",
    "full_gradient",
    "oracle_gradient",
    "pgd",
    "random_sign",
    "saved_bytes",
    "sds_gradient",
    "sign_agreement",
]

Encoder = Callable[[Tensor], Tensor]
GradFn = Callable[[Tensor, torch.Generator], Tensor]

# pgd_sds: t = randint(0, T), g = eps_pred - noise (no w(t), no CFG), on the schedule in use
DIFF_PROTECT_SDS = SDS(
    t_range=(0.0, 1.0), t_reference="schedule", guidance=1.0, weighting="uniform"
)


def sds_gradient(x: Tensor, encode: Encoder, teacher, rng: torch.Generator) -> Tensor:
    """``J_E(x)^T (eps_phi(z_t, t) - eps)``, ``x: (B, *D)``; the teacher sees no gradient."""
    x = x.detach().requires_grad_(True)
    z = encode(x)
    g_z = DIFF_PROTECT_SDS.gradient(z, None, teacher=teacher, rng=rng)["g"]
    z.backward(gradient=g_z)
    return x.grad.detach()


def full_gradient(x: Tensor, encode: Encoder, teacher, rng: torch.Generator) -> Tensor:
    """``grad_x sum_b ||eps_phi(z_t, t) - eps||^2`` through the encoder and the denoiser, with the
    same ``(t, eps)`` draws as :func:`sds_gradient` on the same ``rng`` state."""
    x = x.detach().requires_grad_(True)
    z = encode(x)
    sched = teacher.schedule
    t = sample_t(z.shape[0], sched, DIFF_PROTECT_SDS.t_range, rng, dtype=z.dtype, reference=None)
    z_t, eps, alpha, sigma = add_noise(z, t, sched, rng)
    loss = (eps_hat(teacher.denoise, z_t, t, None, alpha, sigma) - eps).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def oracle_gradient(
    x: Tensor, encode: Encoder, truth: GaussianMixtureTeacher, labels: Tensor
) -> Tensor:
    """``grad_x sum_b -log p(y_b | E(x_b))`` under the exact mixture (classes as its labels)."""
    x = x.detach().requires_grad_(True)
    log_resp = truth.component_stats(encode(x))[0]
    same = truth.labels[None, :] == labels[:, None]
    log_class = torch.logsumexp(log_resp.masked_fill(~same, -torch.inf), dim=1)
    (grad,) = torch.autograd.grad(-log_class.sum(), x)
    return grad


def sign_agreement(x: Tensor, encode: Encoder, teacher, seed: int, draws: int = 8) -> float:
    """Fraction of pixels where the SDS and the full gradient have the same sign on the same
    ``(t, eps)`` draw (1 for an isotropic Gaussian prior: the full one is SDS times a positive
    scalar), averaged over ``draws`` draws: how far dropping the denoiser's Jacobian changes the
    PGD step."""
    same = []
    for k in range(draws):
        sds = sds_gradient(x, encode, teacher, torch.Generator().manual_seed(seed + k))
        full = full_gradient(x, encode, teacher, torch.Generator().manual_seed(seed + k))
        same.append(float((sds.sign() == full.sign()).double().mean()))
    return sum(same) / draws


def cpu_time_ratio(a: GradFn, b: GradFn, x: Tensor, reps: int = 20) -> float:
    """Median CPU time of ``a(x)`` over that of ``b(x)``, calls interleaved so that a change of
    load affects both alike."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for k in range(reps):
        for i, fn in enumerate((a, b)):
            start = time.process_time()
            fn(x, torch.Generator().manual_seed(k))
            times[i].append(time.process_time() - start)
    med = [float(torch.tensor(times[i]).median()) for i in (0, 1)]
    return med[0] / med[1] if med[1] > 0 else float("nan")


def random_sign(x: Tensor, eps: float, rng: torch.Generator) -> Tensor:
    """The control: every pixel moved by ``±eps`` at random, then clipped to [-1, 1]."""
    noise = torch.randn(x.shape, generator=rng, dtype=x.dtype).sign()
    return (x + eps * noise).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class PGDResult:
    x_adv: Tensor
    s_per_step: float  # median CPU time of one step (gradient + update)


def pgd(
    x0: Tensor,
    grad: GradFn,
    *,
    eps: float,
    step: float,
    steps: int,
    direction: float,
    rng: torch.Generator,
) -> PGDResult:
    """Sign-gradient PGD in the L-infinity ball of radius ``eps`` around ``x0: (B, *D)``."""
    x, times = x0.clone(), []
    for _ in range(steps):
        start = time.process_time()  # CPU time: a busy shared machine inflates wall time
        x = x + direction * step * grad(x, rng).sign()
        x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(-1.0, 1.0)
        times.append(time.process_time() - start)
    return PGDResult(x.detach(), float(torch.tensor(times).median()) if times else 0.0)


def saved_bytes(grad: GradFn, x: Tensor, rng: torch.Generator) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps for the backward pass of one
    gradient call: the activation memory an attack step holds (what SDS saves by skipping the
    denoiser's backward)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        if isinstance(t, torch.nn.Parameter):  # weights exist anyway: count activations only
            return t
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        grad(x, rng)
    return sum(seen.values())
