"""KD classification losses against naive per-sample loops and known properties.

Golden tests run in float64: the loops and the vectorised code agree to rounding, so tolerances are
a few hundred ulps (RTOL = 1e-10), not whatever the code printed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scoredistill.kd import (
    bdkd_loss,
    bdkd_teacher_loss,
    bdkd_weights,
    ece,
    entropy,
    forward_kl,
    jsd,
    kd_loss,
    reverse_kl,
)

F64 = torch.float64
RTOL = 1e-10  # float64 sums of ~10 terms: rounding ~1e-15 relative, huge margin
ATOL = 1e-12


def _logits(b: int = 6, c: int = 5, seed: int = 0, scale: float = 2.0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(b, c, generator=g, dtype=F64)).requires_grad_(True)
    t = (scale * torch.randn(b, c, generator=g, dtype=F64)).requires_grad_(True)
    return s, t


def _softmax_row(z: list[float], temp: float) -> list[float]:
    m = max(z)
    e = [math.exp((v - m) / temp) for v in z]
    return [v / sum(e) for v in e]


def _kl_row(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def _naive(fn, s, t) -> torch.Tensor:
    rows = [fn(s[i].tolist(), t[i].tolist()) for i in range(s.shape[0])]
    return torch.tensor(rows, dtype=F64)


# ---------------------------------------------------------------- golden values (naive loops)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_matches_naive_loop(temp: float) -> None:
    s, t = _logits()
    ref = _naive(lambda a, b: temp**2 * _kl_row(_softmax_row(b, temp), _softmax_row(a, temp)), s, t)
    torch.testing.assert_close(kd_loss(s, t, temp, "none"), ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(kd_loss(s, t, temp), ref.mean(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(kd_loss(s, t, temp, "sum"), ref.sum(), rtol=RTOL, atol=ATOL)
    unscaled = kd_loss(s, t, temp, "none", scale_t2=False)
    torch.testing.assert_close(unscaled, ref / temp**2, rtol=RTOL, atol=ATOL)


def test_forward_and_reverse_kl_match_naive_loop() -> None:
    s, t = _logits(seed=1)
    fwd = _naive(lambda a, b: _kl_row(_softmax_row(b, 2.0), _softmax_row(a, 2.0)), s, t)
    rev = _naive(lambda a, b: _kl_row(_softmax_row(a, 2.0), _softmax_row(b, 2.0)), s, t)
    torch.testing.assert_close(forward_kl(s, t, 2.0, "none"), fwd, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(reverse_kl(s, t, 2.0, "none"), rev, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_naive_loop(beta: float) -> None:
    s, t = _logits(seed=2)

    def row(a: list[float], b: list[float]) -> float:
        p_s, p_t = _softmax_row(a, 1.0), _softmax_row(b, 1.0)
        m = [beta * pt + (1 - beta) * ps for ps, pt in zip(p_s, p_t, strict=True)]
        return beta * _kl_row(p_t, m) + (1 - beta) * _kl_row(p_s, m)

    torch.testing.assert_close(
        jsd(s, t, beta, reduction="none"), _naive(row, s, t), rtol=RTOL, atol=ATOL
    )


def test_entropy_matches_naive_loop() -> None:
    s, _ = _logits(seed=3)
    ref = _naive(lambda a, b: -sum(p * math.log(p) for p in _softmax_row(a, 3.0)), s, s)
    torch.testing.assert_close(entropy(s, 3.0), ref, rtol=RTOL, atol=ATOL)


def test_bdkd_loss_matches_naive_loop() -> None:
    s, t = _logits(b=8, seed=4)
    temp, delta = 2.0, 3.0

    def row(a: list[float], b: list[float]) -> float:
        p_s, p_t = _softmax_row(a, temp), _softmax_row(b, temp)
        h_s = -sum(p * math.log(p) for p in p_s)
        h_t = -sum(p * math.log(p) for p in p_t)
        w_fwd = delta if h_s < h_t else 1.0
        w_rev = delta if h_s > h_t else 1.0
        return temp**2 * (w_fwd * _kl_row(p_t, p_s) + w_rev * _kl_row(p_s, p_t))

    out = bdkd_loss(s, t, temp, "none", delta=delta)
    torch.testing.assert_close(out, _naive(row, s, t), rtol=RTOL, atol=ATOL)
    teacher = bdkd_teacher_loss(t, s, temp, "none")
    ref = _naive(lambda a, b: temp**2 * _kl_row(_softmax_row(b, temp), _softmax_row(a, temp)), s, t)
    torch.testing.assert_close(teacher, ref, rtol=RTOL, atol=ATOL)


def test_token_mask_divides_by_valid_count() -> None:
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 4, 7, generator=g, dtype=F64)
    t = torch.randn(2, 4, 7, generator=g, dtype=F64)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    ref = [
        kd_loss(s[b, i][None], t[b, i][None], 2.0) for b in range(2) for i in range(4) if mask[b, i]
    ]
    out = kd_loss(s, t, 2.0, mask=mask)
    torch.testing.assert_close(out, torch.stack(ref).mean(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(
        jsd(s, t, 0.3, mask=mask, reduction="sum"), (jsd(s, t, 0.3, reduction="none") * mask).sum()
    )


# ---------------------------------------------------------------- properties


def test_zero_when_student_equals_teacher() -> None:
    s, _ = _logits(seed=6)
    for loss in (
        kd_loss(s, s),
        forward_kl(s, s),
        reverse_kl(s, s),
        jsd(s, s, 0.5),
        bdkd_loss(s, s),
    ):
        assert abs(loss.item()) < ATOL


def test_kd_invariant_to_constant_logit_shift() -> None:
    s, t = _logits(seed=7)
    g = torch.Generator().manual_seed(8)
    c_s = 10 * torch.randn(s.shape[0], 1, generator=g, dtype=F64)
    c_t = 10 * torch.randn(s.shape[0], 1, generator=g, dtype=F64)
    torch.testing.assert_close(
        kd_loss(s + c_s, t + c_t, 4.0, "none"), kd_loss(s, t, 4.0, "none"), rtol=1e-9, atol=1e-11
    )


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda s, t, r: kd_loss(s, t, 3.0, r),
        lambda s, t, r: jsd(s, t, 0.4, reduction=r),
        lambda s, t, r: reverse_kl(s, t, reduction=r),
        lambda s, t, r: bdkd_loss(s, t, reduction=r, mode="soft"),
    ],
)
def test_batchmean_equals_mean_of_halves_and_sum_of_parts(loss_fn) -> None:
    s, t = _logits(b=8, seed=9)
    whole = loss_fn(s, t, "batchmean")
    halves = (loss_fn(s[:4], t[:4], "batchmean") + loss_fn(s[4:], t[4:], "batchmean")) / 2
    torch.testing.assert_close(whole, halves, rtol=RTOL, atol=ATOL)
    parts = loss_fn(s[:3], t[:3], "sum") + loss_fn(s[3:], t[3:], "sum")
    torch.testing.assert_close(loss_fn(s, t, "sum"), parts, rtol=RTOL, atol=ATOL)


def test_kd_gradient_is_t_times_prob_gap() -> None:
    s, t = _logits(seed=10)
    temp = 4.0
    (grad,) = torch.autograd.grad(kd_loss(s, t, temp), s)
    expected = temp * (F.softmax(s / temp, -1) - F.softmax(t / temp, -1)) / s.shape[0]
    torch.testing.assert_close(grad, expected.detach(), rtol=1e-9, atol=1e-12)


def test_t2_factor_keeps_gradient_scale_constant_across_temperature() -> None:
    s, t = _logits(b=16, c=10, seed=11)
    temps = [2.0, 4.0, 8.0, 16.0]

    def grad_norm(temp: float, scale_t2: bool) -> float:
        (grad,) = torch.autograd.grad(kd_loss(s, t, temp, scale_t2=scale_t2), s)
        return grad.norm().item()

    with_t2 = [grad_norm(temp, True) for temp in temps]
    without = [grad_norm(temp, False) for temp in temps]
    # with T²: grad → (z_s − z_t centred)/(C·B) as T → ∞, so norms stay within a small factor;
    # without: grad ~ 1/T², a factor (16/2)² = 64 across the range.
    assert max(with_t2) / min(with_t2) < 1.5
    assert without[0] / without[-1] > 30
    for temp, a, b in zip(temps, with_t2, without, strict=True):
        assert a == pytest.approx(temp**2 * b, rel=1e-9)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda s, t: kd_loss(s, t),
        lambda s, t: forward_kl(s, t),
        lambda s, t: reverse_kl(s, t),
        lambda s, t: jsd(s, t, 0.5),
        lambda s, t: jsd(s, t, 0.0),
        lambda s, t: jsd(s, t, 1.0),
        lambda s, t: bdkd_loss(s, t),
    ],
)
def test_no_gradient_reaches_frozen_teacher(loss_fn) -> None:
    s, t = _logits(seed=12)
    loss_fn(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_bdkd_teacher_loss_trains_teacher_only() -> None:
    s, t = _logits(seed=13)
    bdkd_teacher_loss(t, s).backward()
    assert s.grad is None
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_jsd_endpoints_are_forward_and_reverse_kl() -> None:
    s, t = _logits(seed=14)
    torch.testing.assert_close(jsd(s, t, 0.0, reduction="none"), forward_kl(s, t, reduction="none"))
    torch.testing.assert_close(jsd(s, t, 1.0, reduction="none"), reverse_kl(s, t, reduction="none"))
    # the rescaled divergence tends to the end point: JSD(β)/β → KL(P_T‖P_S) as β → 0
    beta = 1e-7
    torch.testing.assert_close(
        jsd(s, t, beta, reduction="none") / beta,
        forward_kl(s, t, reduction="none"),
        rtol=1e-5,
        atol=1e-8,
    )
    # β = 1/2 is symmetric in the two distributions
    torch.testing.assert_close(
        jsd(s, t, 0.5), jsd(t.detach(), s.detach(), 0.5), rtol=RTOL, atol=ATOL
    )
    with pytest.raises(ValueError, match="beta"):
        jsd(s, t, 1.5)


def test_bdkd_weights_favour_reverse_kl_when_student_entropy_is_higher() -> None:
    g = torch.Generator().manual_seed(15)
    peaked = 6.0 * F.one_hot(torch.arange(4) % 3, 3).to(F64) + 0.1 * torch.randn(
        4, 3, generator=g, dtype=F64
    )
    flat = 0.1 * torch.randn(4, 3, generator=g, dtype=F64)
    # student flat (H_s > H_t): reverse KL emphasised
    w_fwd, w_rev = bdkd_weights(flat, peaked, 1.0)
    assert torch.all(w_rev > w_fwd)
    # student peaked (H_s < H_t): forward KL emphasised
    w_fwd, w_rev = bdkd_weights(peaked, flat, 1.0)
    assert torch.all(w_fwd > w_rev)
    # soft switch: same ordering, and tends to the hard switch as κ → ∞
    sf, sr = bdkd_weights(flat, peaked, 1.0, mode="soft", kappa=1.0)
    assert torch.all(sr > sf)
    hard = torch.stack(bdkd_weights(flat, peaked, 1.0, delta=3.0))
    soft = torch.stack(bdkd_weights(flat, peaked, 1.0, mode="soft", delta=3.0, kappa=1e4))
    torch.testing.assert_close(soft, hard)
    with pytest.raises(ValueError, match="mode"):
        bdkd_weights(flat, peaked, mode="medium")


def test_invalid_arguments_are_named() -> None:
    s, t = _logits()
    with pytest.raises(ValueError, match="reduction"):
        kd_loss(s, t, reduction="mean")
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, temperature=0.0)


# ---------------------------------------------------------------- ECE


def _naive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    total = 0.0
    n = len(labels)
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        members = []
        for i in range(n):
            conf = probs[i].max().item()
            if lo < conf <= hi or (k == 0 and conf == 0.0):
                members.append((conf, float(probs[i].argmax().item() == labels[i].item())))
        if members:
            acc = sum(m[1] for m in members) / len(members)
            conf = sum(m[0] for m in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


def test_ece_hand_computed_case() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.62, 0.38], [0.3, 0.7]], dtype=F64)
    labels = torch.tensor([0, 1, 0, 1])
    # bin of 0.9: acc 1/2, conf 0.9 → 2/4·0.4; bin of 0.62: 1/4·0.38; bin of 0.7: 1/4·0.3
    expected = 0.5 * 0.4 + 0.25 * 0.38 + 0.25 * 0.3
    assert ece(probs, labels).item() == pytest.approx(expected, abs=1e-12)


def test_ece_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(16)
    probs = F.softmax(2 * torch.randn(200, 4, generator=g, dtype=F64), -1)
    labels = torch.randint(0, 4, (200,), generator=g)
    for n_bins in (5, 15):
        assert ece(probs, labels, n_bins).item() == pytest.approx(
            _naive_ece(probs, labels, n_bins), abs=1e-12
        )


def test_ece_of_calibrated_predictions_is_near_zero() -> None:
    # exactly calibrated: confidence 0.8 with 8/10 correct and 0.6 with 3/5 correct
    probs = torch.tensor([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5, dtype=F64)
    labels = torch.tensor([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    assert ece(probs, labels).item() == pytest.approx(0.0, abs=1e-12)
    # sampled: y ~ Bernoulli(conf). Per bin |acc − conf| has SE ≤ sqrt(0.25/n_b) ≈ 0.004 with
    # n_b ≈ 20000/7.5 bins; ECE ≈ weighted mean |noise| ≈ 0.8·SE, so 0.02 is > 5 SE.
    g = torch.Generator().manual_seed(17)
    conf = 0.5 + 0.5 * torch.rand(20_000, generator=g, dtype=F64)
    probs = torch.stack([conf, 1 - conf], -1)
    labels = (torch.rand(20_000, generator=g, dtype=F64) >= conf).long()
    assert ece(probs, labels).item() < 0.02
    # and a miscalibrated (over-confident) version is clearly not
    sharp = torch.stack([conf.clamp(max=0.999) ** 0.2, 1 - conf.clamp(max=0.999) ** 0.2], -1)
    assert ece(sharp, labels).item() > 0.1
