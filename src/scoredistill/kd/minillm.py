"""MiniLLM's gradient of the sequence-level reverse KL (Gu et al., ICLR 2024, "MiniLLM", §2.2).

Objective: ``L(θ) = KL(q_θ ‖ p) = E_{y~q_θ} Σ_t −r_t`` with per-token rewards
``r_t = log p(y_t|y_<t) − log q_θ(y_t|y_<t)`` and returns ``R_t = Σ_{t'≥t} γ^{t'−t} r_t'``.
Its policy gradient ("Gradient Derivation", γ = 1) is ``∇L = −E_{y~q_θ} Σ_t R_t ∇log q_θ(y_t|y_<t)``;
the paper's ``R_t − 1`` differs by a zero-mean term. Stabilisers, all in §2.2:

- **Single-step decomposition** — the ``t' = t`` part of ``R_t`` is taken in closed form over the
  vocabulary, which leaves::

      ∇L = E Σ_t ∇KL(q_θ(·|y_<t) ‖ p(·|y_<t))  −  E Σ_t R_{t+1} ∇log q_θ(y_t|y_<t)
           (single-step term)                     (long-horizon term)

- **Teacher-mixed sampling** — ``y ~ p̃ = α·p + (1−α)·q_θ`` per token (α = 0.2), reweighted by
  ``q_θ/p̃``. [R] The exact weight of a term that depends on ``y_≤s`` is the prefix product
  ``W_s = Π_{u≤s} q_θ(y_u)/p̃(y_u)``: the single-step term at ``t`` gets ``W_{t−1}``, each reward
  ``r_t'`` inside ``R_{t+1}`` gets ``W_t'``. The paper approximates these by the single-token ratio;
  we keep the exact products (unbiased without clipping) and clip each at ``ratio_clip``.
- **Length normalisation** — ``R_{t+1}`` is divided by the number of tokens it sums (TRL:
  ``Σ_k γ^k`` over them), so long continuations do not dominate.

- **Baseline** (ours, off by default; not in the paper) — ``baseline="loo_mean"`` subtracts
  ``W_t·b_t`` from the long-horizon advantage, ``b_t`` the mean advantage at position ``t`` over
  the *other* sequences of the batch. ``b_t`` does not depend on the sequence it is subtracted
  from and ``E_p̃[W_t ∇log q_θ(y_t)] = E_q[∇log q_θ(y_t)] = 0``, so the gradient stays unbiased
  (without clipping); it only lowers the variance. A float is a constant baseline.

[R] Not implemented: the PPO clip (one update per sample batch, so the PPO ratio is 1), reward
whitening (LMOps) and the pre-training LM loss. The long-horizon term enters as
``−sg(A_t)·(log q_θ − sg(log q_θ))``: its value is 0 and its gradient is the policy gradient, so the
loss value stays the weighted single-step reverse KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import reverse_kl

__all__ = ["loo_mean", "minillm_loss", "prefix_weights", "rkl_advantages"]


@torch.no_grad()
def prefix_weights(
    s_logits: Tensor, t_logits: Tensor, tokens: Tensor, mix_alpha: float, ratio_clip: float
) -> Tensor:
    """Inclusive prefix importance weights ``W_s = min(Π_{u≤s} q(y_u)/p̃(y_u), clip)``: ``(B, L)``.

    ``s_logits``, ``t_logits``: ``(B, L, V)``; ``tokens``: ``(B, L)`` drawn from
    ``p̃ = α·softmax(t_logits) + (1−α)·softmax(s_logits)`` position by position.
    """
    log_q = s_logits.log_softmax(-1)
    log_mix = torch.logaddexp(
        t_logits.log_softmax(-1) + torch.log(torch.tensor(mix_alpha, dtype=log_q.dtype)),
        log_q + torch.log1p(torch.tensor(-mix_alpha, dtype=log_q.dtype)),
    )
    pick = tokens.unsqueeze(-1)
    log_ratio = (log_q.gather(-1, pick) - log_mix.gather(-1, pick)).squeeze(-1)
    return log_ratio.cumsum(-1).exp().clamp(max=ratio_clip)


def rkl_advantages(rewards: Tensor, shift: int, gamma: float, length_normalization: bool) -> Tensor:
    """``A_t = Σ_{t'≥t+shift} γ^{t'−t−shift} rewards_t'``, optionally over ``Σ γ^k`` of the same
    terms (the number of remaining tokens at γ = 1); ``rewards (B, L) -> (B, L)``, 0 where empty.

    ``shift = 1`` gives ``R_{t+1}`` (with the single-step term), ``shift = 0`` gives ``R_t``.
    """
    length = rewards.shape[-1]
    k = torch.arange(length, dtype=rewards.dtype)
    offset = k[None, :] - k[:, None] - shift  # (t, t'): γ power of r_t' in A_t
    disc = gamma ** offset.clamp(min=0) * (offset >= 0)
    adv = rewards @ disc.T
    if length_normalization:
        adv = adv / disc.sum(-1).clamp(min=1.0)  # the last token's empty R_{T+1} stays 0
    return adv


def loo_mean(x: Tensor) -> Tensor:
    """Leave-one-out mean over the batch: ``out[i] = mean_{j≠i} x[j]``; ``(B, …) -> (B, …)``."""
    n = x.shape[0]
    if n < 2:
        return torch.zeros_like(x)
    return (x.sum(0, keepdim=True) - x) / (n - 1)


def minillm_loss(
    s_logits: Tensor,
    t_logits: Tensor,
    tokens: Tensor,
    *,
    mix_alpha: float = 0.2,
    ratio_clip: float = 5.0,
    single_step_decomposition: bool = True,
    rkl_advantage: bool = True,
    gamma: float = 1.0,
    length_normalization: bool = True,
    baseline: str | float = "none",
) -> Tensor:
    """Per-sequence MiniLLM surrogate ``(B,)``, summed over positions; its gradient is the
    importance-weighted estimate of ``∇KL(q_θ ‖ p)`` above for ``tokens`` drawn from ``p̃``.

    ``s_logits`` (student, with gradient) and ``t_logits`` (teacher, detached): ``(B, L, V)``;
    ``tokens``: ``(B, L)``. With γ = 1, no normalisation and no clipping, the expectation of the
    gradient under ``p̃`` is exactly ``∇KL(q_θ ‖ p)`` whether or not the single step is split off.
    """
    if not (0.0 <= mix_alpha <= 1.0 and 0.0 <= gamma <= 1.0 and ratio_clip > 0):
        raise ValueError(
            f"need 0 <= mix_alpha <= 1, 0 <= gamma <= 1 and ratio_clip > 0; got mix_alpha="
            f"{mix_alpha}, gamma={gamma}, ratio_clip={ratio_clip}"
        )
    t_logits = t_logits.detach()
    w = prefix_weights(s_logits.detach(), t_logits, tokens, mix_alpha, ratio_clip)
    w_before = F.pad(w[:, :-1], (1, 0), value=1.0)  # W_{t−1}: the prefix y_<t only
    loss = torch.zeros(tokens.shape[0], dtype=s_logits.dtype)
    if single_step_decomposition:
        loss = loss + (w_before * reverse_kl(s_logits, t_logits, reduction="none")).sum(-1)
    if rkl_advantage:
        pick = tokens.unsqueeze(-1)
        log_q = s_logits.log_softmax(-1).gather(-1, pick).squeeze(-1)  # (B, L)
        r = t_logits.log_softmax(-1).gather(-1, pick).squeeze(-1) - log_q.detach()
        shift = 1 if single_step_decomposition else 0
        adv = rkl_advantages(w * r, shift, gamma, length_normalization)
        if baseline == "loo_mean":
            adv = adv - w * loo_mean(adv)
        elif isinstance(baseline, int | float):
            adv = adv - w * baseline
        elif baseline != "none":
            raise ValueError(f"baseline must be 'none', 'loo_mean' or a number; got {baseline!r}")
        loss = loss - (adv * (log_q - log_q.detach())).sum(-1)
    return loss
