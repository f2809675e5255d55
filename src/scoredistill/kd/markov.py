"""A synthetic Markov language with exact next-token probabilities, and a tiny GRU LM.

The language (reference/knowledge_distillation.md, d.2 item 17) is an order-``k`` Markov chain
over ``V`` tokens with fixed-length sequences. Each context (the last ``k`` tokens, padded with
a start symbol ``V``) allows ``branching`` "grammatical" next tokens with random weights; a
leak ``epsilon`` of uniform mass keeps every probability positive, so both KL directions to the
truth are finite::

    p(x_t | x_{t-k:t}) = (1 − ε) · softmax(s · g_ctx)[allowed] + ε / V,   g ~ N(0, 1)

Because ``p`` is known exactly, a model's per-token KL to the true language is computed over the
full vocabulary at every prefix — no estimate of the entropy rate is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import forward_kl, reverse_kl

__all__ = ["LMConfig", "MarkovConfig", "MarkovLanguage", "TinyLM", "kl_to_truth", "sample_lm"]


@dataclass(frozen=True)
class MarkovConfig:
    """The synthetic language (note d.2 item 17: length 16; vocabulary kept small for CPU)."""

    vocab: int = 16  # V
    order: int = 2  # k: contexts are the last k tokens
    branching: int = 4  # grammatical next tokens per context
    sharpness: float = 1.5  # s: std of the allowed tokens' logits
    epsilon: float = 0.01  # uniform leak (keeps log-probabilities finite)
    length: int = 16  # tokens per sequence


class MarkovLanguage:
    """Exact probabilities and a sampler: ``probs`` is ``((V+1)^k, V)``, rows sum to 1."""

    def __init__(self, cfg: MarkovConfig, rng: torch.Generator) -> None:
        v, k = cfg.vocab, cfg.order
        if not 1 <= cfg.branching <= v:
            raise ValueError(f"branching must be in [1, vocab={v}], got {cfg.branching}")
        n_ctx = (v + 1) ** k
        scores = torch.rand(n_ctx, v, generator=rng)
        allowed = scores.argsort(-1)[:, : cfg.branching]  # a random subset per context
        logits = torch.full((n_ctx, v), -torch.inf)
        logits.scatter_(
            1, allowed, cfg.sharpness * torch.randn(n_ctx, cfg.branching, generator=rng)
        )
        self.cfg = cfg
        self.allowed = torch.isfinite(logits)  # (n_ctx, V) grammatical tokens
        self.probs = (1 - cfg.epsilon) * logits.softmax(-1) + cfg.epsilon / v  # float32, rows sum 1

    def contexts(self, tokens: Tensor) -> Tensor:
        """Context index of each position's prediction: ``(B, L) -> (B, L)`` int64."""
        v, k = self.cfg.vocab, self.cfg.order
        padded = F.pad(tokens, (k, 0), value=v)  # start symbol V before the sequence
        idx = torch.zeros_like(tokens)
        for j in range(k):  # most significant digit = oldest token
            idx = idx * (v + 1) + padded[:, j : j + tokens.shape[1]]
        return idx

    def next_probs(self, tokens: Tensor) -> Tensor:
        """Exact ``p(x_t | x_<t)`` at every position: ``(B, L) -> (B, L, V)``."""
        return self.probs[self.contexts(tokens)]

    def log_prob(self, tokens: Tensor) -> Tensor:
        """Exact sequence log-probability ``(B, L) -> (B,)``."""
        p = self.next_probs(tokens).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return p.log().sum(-1)

    def sample(self, n: int, rng: torch.Generator) -> Tensor:
        """``n`` sequences ``(n, L)`` int64 drawn from the chain."""
        tokens = torch.zeros(n, self.cfg.length, dtype=torch.int64)
        for t in range(self.cfg.length):
            ctx = self.contexts(tokens[:, : t + 1])[:, t]
            tokens[:, t] = torch.multinomial(self.probs[ctx], 1, generator=rng).squeeze(-1)
        return tokens

    def valid_rate(self, tokens: Tensor) -> float:
        """Fraction of tokens that are grammatical (allowed in their context)."""
        ok = self.allowed[self.contexts(tokens)].gather(-1, tokens.unsqueeze(-1))
        return float(ok.float().mean())


@dataclass(frozen=True)
class LMConfig:
    """A tiny GRU language model, built from this config (no download)."""

    embed: int = 16
    hidden: int = 64
    layers: int = 1


class TinyLM(nn.Module):
    """GRU LM: tokens ``(B, L)`` -> next-token logits ``(B, L, V)`` (position t sees x_<t)."""

    def __init__(self, vocab: int, cfg: LMConfig) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab + 1, cfg.embed)  # index V is the start symbol
        self.rnn = nn.GRU(cfg.embed, cfg.hidden, cfg.layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, L, V)`` for predicting ``tokens[:, t]`` from ``tokens[:, :t]``."""
        inputs = F.pad(tokens[:, :-1], (1, 0), value=self.vocab)
        return self.head(self.rnn(self.embed(inputs))[0])

    def step(self, token: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        """One decoding step: ``token (B,)`` -> logits ``(B, V)`` and the new state."""
        out, h = self.rnn(self.embed(token).unsqueeze(1), h)
        return self.head(out.squeeze(1)), h


@torch.no_grad()
def sample_lm(
    model: TinyLM,
    n: int,
    length: int,
    rng: torch.Generator,
    *,
    teacher: TinyLM | None = None,
    mix_alpha: float = 0.0,
) -> Tensor:
    """``n`` sequences ``(n, L)`` from ``model``; with ``teacher``, from the per-token mixture
    ``p̃ = α·p_teacher + (1−α)·q_model`` (MiniLLM's teacher-mixed sampling, Gu et al. 2024).
    No gradient flows through sampling (GKD, Agarwal et al. 2024, "on-policy data")."""
    token = torch.full((n,), model.vocab, dtype=torch.int64)
    h_s = h_t = None
    out = torch.empty(n, length, dtype=torch.int64)
    for t in range(length):
        logits, h_s = model.step(token, h_s)
        probs = logits.softmax(-1)
        if teacher is not None and mix_alpha > 0:
            t_logits, h_t = teacher.step(token, h_t)
            probs = mix_alpha * t_logits.softmax(-1) + (1 - mix_alpha) * probs
        token = torch.multinomial(probs, 1, generator=rng).squeeze(-1)
        out[:, t] = token
    return out


@torch.no_grad()
def kl_to_truth(model: TinyLM, lang: MarkovLanguage, tokens: Tensor, reverse: bool) -> float:
    """Per-token ``KL(p_true ‖ q)`` (``reverse=False``) or ``KL(q ‖ p_true)`` at the prefixes of
    ``tokens (B, L)``, exact over the vocabulary, averaged over positions."""
    true_logits = lang.next_probs(tokens).log()
    q_logits = model(tokens)
    kl = reverse_kl if reverse else forward_kl
    return float(kl(q_logits, true_logits))
