"""MiniLLM's gradient against the exact sequence-level reverse KL, by enumerating every sequence.

With V = 3 tokens and length L = 3 there are 27 sequences, so ``q_θ(y)``, ``p(y)`` and the
expectation of the surrogate's gradient under any sampling policy are finite sums.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from scoredistill.kd.markov import LMConfig, TinyLM
from scoredistill.kd.minillm import loo_mean, minillm_loss, rkl_advantages
from scoredistill.runs.kd_procedures.lm import LMDistillConfig, distill_step_loss

torch.set_num_threads(1)

V, L = 3, 3
ATOL = 1e-10  # float64 sums of 27 terms of size ~1: round-off is ~1e-15, far below this


def _setup() -> tuple[TinyLM, Tensor, Tensor]:
    """A float64 student GRU, the teacher's logits on every sequence, and the sequences."""
    torch.manual_seed(0)
    student = TinyLM(V, LMConfig(embed=4, hidden=5)).double()
    teacher = TinyLM(V, LMConfig(embed=4, hidden=6)).double()
    with torch.no_grad():  # a sharper teacher than the initialisation, so q and p differ
        teacher.head.weight.mul_(4.0)
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    return student, teacher(seqs).detach(), seqs


def _log_prob(logits: Tensor, seqs: Tensor) -> Tensor:
    return logits.log_softmax(-1).gather(-1, seqs.unsqueeze(-1)).squeeze(-1).sum(-1)


def _grad(scalar: Tensor, model: TinyLM) -> Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(scalar, list(model.parameters()))])


def _exact_kl_grad(student: TinyLM, t_logits: Tensor, seqs: Tensor) -> Tensor:
    """Autograd of ``KL(q ‖ p) = Σ_y q(y) log q(y)/p(y)`` over all ``V^L`` sequences."""
    log_q = _log_prob(student(seqs), seqs)
    assert torch.allclose(log_q.exp().sum(), torch.ones((), dtype=torch.float64))
    return _grad((log_q.exp() * (log_q - _log_prob(t_logits, seqs))).sum(), student)


def _expected_surrogate_grad(
    student: TinyLM, t_logits: Tensor, seqs: Tensor, mix_alpha: float, **kw: object
) -> Tensor:
    """``Σ_y p̃(y) ∇S(y)``: the surrogate's gradient averaged exactly under the sampling policy."""
    s_logits = student(seqs)
    q, p = s_logits.detach().softmax(-1), t_logits.softmax(-1)
    mix = (mix_alpha * p + (1 - mix_alpha) * q).gather(-1, seqs.unsqueeze(-1)).squeeze(-1)
    prob = mix.prod(-1)  # p̃(y), a constant: samples carry no gradient
    surrogate = minillm_loss(
        s_logits, t_logits, seqs, mix_alpha=mix_alpha, ratio_clip=math.inf, **kw
    )
    return _grad((prob * surrogate).sum(), student)


EXACT = {"gamma": 1.0, "length_normalization": False}


@pytest.mark.parametrize("mix_alpha", [0.0, 0.2, 0.7])
@pytest.mark.parametrize("single_step", [True, False])
def test_expected_gradient_is_the_sequence_reverse_kl_gradient(
    mix_alpha: float, single_step: bool
) -> None:
    """Single step + long horizon (and plain REINFORCE on ``R_t``), sampled from ``p̃`` and
    reweighted by the prefix ratios, average exactly to ``∇KL(q_θ ‖ p)``."""
    student, t_logits, seqs = _setup()
    exact = _exact_kl_grad(student, t_logits, seqs)
    got = _expected_surrogate_grad(
        student, t_logits, seqs, mix_alpha, single_step_decomposition=single_step, **EXACT
    )
    assert exact.abs().max() > 1e-2  # a non-trivial gradient
    assert torch.allclose(got, exact, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mix_alpha", [0.0, 0.3])
def test_without_long_horizon_only_the_single_step_part_remains(mix_alpha: float) -> None:
    """``rkl_advantage=False`` leaves ``∇ Σ_t Σ_{y<t} q(y<t)·KL(q(·|y<t) ‖ p(·|y<t))`` with the
    prefix distribution held fixed, computed here over the distinct prefixes of each length."""
    student, t_logits, seqs = _setup()
    s_logits = student(seqs)
    log_q, log_p = s_logits.log_softmax(-1), t_logits.log_softmax(-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (27, L): depends on the prefix y_<t only
    target = torch.zeros((), dtype=torch.float64)
    for t in range(L):
        first = (seqs[:, t:] == 0).all(-1)  # one row per distinct prefix y_<t
        prefix_prob = _log_prob(s_logits[first, :t].detach(), seqs[first, :t]).exp()
        target = target + (prefix_prob * kl[first, t]).sum()
    single = _grad(target, student)
    got = _expected_surrogate_grad(student, t_logits, seqs, mix_alpha, rkl_advantage=False, **EXACT)
    assert torch.allclose(got, single, atol=ATOL, rtol=0)
    assert not torch.allclose(single, _exact_kl_grad(student, t_logits, seqs), atol=1e-3)


def test_advantages_match_a_loop() -> None:
    """Discounted, shifted, length-normalised returns against the definition written out."""
    r = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gamma = 0.5
    for shift, norm in itertools.product((0, 1), (False, True)):
        want = torch.zeros_like(r)
        for t in range(5):
            terms = range(t + shift, 5)
            want[:, t] = sum(gamma ** (u - t - shift) * r[:, u] for u in terms)
            if norm and len(terms):
                want[:, t] /= sum(gamma ** (u - t - shift) for u in terms)
        got = rkl_advantages(r, shift, gamma, norm)
        assert torch.allclose(got, want, atol=1e-12)
    # γ = 1 with normalisation: the mean of the later rewards (R_{t+1} / (T − t − 1))
    mean_later = rkl_advantages(r, 1, 1.0, True)[:, 1]
    assert torch.allclose(mean_later, r[:, 2:].mean(-1), atol=1e-12)


def test_gradient_vanishes_when_the_student_is_the_teacher() -> None:
    """Fixed point: with ``q = p`` every reward and every per-step KL gradient is zero."""
    logits = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s_logits = logits.clone().requires_grad_()
    tokens = torch.randint(5, (4, 6), generator=torch.Generator().manual_seed(2))
    minillm_loss(s_logits, logits, tokens).sum().backward()
    assert s_logits.grad.abs().max() < 1e-12


def test_long_horizon_changes_the_gradient_not_the_value() -> None:
    """The policy-gradient term has value 0, so the loss still reads as the weighted reverse KL;
    without it (and α = 0) the loss and its gradient are reverse-KL GKD (β = λ = 1)."""
    gen = torch.Generator().manual_seed(3)
    s = (3 * torch.randn(3, 5, 9, generator=gen)).requires_grad_()
    t = 3 * torch.randn(3, 5, 9, generator=gen)
    tokens = torch.randint(9, (3, 5), generator=gen)
    full = LMDistillConfig(method="minillm", mix_alpha=0.0)
    short = LMDistillConfig(method="minillm", mix_alpha=0.0, rkl_advantage=False)
    gkd = LMDistillConfig(method="gkd", beta=1.0)
    grads = {}
    for name, cfg in (("full", full), ("short", short), ("gkd", gkd)):
        loss = distill_step_loss(s, t, tokens, cfg)
        grads[name] = (loss.detach(), torch.autograd.grad(loss, s)[0])
    assert torch.allclose(grads["full"][0], grads["gkd"][0], atol=1e-6)
    assert torch.allclose(grads["short"][1], grads["gkd"][1], atol=1e-6)
    assert not torch.allclose(grads["full"][1], grads["gkd"][1], atol=1e-4)


@pytest.mark.parametrize("mix_alpha", [0.0, 0.2])
def test_a_constant_baseline_leaves_the_expected_gradient_exact(mix_alpha: float) -> None:
    """Subtracting ``W_t·b`` from the advantage has zero mean under ``p̃``, so the expectation
    is still ``∇KL(q_θ ‖ p)`` (the leave-one-out baseline is such a ``b`` for each sequence)."""
    student, t_logits, seqs = _setup()
    exact = _exact_kl_grad(student, t_logits, seqs)
    got = _expected_surrogate_grad(student, t_logits, seqs, mix_alpha, baseline=0.7, **EXACT)
    assert torch.allclose(got, exact, atol=ATOL, rtol=0)
    plain = _expected_surrogate_grad(student, t_logits, seqs, mix_alpha, **EXACT)
    per_seq = minillm_loss(student(seqs), t_logits, seqs, baseline=0.7, ratio_clip=math.inf)
    per_seq_plain = minillm_loss(student(seqs), t_logits, seqs, ratio_clip=math.inf)
    assert torch.allclose(plain, exact, atol=ATOL, rtol=0)
    g = _grad(per_seq[5], student)  # one sequence's gradient does change
    assert not torch.allclose(g, _grad(per_seq_plain[5], student), atol=1e-6)


def test_leave_one_out_mean_and_bad_baseline() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    want = torch.stack([(x.sum(0) - x[i]) / 2 for i in range(3)])
    assert torch.equal(loo_mean(x), want)
    assert torch.equal(loo_mean(x[:1]), torch.zeros(1, 2))
    logits = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="baseline"):
        minillm_loss(logits, logits, torch.zeros(2, 3, dtype=torch.long), baseline="mean")
