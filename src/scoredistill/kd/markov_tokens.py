"""The Markov language of ``kd.markov`` over continuous tokens: an exact AR model in R^D.

Token ``v`` of an order-1 ``MarkovLanguage`` (transition rows ``T[a, b] = p(b | a)``, start row
``p_0``) is emitted as the point ``x = e_v + s eps`` of a codebook ``e`` (``V`` points evenly on
a circle of radius ``radius`` in R^2, ``s`` small). The sequence ``x_1..x_L`` is then a hidden
Markov model, and its exact autoregressive conditional is a Gaussian mixture over the codebook
(Bayes; the forward filter of an HMM, Rabiner 1989, eq. 19-20):

    p(x_l | x_<l) = sum_v pi_l(v) N(x_l; e_v, s^2 I),    pi_1 = p_0,   pi_{l+1} = a_l T
    a_l(v)        ∝ pi_l(v) N(x_l; e_v, s^2 I)          (posterior of the l-th token)

Because the codes are ``>> s`` apart, ``a_l`` is all but one-hot on the nearest code, so the
conditional is essentially ``T[nearest(x_{l-1}), :]`` (the issue's ``sum_v p(v | x_{l-1}) T``);
the filter keeps it exact. A row's condition is ``[prefix (L*D, positions >= l zeroed),
onehot(l) (L)]`` (``prefix_condition``), the form the DD2 critic also reads.

Quantised to the nearest code, a continuous sequence has an exact log-likelihood under the
language; the expected values for the exact AR sampler and for independent per-position sampling
(each position from its marginal ``m_l = p_0 T^(l-1)``) are closed forms (``exact_reference``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..teachers.conditional_mixture import PerSampleMixture
from .markov import MarkovConfig, MarkovLanguage

__all__ = ["MarkovTokens", "prefix_condition"]


def prefix_condition(x: Tensor, length: int, dim: int) -> Tensor:
    """Every position's condition ``(B*L, L*D + L)`` for sequences ``x: (B, L*D)``.

    Row ``b*L + l`` is ``[x_b with positions >= l set to 0, onehot(l)]``; gradients reach
    ``x`` through the kept positions.
    """
    b = x.shape[0]
    seq = x.reshape(b, length, dim)
    keep = torch.ones(length, length, dtype=x.dtype, device=x.device).tril(-1)  # [l, j]: j < l
    prefix = (seq[:, None, :, :] * keep[None, :, :, None]).reshape(b * length, length * dim)
    onehot = torch.eye(length, dtype=x.dtype, device=x.device).repeat(b, 1)
    return torch.cat([prefix, onehot], dim=1)


class MarkovTokens:
    """The testbed: ``vocab`` codes on a circle, an order-1 language of ``length`` tokens."""

    dim = 2  # D: tokens are points in R^2

    def __init__(self, cfg: MarkovConfig, std: float, seed: int, radius: float = 1.0) -> None:
        if cfg.order != 1:
            raise ValueError(f"MarkovTokens needs an order-1 language, got order={cfg.order}")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.lang = MarkovLanguage(cfg, torch.Generator().manual_seed(seed))
        self.vocab, self.length, self.std = cfg.vocab, cfg.length, float(std)
        probs = self.lang.probs.double()
        self.trans, self.start = probs[: cfg.vocab], probs[cfg.vocab]  # T (V, V), p_0 (V,)
        angle = 2 * math.pi * torch.arange(cfg.vocab, dtype=torch.float64) / cfg.vocab
        self.codebook = radius * torch.stack([angle.cos(), angle.sin()], dim=1)  # e: (V, 2)

    # ------------------------------------------------------------------ the exact AR model
    def _log_emission(self, x: Tensor) -> Tensor:
        """``log N(x; e_v, s^2 I)`` for every code: ``x (B, D) -> (B, V)``."""
        d2 = (x[:, None, :] - self.codebook.to(x)[None]).pow(2).sum(-1)
        return -0.5 * d2 / self.std**2 - self.dim * (
            math.log(self.std) + 0.5 * math.log(2 * math.pi)
        )

    def predictive_log_weights(self, prefix: Tensor, pos: Tensor) -> Tensor:
        """``log pi_l`` of each row (the forward filter): ``prefix (B, L, D)``, ``pos (B,)``
        -> ``(B, V)``. Only ``prefix[b, :pos[b]]`` is read; differentiable in it."""
        log_t = self.trans.to(prefix).log()
        log_pi = self.start.to(prefix).log().expand(prefix.shape[0], self.vocab)
        for j in range(self.length - 1):
            log_a = torch.log_softmax(log_pi + self._log_emission(prefix[:, j]), dim=1)
            nxt = torch.logsumexp(log_a[:, :, None] + log_t[None], dim=1)
            log_pi = torch.where((j < pos)[:, None], nxt, log_pi)
        return log_pi

    def conditional(self, cond: Tensor) -> PerSampleMixture:
        """The exact ``p(x_l | x_<l)`` of every row of ``cond (B, L*D + L)``."""
        n, length, d = cond.shape[0], self.length, self.dim
        prefix = cond[:, : length * d].reshape(n, length, d)
        pos = cond[:, length * d :].argmax(1)
        log_w = self.predictive_log_weights(prefix, pos)
        means = self.codebook.to(cond).expand(n, self.vocab, d)
        return PerSampleMixture(
            log_w, means, torch.full((self.vocab, d), self.std**2, dtype=cond.dtype)
        )

    def marginals(self) -> Tensor:
        """``m_l = p_0 T^(l-1)``, the law of each position's token: ``(L, V)`` float64."""
        rows = [self.start]
        for _ in range(self.length - 1):
            rows.append(rows[-1] @ self.trans)
        return torch.stack(rows)

    # ------------------------------------------------------------------ samplers (float64)
    def sample_ar(self, n: int, rng: torch.Generator) -> Tensor:
        """The exact AR sampler, ``L`` evaluations of ``conditional``: ``(n, L*D)``."""
        x = torch.zeros(n, self.length * self.dim, dtype=torch.float64)
        cond = prefix_condition(x, self.length, self.dim).reshape(n, self.length, -1)
        for pos in range(self.length):
            c = cond[:, pos].clone()
            c[:, : self.length * self.dim] = x  # positions >= pos are still 0
            draw, _ = self.conditional(c).sample(rng)
            x[:, pos * self.dim : (pos + 1) * self.dim] = draw
        return x

    def ar_map(self, z: Tensor) -> Tensor:
        """A fixed noise -> sequence map of the AR model: token ``l`` is the inverse CDF of
        ``p(. | previous token)`` at ``Phi(z[:, 2l])``, emitted as its code (no embedding noise;
        at the codes the filter's posterior is one-hot, so ``pi_l = T[previous]`` exactly).
        ``z: (n, L*D)`` standard normal -> ``(n, L*D)``."""
        n, length, d = z.shape[0], self.length, self.dim
        u = torch.special.ndtr(z.double().reshape(n, length, d)[:, :, 0])
        probs = self.start.expand(n, self.vocab)
        tokens = []
        for pos in range(length):
            cdf = probs.cumsum(1)
            token = torch.searchsorted(cdf, u[:, pos : pos + 1].contiguous()).squeeze(1)
            tokens.append(token.clamp(max=self.vocab - 1))
            probs = self.trans[tokens[-1]]
        return self.codebook[torch.stack(tokens, 1)].reshape(n, length * d)

    def sample_independent(self, n: int, rng: torch.Generator) -> Tensor:
        """Each position from its marginal mixture, independently: ``(n, L*D)``."""
        m = self.marginals()  # (L, V)
        tokens = torch.multinomial(m, n, replacement=True, generator=rng).T  # (n, L)
        eps = torch.randn(n, self.length, self.dim, generator=rng, dtype=torch.float64)
        return (self.codebook[tokens] + self.std * eps).reshape(n, -1)

    # ------------------------------------------------------------------ metrics
    def quantise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest code of every token and its distance: ``x (n, L*D) -> (n, L), (n, L)``."""
        pts = x.double().reshape(x.shape[0], self.length, self.dim)
        dist = (pts[:, :, None, :] - self.codebook[None, None]).pow(2).sum(-1).sqrt()
        d_min, tokens = dist.min(-1)
        return tokens, d_min

    def bigram_tv(self, tokens: Tensor) -> float:
        """Mean over ``l = 2..L`` of ``TV(empirical (x_{l-1}, x_l), m_{l-1}(a) T[a, b])``."""
        v, m, n = self.vocab, self.marginals(), tokens.shape[0]
        tvs = []
        for pos in range(1, self.length):
            idx = tokens[:, pos - 1] * v + tokens[:, pos]
            emp = torch.bincount(idx, minlength=v * v).double().reshape(v, v) / n
            tvs.append(0.5 * (emp - m[pos - 1][:, None] * self.trans).abs().sum())
        return float(torch.stack(tvs).mean())

    def unigram_tv(self, tokens: Tensor) -> float:
        """Mean over positions of ``TV(empirical x_l, m_l)`` (the marginals alone)."""
        emp = torch.stack([torch.bincount(c, minlength=self.vocab) for c in tokens.T]).double()
        return float(0.5 * (emp / tokens.shape[0] - self.marginals()).abs().sum(1).mean())

    def scores(self, x: Tensor, off_radius: float) -> dict[str, float]:
        """Sequence log-likelihood after quantisation (nats, mean), bigram and unigram TV, and
        the off-codebook rate (tokens farther than ``off_radius`` from every code)."""
        tokens, d_min = self.quantise(x)
        return {
            "loglik": float(self.lang.log_prob(tokens).double().mean()),
            "bigram_tv": self.bigram_tv(tokens),
            "unigram_tv": self.unigram_tv(tokens),
            "off_codebook": float((d_min > off_radius).double().mean()),
        }

    def exact_reference(self) -> dict[str, float]:
        """Expected log-likelihood of the AR and the independent samplers, and the independent
        sampler's bigram TV, in closed form (quantisation error ignored: codes are ``>> s``
        apart)."""
        m, log_t, log_0 = self.marginals(), self.trans.log(), self.start.log()
        start = float((self.start * log_0).sum())
        ar, ind, tv = start, start, 0.0
        for pos in range(1, self.length):
            joint = m[pos - 1][:, None] * self.trans
            indep = m[pos - 1][:, None] * m[pos][None]
            ar += float((joint * log_t).sum())
            ind += float((indep * log_t).sum())
            tv += float(0.5 * (joint - indep).abs().sum()) / (self.length - 1)
        return {"ar_loglik": ar, "independent_loglik": ind, "independent_bigram_tv": tv}
