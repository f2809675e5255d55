"""EdgeFD's embedding filter and CV-DD's multi-crop relabelling (FKD-style stored views)."""

from __future__ import annotations

import math

import pytest
import torch

from scoredistill.kd.models import MLP
from scoredistill.runs.kd_procedures.cvdd import SmallCNN, multi_crop_relabel, shift_views
from scoredistill.runs.kd_procedures.federated import edgefd_claims, edgefd_features
from scoredistill.runs.kd_procedures.proc_common import seeded

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- EdgeFD
def test_embedding_filter_claims_own_rows_at_rate_q_and_rejects_far_points() -> None:
    rng = torch.Generator().manual_seed(0)
    with seeded(rng):
        model = MLP(8, (16,), 3)
    n, q = 1000, 0.9
    local, held_out = torch.randn(n, 8, generator=rng), torch.randn(n, 8, generator=rng)
    far = torch.randn(100, 8, generator=rng) + 20.0

    def claims(x: torch.Tensor) -> torch.Tensor:
        phi = edgefd_features(model, local, "embedding")
        return edgefd_claims(phi, edgefd_features(model, x, "embedding"), 5, q, seed=0)

    assert edgefd_features(model, local, "embedding").shape == (n, 16)
    # τ is the q-quantile of these very distances: the rate is q up to one order statistic
    assert abs(float(claims(local).float().mean()) - q) <= 1 / n
    # fresh rows of the same law: coverage q, binomial noise from both the n rows that set τ
    # and the n rows tested, 4 standard errors
    se = math.sqrt(2 * q * (1 - q) / n)
    assert abs(float(claims(held_out).float().mean()) - q) < 4 * se
    assert not claims(far).any()


def test_edgefd_features_raw_is_identity_and_bad_kind_is_rejected() -> None:
    model, x = MLP(4, (8,), 2), torch.randn(5, 4)
    assert edgefd_features(model, x, "raw") is x
    with pytest.raises(ValueError, match="filter_features"):
        edgefd_features(model, x, "logits")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- CV-DD crops
def test_shift_views_is_a_pure_shift_within_pad() -> None:
    rng, pad = torch.Generator().manual_seed(0), 1
    x = torch.zeros(200, 1, 8, 8)
    x[:, :, pad:-pad, pad:-pad] = torch.rand(200, 1, 8 - 2 * pad, 8 - 2 * pad, generator=rng)
    views = shift_views(x, pad, rng)
    assert views.shape == x.shape
    # the ink lies inside the border: no content crosses the edge, so the mass is conserved
    assert torch.allclose(views.sum((1, 2, 3)), x.sum((1, 2, 3)), atol=1e-5)
    shifts = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)]
    seen = set()
    for v, xi in zip(views, x, strict=True):
        match = [s for s in shifts if torch.equal(v, torch.roll(xi, s, dims=(1, 2)))]
        assert match, "every view is the image rolled by at most pad pixels"
        seen.add(match[0])
    assert seen == set(shifts)  # P(a shift unseen in 200 draws) ≈ 9·(8/9)^200 ≈ 5e-10
    assert torch.equal(shift_views(x, 0, rng), x)


def test_multi_crop_soft_labels_are_the_train_mode_committee_on_each_view() -> None:
    rng = torch.Generator().manual_seed(0)
    committee = []
    for width in (4, 8):
        with seeded(rng):
            model = SmallCNN(width, 10)
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.fill_(0.5)  # eval mode would differ from train mode
        committee.append(model.eval())
    priors = torch.tensor([90.0, 80.0])
    x = torch.randn(20, 1, 8, 8, generator=rng)
    views, soft = multi_crop_relabel(committee, priors, x, 3, 1, rng)
    assert views.shape == (3, 20, 1, 8, 8) and soft.shape == (3, 20, 10)
    assert not torch.equal(views[0], views[1])  # the crops differ

    w = (priors / 10).softmax(0)
    state = [{k: v.clone() for k, v in m.state_dict().items()} for m in committee]
    for k in range(3):
        with torch.no_grad():  # BSSL by hand: each half batch of view k, BN on its own stats
            ref = torch.cat(
                [
                    sum(wm * m.train()(half) for wm, m in zip(w, committee, strict=True))
                    for half in views[k].chunk(2)
                ]
            )
            for m, s in zip(committee, state, strict=True):
                m.load_state_dict(s)  # undo the running-stat update of the reference forward
                m.eval()
            eval_out = sum(wm * m(views[k]) for wm, m in zip(w, committee, strict=True))
        assert torch.allclose(soft[k], ref, atol=1e-5)
        assert not torch.allclose(soft[k], eval_out, atol=1e-3)

    one_view, one_soft = multi_crop_relabel(committee, priors, x, 1, 1, rng)
    assert torch.equal(one_view[0], x) and one_soft.shape == (1, 20, 10)
