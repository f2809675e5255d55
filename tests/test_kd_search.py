"""Student search: DisWOT's regularised evolution, the FLOPs counter and AutoDistil's budget."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from scoredistill.kd.evolution import MLPSpace, evolve
from scoredistill.kd.flops import count_flops, mlp_flops, mlp_params
from scoredistill.kd.models import MLP, SmallCNN
from scoredistill.runs.kd_procedures.autodistil import (
    AutoDistilConfig,
    SuperMLP,
    relation_loss,
    run_autodistil,
    subnet_flops,
)
from scoredistill.runs.kd_procedures.diswot import DisWOTConfig, search_student
from scoredistill.runs.kd_procedures.proc_common import seeded

torch.set_num_threads(1)

SPACE = MLPSpace()  # widths {8, ..., 128} x depths 1-3: 584 architectures


# ----------------------------------------------------------------------------- evolution
def _toy(arch: tuple[int, ...]) -> float:
    """Known optimum (48,): every layer's distance to 48, and a cost per extra layer."""
    return -sum(abs(w - 48) for w in arch) - 16.0 * (len(arch) - 1)


@pytest.mark.parametrize("seed", range(5))
def test_evolution_finds_the_known_optimum_of_a_toy_score(seed: int) -> None:
    found = evolve(
        _toy, SPACE, lambda a: True, population=10, cycles=40, tournament=3,
        rng=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    assert found.best == (48,) and found.best_score == 0.0


def test_evolution_scores_population_plus_cycles_candidates() -> None:
    calls: list[tuple[int, ...]] = []

    def score(arch: tuple[int, ...]) -> float:
        calls.append(arch)
        return _toy(arch)

    found = evolve(
        score, SPACE, lambda a: True, population=7, cycles=13, tournament=2,
        rng=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert found.evaluated == len(calls) == len(found.history) == 7 + 13
    # a budget that admits one architecture: every mutation is rejected, the parent is re-scored
    only = evolve(
        _toy, SPACE, lambda a: a == (8,), population=3, cycles=4, tournament=2,
        rng=torch.Generator().manual_seed(0), max_draws=200,
    )  # fmt: skip
    assert only.evaluated == 3 + 4 and {a for a, _ in only.history} == {(8,)}


def test_evolution_never_leaves_the_budget() -> None:
    def fits(a: tuple[int, ...]) -> bool:
        return mlp_params(64, a, 10) <= 3000

    # the score wants ever larger networks, so the search presses against the budget
    found = evolve(
        lambda a: float(mlp_params(64, a, 10)), SPACE, fits, population=10, cycles=40,
        tournament=3, rng=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert all(fits(a) for a, _ in found.history) and fits(found.best)


def test_mlp_params_counts_the_module() -> None:
    for widths in [(5,), (8, 3), (4, 6, 2)]:
        assert mlp_params(7, widths, 3) == sum(p.numel() for p in MLP(7, widths, 3).parameters())


def test_diswot_search_respects_the_param_budget_and_the_params_baseline_is_the_largest() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=gen), torch.arange(32) % 3
    with seeded(gen):
        teacher = MLP(8, (16,), 3).requires_grad_(False)  # as ``fit`` leaves it
    cfg = DisWOTConfig(param_budget=400, search_population=6, search_cycles=10)
    out = search_student(cfg, teacher, x, y, 3, gen)
    in_budget = [a for a in MLPSpace() if mlp_params(8, a, 3) <= 400]
    assert out["search_params"] <= 400 and out["search_evaluated"] == 6 + 10
    assert out["baseline_search_params"] == max(mlp_params(8, a, 3) for a in in_budget)
    with pytest.raises(ValueError, match="param_budget"):
        search_student(dataclasses.replace(cfg, param_budget=10), teacher, x, y, 3, gen)


# ----------------------------------------------------------------------------- FLOPs
def test_count_flops_matches_hand_counts() -> None:
    # MLP 5 -> 7 -> 3 -> 2 on a batch of 4: 2 * 4 * (5*7 + 7*3 + 3*2) = 496
    assert count_flops(MLP(5, (7, 3), 2), torch.zeros(4, 5)) == 496
    # conv 2->3, 3x3, same padding, 4x4 map: 2 * (3*16 outputs) * (2*3*3) = 1728;
    # then Linear 48 -> 5: 2 * 48 * 5 = 480
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5))
    assert count_flops(conv, torch.zeros(1, 2, 4, 4)) == 1728 + 480
    # grouped, strided: 5x5 -> 2x2, 4 out channels, each sees 4/2 input channels: 2*16*18 = 576
    assert count_flops(nn.Conv2d(4, 4, 3, stride=2, groups=2), torch.zeros(1, 4, 5, 5)) == 576
    # SmallCNN((1, 8, 8), (4,), 10): conv 2*(4*64)*9 = 4608, head 2*256*10 = 5120
    assert count_flops(SmallCNN((1, 8, 8), (4,), 10), torch.zeros(1, 64)) == 4608 + 5120


def _plain(net: SuperMLP, width: int, depth: int) -> MLP:
    """The stand-alone MLP holding sub-network ``(width, depth)``'s sliced weights."""
    model = MLP(net.layers[0].in_features, (width,) * depth, net.head.out_features)
    with torch.no_grad():
        for i, layer in enumerate(model.body[::2]):
            src = net.layers[i]
            layer.weight.copy_(src.weight[:width, : layer.in_features])
            layer.bias.copy_(src.bias[:width])
        model.head.weight.copy_(net.head.weight[:, :width])
        model.head.bias.copy_(net.head.bias)
    return model


def test_subnet_flops_is_the_hook_count_of_the_equivalent_plain_mlp() -> None:
    with seeded(torch.Generator().manual_seed(0)):
        net = SuperMLP(12, 16, 3, 4)
    x = torch.randn(1, 12, generator=torch.Generator().manual_seed(1))
    for width, depth in itertools.product((2, 5, 16), (1, 2, 3)):
        plain = _plain(net, width, depth)
        # float32 rounding of a handful of products
        torch.testing.assert_close(plain(x), net(x, (width, depth)), rtol=0, atol=1e-6)
        assert subnet_flops(12, (width, depth), 4) == count_flops(plain, x)
        assert mlp_flops(12, (width,) * depth, 4) == count_flops(plain, x)


def test_subnet_flops_increase_with_width_and_depth() -> None:
    widths, depths = (8, 16, 32, 64, 128), (1, 2, 3)
    for d in depths:
        flops = [subnet_flops(64, (w, d), 10) for w in widths]
        assert flops == sorted(set(flops))
    for w in widths:
        flops = [subnet_flops(64, (w, d), 10) for d in depths]
        assert flops == sorted(set(flops))


# ----------------------------------------------------------------------------- relation loss
def test_relation_loss_vanishes_when_the_relations_agree() -> None:
    h = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    assert float(relation_loss(h, h)) == pytest.approx(0.0, abs=1e-6)  # float32 round-off
    # wider teacher features with the same relations: h Q (QQᵀ = I), scaled so that
    # (c h Q)(c h Q)ᵀ / √8 = h hᵀ / √5, i.e. c = (8/5)^(1/4)
    q, _ = torch.linalg.qr(torch.randn(8, 5, generator=torch.Generator().manual_seed(1)))
    h_t = h @ q.T * (8 / 5) ** 0.25
    assert float(relation_loss(h, h_t)) == pytest.approx(0.0, abs=1e-5)


def test_relation_loss_is_the_row_averaged_kl_and_non_negative() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        h_s, h_t = torch.randn(7, 3, generator=gen), torch.randn(7, 9, generator=gen)
        r_s = torch.softmax(h_s @ h_s.T / 3**0.5, dim=1)
        r_t = torch.softmax(h_t @ h_t.T / 3.0, dim=1)
        expected = (r_t * (r_t.log() - r_s.log())).sum() / 7
        loss = relation_loss(h_s, h_t)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)  # float32
        assert float(loss) > 0


# ----------------------------------------------------------------------------- AutoDistil budget
TINY = AutoDistilConfig(
    widths=(4, 8, 16), super_steps=3, standalone_steps=3, teacher_widths=(16,), teacher_steps=5
)


@pytest.mark.parametrize("objective", ["kd", "relation"])
def test_autodistil_choice_respects_the_flops_budget(objective: str) -> None:
    # (16, 1) has 2368 FLOPs, (8, 2) 1312, (16, 2) 2880: a 2000 budget keeps 4 of 6
    cfg = dataclasses.replace(TINY, flops_budget=2000, objective=objective)
    m = run_autodistil(cfg)
    assert m["chosen_flops"] == subnet_flops(64, tuple(m["chosen"]), 10) <= 2000
    in_budget = [r["standalone_test"] for r in m["archs"] if r["flops"] <= 2000]
    assert m["best_in_budget_accuracy"] == max(in_budget) and len(in_budget) == 4
    with pytest.raises(ValueError, match="flops_budget"):
        run_autodistil(dataclasses.replace(cfg, flops_budget=100))
