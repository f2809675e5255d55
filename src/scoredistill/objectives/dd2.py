"""DD2 — Liu et al., "Distilled Decoding 2: One-step Sampling of Image Auto-regressive Models
with Conditional Score Distillation", NeurIPS 2025 (arXiv 2510.21003; code not released,
reference note b17).

Conditional score distillation. A one-step generator emits all ``L`` tokens at once,
``x = G(z) = (x_1, .., x_L)``, ``x_l`` in R^D. The AR teacher's conditional ``p(x_l | x_<l)``
(a mixture over the codebook in embedding space) gives the real score; a guidance network (the
critic) learns the generator's conditional ``q(x_l | x_<l)`` by denoising score matching on
``(x_l, prefix)`` pairs. At every position DMD's update (``dmd.dmd_update``; DMD eq. 7, DMD2's
normaliser ``w``, per sample or per batch) is applied with the prefix as the condition ``c_l``:

    x_{l,t} = alpha x_l + sigma eps,    t ~ U(t_range)
    g_l     = (D_fake(x_{l,t}, t | c_l) - D_real(x_{l,t}, t | c_l)) / w_l
    L       = sum_l 0.5 ||x_l - sg(x_l - g_l)||^2 / (B L)          (dL/dx_l = g_l / (B L))
    c_l     = sg(x_<l)                                             (prefix_grad = False)

so ``E[g]`` descends ``sum_l E_{x_<l ~ q} KL(q_t(.|x_<l) || p_t(.|x_<l))`` in ``x_l`` with the
prefix law held fixed. Whether gradients flow through the prefix is left open by the paper.
``prefix_grad = True`` adds the prefix's own path, the teacher half of
``grad_{x_<l} KL``, at the same scale as ``g`` (``D = x_t/alpha + sigma^2/alpha^2 grad log p_t``):

    L += sum_l sg(sigma^2 / (alpha^2 w_l)) (-log p_t(sg(x_{l,t}) | x_<l)) / (B L)

The critic half, ``grad_c log q_t(x_{l,t} | c)``, is not identifiable from a conditional score
(any ``f(c, t)`` may be added to ``log q_t``), so no score critic can supply it; it is left out.
Neither network gets gradients from the generator loss; the teacher must expose
``build(cond) -> PerSampleMixture`` (``teachers.conditional_mixture.PerSampleTeacher``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._ingredients import (
    Loss,
    add_noise,
    denoising_loss,
    matching_logs,
    sample_t,
    surrogate_loss,
)
from .dmd import DMD, dmd_update

__all__ = ["DD2", "position_rows"]


def position_rows(x: Tensor, length: int, dim: int, condition) -> tuple[Tensor, Tensor]:
    """Sequences ``x: (B, L*D)`` as ``B*L`` rows: tokens ``(B*L, D)`` and their conditions
    ``condition(x, L, D) -> (B*L, C)`` (row ``b*L + l`` is token ``l`` of sequence ``b``)."""
    return x.reshape(x.shape[0] * length, dim), condition(x, length, dim)


@dataclass(frozen=True)
class DD2:
    """Conditional score distillation over ``length`` tokens of ``dim`` values each."""

    length: int  # L, tokens per sequence
    dim: int  # D, values per token
    condition: object  # (x (B, L*D), L, D) -> conditions (B*L, C) of every position
    prefix_grad: bool = False  # open in the paper; False: c_l = sg(x_<l)
    # DMD's per-position update (DMD2's t range and normaliser by default), on the schedule in use
    # (DD2 distils under an RF schedule, note b17; its t range is not published)
    dmd: DMD = field(default_factory=lambda: DMD(t_reference="schedule"))

    def _rows(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tokens, cond = position_rows(x, self.length, self.dim, self.condition)
        return tokens, (cond if self.prefix_grad else cond.detach())

    def generator_loss(
        self, x: Tensor, cond: Tensor | None, *, teacher, critic, rng: torch.Generator | None
    ) -> Loss:
        """Surrogate whose gradient w.r.t. ``x: (B, L*D)`` is ``g_l / (B L)`` on every token
        (plus, with ``prefix_grad``, the teacher's prefix path). ``cond`` must be ``None``: the
        condition of each token is its prefix."""
        if cond is not None:
            raise ValueError("DD2 conditions every token on its prefix; cond must be None")
        x_l, c_l = self._rows(x)
        sched = teacher.schedule
        ref, n = self.dmd.t_reference, x_l.shape[0]
        t = sample_t(n, sched, self.dmd.t_range, rng, dtype=x.dtype, device=x.device, reference=ref)
        with torch.no_grad():
            x_t, _, alpha, sigma = add_noise(x_l.detach(), t, sched, rng)
        c_sg = c_l.detach()
        parts = dmd_update(x_l, x_t, t, c_sg, teacher=teacher, critic=critic, objective=self.dmd)
        value = surrogate_loss(x_l, parts["g"])
        logs = {**matching_logs({**parts, "t": t}), "w": parts["w"].mean().item()}
        if self.prefix_grad:
            coef = (sigma**2 / (alpha**2 * parts["w"])).detach()
            log_p = teacher.build(c_l).log_prob_at(x_t, alpha, sigma)
            prefix_term = (coef * -log_p).mean()
            value = value + prefix_term
            logs["prefix_term"] = prefix_term.item()
        return Loss(value, logs)

    def critic_loss(self, x: Tensor, cond: Tensor | None, *, critic, rng, real=None) -> Loss:
        """The guidance network's EDM-weighted DSM on every ``(sg(x_l), sg(x_<l))`` pair."""
        x_l, c_l = position_rows(x.detach(), self.length, self.dim, self.condition)
        d = self.dmd
        return denoising_loss(
            critic, x_l, c_l, rng, t_range=d.critic_t_range, t_reference=d.t_reference,
            sigma_data=d.sigma_data,
        )  # fmt: skip
