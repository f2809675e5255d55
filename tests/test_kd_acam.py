"""ACAM-KD masks (Lan & Tian 2025, ASCM): diversity extremes, gradient paths, no collapse.

The diversity and loss checks are float64 against closed forms; RTOL = 1e-10 is float64
rounding over a few hundred terms, with a wide margin.
"""

from __future__ import annotations

import math

import torch

from scoredistill.kd import ACAMFusion, acam_loss, acam_mask_loss, mask_diversity
from scoredistill.runs.kd import QUICK, resolve, run_kd

F64 = torch.float64
RTOL, ATOL = 1e-10, 1e-12


def _masks(b: int, n: int, c: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m_s = torch.sigmoid(torch.randn(b, n, h, w, generator=g, dtype=F64))
    m_c = torch.sigmoid(torch.randn(b, n, c, generator=g, dtype=F64))
    return m_s, m_c


def test_diversity_is_zero_for_orthogonal_masks_and_maximal_for_identical_masks() -> None:
    b, n, c, h, w = 3, 3, 6, 4, 4
    pairs = n * (n - 1)
    # disjoint spatial supports: row k of the map belongs to mask k only
    m_s = torch.zeros(b, n, h, w, dtype=F64)
    for k in range(n):
        m_s[:, k, k] = torch.rand(b, w, dtype=F64) + 0.1
    m_c = torch.rand(b, n, c, dtype=F64) + 0.1
    zero = torch.zeros(b, dtype=F64)
    torch.testing.assert_close(mask_diversity(m_s, m_c, "none"), zero, rtol=RTOL, atol=ATOL)
    # identical masks: every ordered pair has cosine 1
    same_s, same_c = m_s[:, :1].expand(b, n, h, w), m_c[:, :1].expand(b, n, c)
    full = torch.full((b,), float(pairs), dtype=F64)
    torch.testing.assert_close(mask_diversity(same_s, same_c, "none"), full, rtol=RTOL, atol=ATOL)
    # masks in [0, 1] have cosines in [0, 1]: every draw lies between the two extremes
    for seed in range(20):
        div = mask_diversity(*_masks(b, n, c, h, w, seed), "none")
        assert (div > 0).all() and (div < pairs).all()


def test_mask_loss_is_a_weighted_mean_per_mask_so_scaling_a_mask_changes_nothing() -> None:
    b, n, c, h, w = 2, 2, 4, 3, 3
    g = torch.Generator().manual_seed(3)
    f_s, f_t = (torch.randn(b, c, h, w, generator=g, dtype=F64) for _ in range(2))
    m_s, m_c = _masks(b, n, c, h, w, seed=4)
    shrunk = m_s.clone()
    shrunk[:, 0] *= 1e-6  # a mask shrinking to 0 must not leave the loss
    torch.testing.assert_close(
        acam_mask_loss(f_s, f_t, shrunk, m_c), acam_mask_loss(f_s, f_t, m_s, m_c), rtol=1e-9, atol=0
    )
    # a weighted mean lies between the smallest and the largest squared error
    sq = (f_t - f_s).square().flatten(1)
    loss = acam_mask_loss(f_s, f_t, m_s, m_c, "none")
    assert (loss >= sq.min(-1).values).all() and (loss <= sq.max(-1).values).all()


def test_masks_trained_on_the_mask_loss_move_onto_the_smallest_error() -> None:
    """Why ``mask_grad`` defaults to False: minimised over the masks, the weighted mean goes to
    the smallest squared error (the masks hide the error instead of the student reducing it)."""
    torch.manual_seed(0)
    c, h, w = 4, 3, 3
    f_s, f_t = torch.randn(1, c, h, w, dtype=F64), torch.randn(1, c, h, w, dtype=F64)
    z_s = torch.zeros(1, 1, h, w, dtype=F64, requires_grad=True)
    z_c = torch.zeros(1, 1, c, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([z_s, z_c], lr=0.3)
    start = acam_mask_loss(f_s, f_t, torch.sigmoid(z_s), torch.sigmoid(z_c)).item()
    for _ in range(300):
        opt.zero_grad()
        acam_mask_loss(f_s, f_t, torch.sigmoid(z_s), torch.sigmoid(z_c)).backward()
        opt.step()
    end = acam_mask_loss(f_s, f_t, torch.sigmoid(z_s), torch.sigmoid(z_c)).item()
    sq = (f_t - f_s).square()
    # a rank-one mask reaches at best the smallest row-by-column mean; it must end far below the
    # uniform-mask mean and below the mean of every single channel at uniform spatial weights
    assert end < 0.5 * start and end < sq.mean(dim=(-2, -1)).min().item()
    assert f_s.grad is None  # only the masks moved


def test_gradients_reach_the_mask_generators_through_the_loss() -> None:
    torch.manual_seed(0)
    fusion = ACAMFusion(student_channels=3, teacher_channels=6, num_masks=2).double()
    f_s = torch.randn(4, 3, 5, 5, dtype=F64)
    f_t = torch.randn(4, 6, 5, 5, dtype=F64)
    generators = [*fusion.spatial.parameters(), *fusion.channel.parameters()]

    def generator_grads(**kw: object) -> list[torch.Tensor]:
        fusion.zero_grad(set_to_none=True)
        adapted, m_s, m_c = fusion(f_s, f_t)
        acam_loss(adapted, f_t, m_s, m_c, **kw).backward()
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in generators]

    # default: through L_div only
    assert all(g.abs().sum() > 0 for g in generator_grads())
    # L_mask alone reaches the generators only with mask_grad=True
    assert all(g.abs().sum() == 0 for g in generator_grads(div_weight=0.0))
    assert all(g.abs().sum() > 0 for g in generator_grads(div_weight=0.0, mask_grad=True))
    # the student side (adapter) always gets L_mask's gradient
    fusion.zero_grad(set_to_none=True)
    adapted, m_s, m_c = fusion(f_s, f_t)
    acam_loss(adapted, f_t, m_s, m_c, div_weight=0.0).backward()
    assert fusion.adapter.weight.grad.abs().sum() > 0


def test_quick_acam_run_keeps_masks_spatially_varying_and_reports_the_mask_metrics(
    tmp_path,
) -> None:
    metrics = run_kd(resolve("acam-digits", QUICK), tmp_path)
    keys = ("acam_mask_cosine", "acam_mask_std", "acam_mask_change", "acam_min_spatial_mask_mean")
    keys += ("acam_mask_loss_first", "acam_mask_loss_last")
    keys += ("acam_feature_mse_first", "acam_feature_mse_last")
    assert all(math.isfinite(metrics[k]) for k in keys)
    # 1e-3: a constant mask gives 0 up to float32 rounding of a sigmoid (~1e-7); the collapsed
    # masks of the old loss were at 6e-4 after 40 steps and 0.0 at the end (docs/kd.md)
    assert metrics["acam_mask_std"] > 1e-3
    assert metrics["acam_min_spatial_mask_mean"] > 1e-3
    assert metrics["acam_mask_change"] > 0
    assert 0 <= metrics["acam_mask_cosine"] <= 1
