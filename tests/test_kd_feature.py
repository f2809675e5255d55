"""Feature-level and sample-weighting KD: OFA-KD, ACAM-KD, LELP, KD-AIF.

Float64 golden tests against naive loops; RTOL = 1e-10 is float64 rounding with a wide margin.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scoredistill.kd import (
    ACAMFusion,
    OFAProjector,
    acam_loss,
    acam_mask_loss,
    fit_lelp,
    influence_scores,
    influence_weights,
    lelp_aggregate,
    lelp_targets,
    mask_diversity,
    ofa_loss,
    per_sample_grads,
)

F64 = torch.float64
RTOL = 1e-10  # float64 rounding over sums of ≤ a few hundred terms, with margin
ATOL = 1e-12


def _rand(*shape: int, seed: int = 0, scale: float = 1.0, grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=F64)).requires_grad_(grad)


# ---------------------------------------------------------------- OFA-KD


@pytest.mark.parametrize(("eps", "temp"), [(1.0, 1.0), (1.5, 1.0), (1.5, 2.0)])
def test_ofa_matches_naive_loop(eps: float, temp: float) -> None:
    s, t = _rand(5, 4, seed=1, scale=2.0), _rand(5, 4, seed=2, scale=2.0)
    y = torch.tensor([0, 3, 1, 1, 2])
    ref = []
    for i in range(5):
        p_t = F.softmax(t[i] / temp, -1).tolist()
        log_q = F.log_softmax(s[i] / temp, -1).tolist()
        yi = int(y[i])
        w = [(p + (c == yi)) ** eps - (c == yi) for c, p in enumerate(p_t)]
        ref.append(-sum(a * b for a, b in zip(w, log_q, strict=True)))
    out = ofa_loss(s, t, y, eps, temp, "none")
    torch.testing.assert_close(out, torch.tensor(ref, dtype=F64), rtol=RTOL, atol=ATOL)


def test_ofa_eps_one_is_soft_cross_entropy_and_soft_labels_use_argmax() -> None:
    s, t = _rand(6, 5, seed=3, scale=2.0), _rand(6, 5, seed=4, scale=2.0)
    y = torch.tensor([4, 0, 1, 2, 3, 3])
    soft_ce = -(F.softmax(t, -1) * F.log_softmax(s, -1)).sum(-1).mean()
    torch.testing.assert_close(ofa_loss(s, t, y, eps=1.0), soft_ce, rtol=RTOL, atol=ATOL)
    smoothed = 0.8 * F.one_hot(y, 5).to(F64) + 0.04  # label smoothing keeps the argmax
    torch.testing.assert_close(ofa_loss(s, t, smoothed, 1.5), ofa_loss(s, t, y, 1.5))
    ofa_loss(s, t, y, 1.5).backward()
    assert t.grad is None and s.grad is not None


def test_ofa_target_weight_grows_with_eps() -> None:
    # uniform student: log q = −log C everywhere, so loss = log C · Σ_c w_c; with a teacher that
    # is certain of the label, w = (2^ε − 1, 0, …) and the loss grows with ε.
    s = torch.zeros(1, 4, dtype=F64)
    t = torch.tensor([[1000.0, 0.0, 0.0, 0.0]], dtype=F64)
    y = torch.tensor([0])
    losses = [ofa_loss(s, t, y, eps).item() for eps in (1.0, 1.5, 2.0)]
    expected = [math.log(4) * (2**eps - 1) for eps in (1.0, 1.5, 2.0)]
    assert losses == pytest.approx(expected, rel=1e-12)


def test_ofa_projector_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    conv = OFAProjector(8, 10, hidden=16, spatial=True, num_down=2)
    out = conv(torch.randn(3, 8, 8, 8))
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in conv.parameters())
    vec = OFAProjector(12, 10, spatial=False)
    assert vec(torch.randn(3, 12)).shape == (3, 10)
    assert vec(torch.randn(3, 5, 12)).shape == (3, 10)  # tokens are mean-pooled
    with pytest.raises(ValueError, match="B, C, H, W"):
        conv(torch.randn(3, 8))


# ---------------------------------------------------------------- ACAM-KD


def test_acam_mask_loss_and_diversity_match_naive_loops() -> None:
    b, n, c, h, w = 2, 3, 4, 3, 2
    f_s, f_t = _rand(b, c, h, w, seed=5), _rand(b, c, h, w, seed=6)
    m_s = torch.sigmoid(_rand(b, n, h, w, seed=7))
    m_c = torch.sigmoid(_rand(b, n, c, seed=8))
    loss_ref, div_ref = [], []
    for i in range(b):
        masks = [torch.einsum("hw,c->chw", m_s[i, k], m_c[i, k]) for k in range(n)]
        sq = (f_t[i] - f_s[i]) ** 2
        loss_ref.append(sum((m * sq).sum() / m.sum() for m in masks) / n)  # per-mask normalised
        div_ref.append(
            sum(
                F.cosine_similarity(masks[a].flatten(), masks[k].flatten(), dim=0)
                for a in range(n)
                for k in range(n)
                if a != k
            )
        )
    torch.testing.assert_close(
        acam_mask_loss(f_s, f_t, m_s, m_c, "none"), torch.stack(loss_ref), rtol=RTOL, atol=ATOL
    )
    torch.testing.assert_close(
        mask_diversity(m_s, m_c, "none"), torch.stack(div_ref), rtol=RTOL, atol=ATOL
    )
    total = acam_loss(f_s, f_t, m_s, m_c, div_weight=0.5)
    torch.testing.assert_close(
        total, torch.stack(loss_ref).mean() + 0.5 * torch.stack(div_ref).mean()
    )
    # all-ones masks: plain feature MSE; student == teacher: zero
    ones_s, ones_c = torch.ones_like(m_s), torch.ones_like(m_c)
    torch.testing.assert_close(
        acam_mask_loss(f_s, f_t, ones_s, ones_c), F.mse_loss(f_s, f_t), rtol=RTOL, atol=ATOL
    )
    assert acam_mask_loss(f_t, f_t, m_s, m_c).item() == 0.0


def test_acam_fusion_shapes_masks_and_frozen_teacher() -> None:
    torch.manual_seed(0)
    fusion = ACAMFusion(student_channels=4, teacher_channels=8, num_masks=3, attn_dim=16)
    f_s = torch.randn(2, 4, 5, 5, requires_grad=True)
    f_t = torch.randn(2, 8, 5, 5, requires_grad=True)
    adapted, m_s, m_c = fusion(f_s, f_t)
    assert adapted.shape == (2, 8, 5, 5) and m_s.shape == (2, 3, 5, 5) and m_c.shape == (2, 3, 8)
    assert m_s.min() >= 0 and m_s.max() <= 1 and m_c.min() >= 0 and m_c.max() <= 1
    acam_loss(adapted, f_t, m_s, m_c).backward()
    assert f_t.grad is None and f_s.grad is not None
    assert all(p.grad is not None for p in fusion.parameters())
    with pytest.raises(ValueError, match="teacher"):
        fusion(f_s, torch.randn(2, 8, 4, 4))


# ---------------------------------------------------------------- LELP


def _lelp_problem(seed: int = 9):
    g = torch.Generator().manual_seed(seed)
    n, d, c = 60, 6, 3
    emb = torch.randn(n, d, generator=g, dtype=F64)
    labels = torch.arange(n) % c
    w_out = torch.randn(c, d, generator=g, dtype=F64)
    logits = emb @ w_out.T
    return emb, labels, w_out, logits, g


def test_lelp_aggregated_subclass_probabilities_equal_teacher_probabilities() -> None:
    emb, labels, w_out, logits, g = _lelp_problem()
    proj = fit_lelp(emb, labels, 3, 2, output_weight=w_out, rng=g)
    ell = lelp_targets(logits, emb, proj, beta=0.7)
    assert ell.shape == (60, 6)
    grouped = F.softmax(ell, -1).view(60, 3, 2).sum(-1)
    torch.testing.assert_close(grouped, F.softmax(logits, -1), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(
        F.softmax(lelp_aggregate(ell, 2), -1), F.softmax(logits, -1), rtol=RTOL, atol=ATOL
    )
    with pytest.raises(ValueError, match="multiple"):
        lelp_aggregate(ell, 4)
    # targets are constants: no gradient path back to the teacher
    assert not lelp_targets(logits.requires_grad_(True), emb, proj).requires_grad


def test_ofa_and_acam_batchmean_equals_mean_of_halves() -> None:
    s, t = _rand(8, 5, seed=13), _rand(8, 5, seed=14)
    y = torch.arange(8) % 5
    halves = (ofa_loss(s[:4], t[:4], y[:4], 1.5) + ofa_loss(s[4:], t[4:], y[4:], 1.5)) / 2
    torch.testing.assert_close(ofa_loss(s, t, y, 1.5), halves, rtol=RTOL, atol=ATOL)
    f_s, f_t = _rand(4, 3, 2, 2, seed=15), _rand(4, 3, 2, 2, seed=16)
    m_s, m_c = torch.sigmoid(_rand(4, 2, 2, 2, seed=17)), torch.sigmoid(_rand(4, 2, 3, seed=18))
    args = (f_s, f_t, m_s, m_c)
    halves = (acam_loss(*(a[:2] for a in args)) + acam_loss(*(a[2:] for a in args))) / 2
    torch.testing.assert_close(acam_loss(*args), halves, rtol=RTOL, atol=ATOL)


def test_lelp_null_space_centring_and_rotation() -> None:
    emb, labels, w_out, logits, g = _lelp_problem(seed=10)
    proj = fit_lelp(emb, labels, 3, 2, output_weight=w_out, rng=g)
    # the null-space projection removes the logit directions: moving h along W's rows
    # leaves the subclass split (ℓ − t) unchanged
    moved = emb + torch.randn(60, 3, generator=g, dtype=F64) @ w_out
    base = lelp_targets(logits, emb, proj) - logits.repeat_interleave(2, -1)
    torch.testing.assert_close(
        lelp_targets(logits, moved, proj) - logits.repeat_interleave(2, -1),
        base,
        rtol=1e-9,
        atol=1e-10,
    )
    # rotated directions stay orthonormal and live in the null space
    for c in range(3):
        v = proj.directions[c]
        torch.testing.assert_close(v @ v.T, torch.eye(2, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(v @ w_out.T, torch.zeros(2, 3, dtype=F64), rtol=0, atol=1e-10)
        # centred and scaled on the class's own examples: u has mean 0 and std 1
        h_c = emb[labels == c] @ proj.null_space
        u = (h_c - proj.means[c]) @ v.T / proj.scales[c]
        torch.testing.assert_close(u.mean(0), torch.zeros(2, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(u.std(0), torch.ones(2, dtype=F64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="num_subclasses"):
        fit_lelp(emb, labels, 3, 30)


# ---------------------------------------------------------------- KD-AIF


def test_identity_hessian_influence_is_tracin_and_solves_agree() -> None:
    g = torch.Generator().manual_seed(11)
    grads = torch.randn(7, 4, generator=g, dtype=F64)
    g_val = torch.randn(4, generator=g, dtype=F64)
    a = torch.randn(4, 4, generator=g, dtype=F64)
    hess = a @ a.T + 0.5 * torch.eye(4, dtype=F64)
    torch.testing.assert_close(
        influence_scores(grads, g_val), -(grads @ g_val), rtol=RTOL, atol=ATOL
    )
    explicit = -torch.stack([g_val @ torch.linalg.inv(hess) @ gi for gi in grads])
    torch.testing.assert_close(
        influence_scores(grads, g_val, hess), explicit, rtol=1e-9, atol=1e-10
    )
    torch.testing.assert_close(
        influence_scores(grads, g_val, lambda v: hess @ v), explicit, rtol=1e-8, atol=1e-9
    )
    w = influence_weights(grads, g_val, hess)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0, dtype=F64), rtol=RTOL, atol=ATOL)
    raw = influence_weights(grads, g_val, hess, scale=2.0, renormalize=False)
    torch.testing.assert_close(raw, torch.sigmoid(-explicit / 2.0), rtol=1e-9, atol=1e-10)


def test_per_sample_grads_match_a_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model[0].weight.requires_grad_(False)  # frozen params are skipped
    x = torch.randn(5, 3, dtype=F64)
    y = torch.tensor([0, 1, 1, 0, 1])
    out = per_sample_grads(model, F.cross_entropy, x, y)
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(5):
        gi = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        torch.testing.assert_close(
            out[i], torch.cat([v.flatten() for v in gi]), rtol=1e-9, atol=1e-12
        )


def test_influence_weights_flag_a_corrupted_sample() -> None:
    # least squares y = x·θ; one training label is corrupted. With the exact Hessian of the mean
    # training loss, that sample is the most harmful to a clean validation loss: lowest weight.
    g = torch.Generator().manual_seed(12)
    theta = torch.randn(3, generator=g, dtype=F64)
    x_tr, x_val = (
        torch.randn(40, 3, generator=g, dtype=F64),
        torch.randn(20, 3, generator=g, dtype=F64),
    )
    y_tr, y_val = x_tr @ theta + 0.05 * torch.randn(40, generator=g, dtype=F64), x_val @ theta
    y_tr[7] += 8.0
    fit = torch.linalg.lstsq(x_tr, y_tr).solution
    train_grads = (x_tr @ fit - y_tr)[:, None] * x_tr  # ∇ ½(x·θ − y)²
    val_grad = ((x_val @ fit - y_val)[:, None] * x_val).mean(0)
    weights = influence_weights(train_grads, val_grad, x_tr.T @ x_tr / 40)
    assert weights.argmin().item() == 7
    assert weights[7] < 0.5 * weights.median()
