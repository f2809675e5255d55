"""Ranking distillation losses against naive loops, closed-form special cases and invariances.

Float64 throughout; RTOL = 1e-10 covers rounding of sums over ≤ 12 terms with margin.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scoredistill.kd import (
    cprd_loss,
    listmle,
    margin_mse,
    mine_hard_negatives,
    ndcg,
    pld_loss,
    pld_weights,
    suffix_logsumexp,
)

F64 = torch.float64
RTOL = 1e-10  # float64 rounding over ~10-term sums, with margin
ATOL = 1e-12


def _rand(*shape: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=F64)).requires_grad_(True)


def _lse(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _pl_nll(s: list[float], perm: list[int], w: list[float]) -> float:
    sp = [s[j] for j in perm]
    return sum(w[k] * (_lse(sp[k:]) - sp[k]) for k in range(len(sp)))


# ---------------------------------------------------------------- suffix logsumexp


def test_suffix_logsumexp_matches_naive_loop_and_is_stable() -> None:
    x = _rand(3, 7, seed=1).detach() * 300  # values of ±1000: a naive exp would overflow
    ref = torch.tensor([[_lse(row[k:]) for k in range(7)] for row in x.tolist()], dtype=F64)
    torch.testing.assert_close(suffix_logsumexp(x), ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(suffix_logsumexp(x.T, dim=0), ref.T, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- PLD


def _naive_pld(
    s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, tau: float
) -> torch.Tensor:
    out = []
    for i in range(s.shape[0]):
        ti = t[i].tolist()
        others = [c for c in range(len(ti)) if y is None or c != y[i]]
        others.sort(key=lambda c: -ti[c])  # stable: ties keep index order
        perm = ([int(y[i])] if y is not None else []) + others
        m = max(ti)
        e = [math.exp((v - m) / tau) for v in ti]
        alpha = [e[c] / sum(e) for c in perm]
        out.append(_pl_nll(s[i].tolist(), perm, alpha))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("with_labels", [True, False])
def test_pld_matches_naive_loop(tau: float, with_labels: bool) -> None:
    s, t = _rand(6, 5, seed=2), _rand(6, 5, seed=3)
    y = torch.tensor([0, 1, 2, 3, 4, 0]) if with_labels else None
    ref = _naive_pld(s, t, y, tau)
    torch.testing.assert_close(pld_loss(s, t, y, tau, "none"), ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(pld_loss(s, t, y, tau), ref.mean(), rtol=RTOL, atol=ATOL)


def test_pld_with_one_hot_alpha_is_cross_entropy() -> None:
    s = _rand(5, 6, seed=4)
    y = torch.tensor([0, 5, 2, 2, 3])
    t = 1000.0 * F.one_hot(y, 6).to(F64)  # softmax is exactly (1, 0, …) in float64
    _, alpha = pld_weights(t, y)
    assert torch.equal(alpha[:, 0], torch.ones(5, dtype=F64))
    torch.testing.assert_close(pld_loss(s, t, y), F.cross_entropy(s, y), rtol=RTOL, atol=ATOL)


def test_pld_with_uniform_alpha_is_listmle() -> None:
    s = _rand(4, 6, seed=5)
    y = torch.tensor([3, 0, 5, 1])
    t = torch.zeros(4, 6, dtype=F64)  # uniform α = 1/C; π* = [y, the rest in index order]
    perm = torch.stack([torch.tensor([int(c)] + [j for j in range(6) if j != c]) for c in y])
    torch.testing.assert_close(pld_loss(s, t, y), listmle(s, perm) / 6, rtol=RTOL, atol=ATOL)
    ref = torch.tensor(
        [_pl_nll(s[i].tolist(), perm[i].tolist(), [1.0] * 6) for i in range(4)], dtype=F64
    )
    torch.testing.assert_close(listmle(s, perm, "none"), ref, rtol=RTOL, atol=ATOL)


def test_pld_invariant_to_constant_logit_shift() -> None:
    s, t = _rand(6, 5, seed=6), _rand(6, 5, seed=7)
    y = torch.arange(6) % 5
    shift = 50 * torch.randn(6, 1, dtype=F64, generator=torch.Generator().manual_seed(8))
    out = pld_loss(s + shift, t + shift, y, 2.0, "none")
    torch.testing.assert_close(out, pld_loss(s, t, y, 2.0, "none"), rtol=1e-9, atol=1e-10)


def test_pld_is_convex_along_random_lines() -> None:
    s, t, d = _rand(8, 5, seed=9).detach(), _rand(8, 5, seed=10), _rand(8, 5, seed=11).detach()
    y = torch.arange(8) % 5
    h = 0.1
    for a in torch.linspace(-3, 3, 13, dtype=F64):
        f = [pld_loss(s + (a + k * h) * d, t, y).item() for k in (-1, 0, 1)]
        assert f[0] - 2 * f[1] + f[2] >= -1e-12  # second difference ≥ 0 up to rounding


def test_pld_batch_split_and_frozen_teacher() -> None:
    s, t = _rand(8, 5, seed=12), _rand(8, 5, seed=13)
    y = torch.arange(8) % 5
    halves = (pld_loss(s[:4], t[:4], y[:4]) + pld_loss(s[4:], t[4:], y[4:])) / 2
    torch.testing.assert_close(pld_loss(s, t, y), halves, rtol=RTOL, atol=ATOL)
    pld_loss(s, t, y).backward()
    assert t.grad is None and s.grad is not None


# ---------------------------------------------------------------- Margin-MSE


def test_margin_mse_matches_naive_loop() -> None:
    sp, sn, tp, tn = (_rand(7, seed=k) for k in range(14, 18))
    ref = torch.tensor(
        [((sp[i] - sn[i]) - (tp[i] - tn[i])).item() ** 2 for i in range(7)], dtype=F64
    )
    torch.testing.assert_close(margin_mse(sp, sn, tp, tn, "none"), ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(margin_mse(sp, sn, tp, tn), ref.mean(), rtol=RTOL, atol=ATOL)
    halves = margin_mse(sp[:3], sn[:3], tp[:3], tn[:3], "sum") + margin_mse(
        sp[3:], sn[3:], tp[3:], tn[3:], "sum"
    )
    torch.testing.assert_close(margin_mse(sp, sn, tp, tn, "sum"), halves, rtol=RTOL, atol=ATOL)


def test_margin_mse_per_query_offset_leaves_loss_and_gradients_unchanged() -> None:
    sp, sn = _rand(6, seed=18), _rand(6, 3, seed=19)  # one positive against 3 negatives
    tp, tn = _rand(6, seed=20), _rand(6, 3, seed=21)
    g = torch.Generator().manual_seed(22)
    off_s = 100 * torch.randn(6, 1, generator=g, dtype=F64)
    off_t = 100 * torch.randn(6, 1, generator=g, dtype=F64)

    def loss_and_grads(a: torch.Tensor, b: torch.Tensor) -> tuple:
        loss = margin_mse(sp[:, None] + a, sn + a, tp[:, None] + b, tn + b)
        return (loss, *torch.autograd.grad(loss, (sp, sn)))

    base = loss_and_grads(torch.zeros_like(off_s), torch.zeros_like(off_t))
    shifted = loss_and_grads(off_s, off_t)
    for x, y in zip(base, shifted, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    # contrast: pointwise MSE against teacher scores does change
    pointwise = lambda a, b: F.mse_loss(sp + a[:, 0], tp + b[:, 0])  # noqa: E731
    assert abs(pointwise(off_s, off_t).item() - pointwise(0 * off_s, 0 * off_t).item()) > 1.0


def test_margin_mse_frozen_teacher() -> None:
    sp, sn, tp, tn = (_rand(5, seed=k) for k in range(23, 27))
    margin_mse(sp, sn, tp, tn).backward()
    assert tp.grad is None and tn.grad is None and sp.grad is not None


# ---------------------------------------------------------------- CPRD


def _naive_cprd(
    s: torch.Tensor, t: torch.Tensor, k: int, tau: float, margin: bool = False
) -> torch.Tensor:
    out = []
    for i in range(s.shape[0]):
        si, ti = s[i].tolist(), t[i].tolist()
        hard = sorted(range(len(si)), key=lambda j: -si[j])[:k]
        chain = sorted(hard, key=lambda j: -ti[j])
        z = [si[j] / tau for j in chain]
        terms = [_lse(z[m:]) - z[m] for m in range(k - 1)]
        w = [1.0] * (k - 1)
        if margin:
            gaps = [ti[chain[m]] - ti[chain[m + 1]] for m in range(k - 1)]
            w = [gp / (sum(gaps) / len(gaps)) for gp in gaps]
        out.append(sum(a * b for a, b in zip(w, terms, strict=True)))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("margin", [False, True])
def test_cprd_matches_naive_loop(margin: bool) -> None:
    s, t = _rand(5, 12, seed=27), _rand(5, 12, seed=28)
    out = cprd_loss(s, t, num_hard=4, temperature=0.5, margin_weighting=margin, reduction="none")
    torch.testing.assert_close(out, _naive_cprd(s, t, 4, 0.5, margin), rtol=RTOL, atol=ATOL)


def test_cprd_ignores_order_and_teacher_scores_of_easy_negatives() -> None:
    s, t = _rand(4, 10, seed=29), _rand(4, 10, seed=30)
    base = cprd_loss(s, t, num_hard=3, reduction="none")
    g = torch.Generator().manual_seed(31)
    for i in range(4):
        hard = s[i].detach().topk(3).indices
        easy = torch.tensor([j for j in range(10) if j not in hard.tolist()])
        order = hard.tolist() + easy[torch.randperm(len(easy), generator=g)].tolist()
        perm = torch.tensor(order)
        s_i, t_i = s[i : i + 1, perm], t[i : i + 1, perm].detach().clone()
        out = cprd_loss(s_i, t_i, num_hard=3, reduction="none")
        torch.testing.assert_close(out[0], base[i], rtol=RTOL, atol=ATOL)
        t_i[0, 3:] = 1e3 * torch.randn(7, generator=g, dtype=F64)  # easy negatives' teacher scores
        torch.testing.assert_close(
            cprd_loss(s_i, t_i, num_hard=3)[()], base[i], rtol=RTOL, atol=ATOL
        )


def test_cprd_premined_excluded_and_frozen_teacher() -> None:
    s, t = _rand(4, 9, seed=32), _rand(4, 9, seed=33)
    idx = mine_hard_negatives(s, 5)
    premined = cprd_loss(s.gather(1, idx), t.gather(1, idx), num_hard=None, reduction="none")
    torch.testing.assert_close(
        premined, cprd_loss(s, t, num_hard=5, reduction="none"), rtol=RTOL, atol=ATOL
    )
    exclude = torch.eye(4, 9, dtype=torch.bool)  # in-batch positives on the diagonal
    assert not exclude.gather(1, mine_hard_negatives(s, 5, exclude)).any()
    cprd_loss(s, t, num_hard=5, exclude=exclude).backward()
    assert t.grad is None and s.grad is not None
    with pytest.raises(ValueError, match="num_hard"):
        cprd_loss(s, t, num_hard=20)


# ---------------------------------------------------------------- nDCG


def _naive_ndcg(scores: list[float], rel: list[float], k: int | None) -> float:
    k = len(scores) if k is None else k
    order = sorted(range(len(scores)), key=lambda j: -scores[j])[:k]
    dcg = sum(rel[j] / math.log2(r + 2) for r, j in enumerate(order))
    idcg = sum(v / math.log2(r + 2) for r, v in enumerate(sorted(rel, reverse=True)[:k]))
    return dcg / idcg if idcg > 0 else 0.0


def test_ndcg_hand_computed_and_naive_loop() -> None:
    # order by score → relevances (0, 1, 2): DCG = 1/log2(3) + 2/log2(4); ideal (2, 1, 0)
    scores = torch.tensor([[3.0, 2.0, 1.0]], dtype=F64)
    rel = torch.tensor([[0.0, 1.0, 2.0]], dtype=F64)
    expected = (1 / math.log2(3) + 1.0) / (2.0 + 1 / math.log2(3))
    assert ndcg(scores, rel).item() == pytest.approx(expected, abs=1e-12)
    g = torch.Generator().manual_seed(34)
    scores = torch.randn(6, 8, generator=g, dtype=F64)  # continuous: no ties
    rel = torch.randint(0, 4, (6, 8), generator=g).to(F64)
    rel[0] = 0  # a query with no relevant item scores 0 (sklearn's convention)
    for k in (None, 3):
        ref = [_naive_ndcg(a, b, k) for a, b in zip(scores.tolist(), rel.tolist(), strict=True)]
        out = ndcg(scores, rel, k, reduction="none")
        torch.testing.assert_close(out, torch.tensor(ref, dtype=F64), rtol=RTOL, atol=ATOL)
    assert ndcg(rel + 0.0, rel, reduction="none")[1:].eq(1.0).all()  # ideal order → 1


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda s, t, r: cprd_loss(s, t, num_hard=4, reduction=r),
        lambda s, t, r: pld_loss(s, t, None, 2.0, r),
        lambda s, t, r: ndcg(s, t.abs(), 3, reduction=r),
    ],
)
def test_batchmean_equals_mean_of_halves(loss_fn) -> None:
    s, t = _rand(8, 7, seed=35), _rand(8, 7, seed=36)
    halves = (loss_fn(s[:4], t[:4], "batchmean") + loss_fn(s[4:], t[4:], "batchmean")) / 2
    torch.testing.assert_close(loss_fn(s, t, "batchmean"), halves, rtol=RTOL, atol=ATOL)
    parts = loss_fn(s[:3], t[:3], "sum") + loss_fn(s[3:], t[3:], "sum")
    torch.testing.assert_close(loss_fn(s, t, "sum"), parts, rtol=RTOL, atol=ATOL)
