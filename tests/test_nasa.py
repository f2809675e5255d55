"""SNOOPI's NASA system (issue 14): the attribute grid, NASA's attention rule, the metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scoredistill.cli import main
from scoredistill.config import ConfigError
from scoredistill.runs.systems import run_system
from scoredistill.runs.systems.nasa import eval_pairs
from scoredistill.runs.systems.nasa_lab import CrossAttentionGenerator, Grid, mode_masses

H, S = 1.5, 0.1  # the preset's spacing and std


def _set(row: int | None = None, col: int | None = None, n: int = 1) -> torch.Tensor:
    s = torch.zeros(n, 8)
    if row is not None:
        s[:, row] = 1.0
    if col is not None:
        s[:, 4 + col] = 1.0
    return s


def _log_mixture(x: torch.Tensor, means: list[tuple[float, float]]) -> torch.Tensor:
    """Hand-written ``log (1/K) sum_k N(x; mu_k, S^2 I)`` in 2-D."""
    mu = torch.tensor(means, dtype=torch.float64)
    sq = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
    log_n = -sq / (2 * S**2) - math.log(2 * math.pi * S**2)
    return torch.logsumexp(log_n, 1) - math.log(len(means))


def _centre(r: int, c: int) -> tuple[float, float]:
    return ((c - 1.5) * H, (1.5 - r) * H)


def test_restricted_laws_are_the_hand_written_mixtures():
    grid = Grid(H, S)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    cases = [
        (_set(), _set(), [_centre(r, c) for r in range(4) for c in range(4)]),  # empty P, N
        (_set(row=1), _set(), [_centre(1, c) for c in range(4)]),
        (_set(row=1, col=2), _set(), [_centre(1, 2)]),
        (_set(row=1), _set(col=2), [_centre(1, c) for c in (0, 1, 3)]),  # P and not N
        (_set(col=3), _set(row=0), [_centre(r, 3) for r in (1, 2, 3)]),
        (_set(), _set(row=0, col=0), [_centre(r, c) for r in range(4) for c in range(4)][1:]),
    ]
    for pos, neg, means in cases:
        # an empty negative set matches every mode: no negative is the teacher's law of P
        p, n = pos.expand(50, 8), neg.expand(50, 8)
        law = grid.target(p, n) if neg.any() else grid.law(p)
        torch.testing.assert_close(law.log_prob(x), _log_mixture(x, means))


def test_a_row_and_not_a_column_leaves_three_modes_in_every_eval_pair():
    grid = Grid(H, S)
    pos, neg = eval_pairs()
    allowed = grid.matches(pos) & ~grid.matches(neg)
    assert pos.shape == neg.shape == (32, 8)
    assert allowed.sum(1).tolist() == [3] * 32
    assert not bool((pos * neg).any())  # P and N never share a token
    with pytest.raises(ValueError, match="at least one mode"):
        grid.target(_set(row=0, col=0), _set(row=0))


def test_training_sets_cover_the_four_kinds_evenly():
    sets = Grid(H, S).draw_sets(10_000, torch.Generator().manual_seed(1))
    rows, cols = sets[:, :4].sum(1), sets[:, 4:].sum(1)
    assert bool(((rows <= 1) & (cols <= 1)).all())
    kinds = (rows + 2 * cols).long().bincount(minlength=4).double() / len(sets)
    # each kind has p = 1/4: 5 standard errors sqrt(p (1 - p) / n) = 0.022
    quarter = torch.full((4,), 0.25, dtype=torch.float64)
    torch.testing.assert_close(kinds, quarter, atol=0.022, rtol=0)


def _manual_attention(gen: CrossAttentionGenerator, q: torch.Tensor, tokens: list[int]):
    """Per head ``softmax(q_h k_h^T / sqrt d) v_h`` over the null token and ``tokens``."""
    e = gen.embed[[0, *(t + 1 for t in tokens)]]
    qq, k, v = gen.w_q(q), gen.w_k(e), gen.w_v(e)
    d = qq.shape[-1] // gen.heads
    out = []
    for h in range(gen.heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(k[:, sl] @ qq[sl] / math.sqrt(d), 0)
        out.append(w @ v[:, sl])
    return torch.cat(out)


def test_nasa_is_z_plus_minus_alpha_z_minus_before_the_output_projection():
    torch.manual_seed(0)
    gen = CrossAttentionGenerator(latent=2, width=8, heads=2, hidden=16)
    z = torch.randn(3, 2)
    pos, neg = _set(row=2, n=3), _set(row=1, col=3, n=3)
    with torch.no_grad():
        q = gen.query(z)
        for b in range(3):
            zp, zn = _manual_attention(gen, q[b], [2]), _manual_attention(gen, q[b], [1, 7])
            want = gen.head(q[b] + gen.w_o(zp - 0.7 * zn))
            torch.testing.assert_close(gen(z, pos, neg=neg, alpha=0.7)[b], want)
            torch.testing.assert_close(gen(z, pos)[b], gen.head(q[b] + gen.w_o(zp)))
        torch.testing.assert_close(gen(z, pos, neg=neg, alpha=0.0), gen(z, pos))


def test_absent_tokens_do_not_reach_the_output():
    torch.manual_seed(0)
    gen = CrossAttentionGenerator(latent=2, width=8, heads=2, hidden=16)
    z, pos = torch.randn(4, 2), _set(col=1, n=4)
    with torch.no_grad():
        before = gen(z, pos)
        gen.embed[1:5] += 3.0  # the row tokens, none in the set
        torch.testing.assert_close(gen(z, pos), before)
        gen.embed[6] += 3.0  # column 1's token
        assert not torch.allclose(gen(z, pos), before)


def test_mode_masses_of_hand_placed_points():
    grid = Grid(H, S)
    pos, neg = _set(row=0, n=5), _set(col=0, n=5)
    x = torch.tensor(
        [
            _centre(0, 0),  # negative (row 0, column 0)
            _centre(0, 2),  # target
            (_centre(0, 2)[0] + 0.25, _centre(0, 2)[1]),  # target, 2.5 std away
            (0.0, 0.0),  # between four modes: off
            _centre(3, 1),  # on a mode outside P
        ]
    )
    m = mode_masses(x, grid, pos, neg, radius=3 * S)
    assert m == pytest.approx({"neg_mass": 0.2, "target_mass": 0.4, "off_mass": 0.2})


def test_exact_samples_score_the_gaussian_tail():
    """Exact target draws: no negative mass; off-mode = P(|e| > 3) for a 2-D standard normal,
    exp(-4.5) = 0.0111; 4 standard errors on 20000 draws = 0.003."""
    grid = Grid(H, S)
    pos, neg = (s.repeat_interleave(625, 0) for s in eval_pairs())
    x, _ = grid.target(pos, neg).sample(torch.Generator().manual_seed(3))
    m = mode_masses(x, grid, pos, neg, radius=3 * S)
    assert m["neg_mass"] == 0.0
    assert m["off_mass"] == pytest.approx(math.exp(-4.5), abs=0.003)


@pytest.mark.parametrize(
    ("key", "value"),
    [("heads", "3"), ("spacing", "0.5"), ("alphas", "[-1.0]"), ("latent", "4"), ("steps", "0")],
)
def test_bad_values_name_the_key(key: str, value: str):
    with pytest.raises(ConfigError, match=key):
        run_system("nasa-attrgrid", [f"{key}={value}"], Path("/nonexistent"), quick=True)


def test_resume_equals_an_uninterrupted_run(tmp_path: Path):
    sets = ["steps=4", "checkpoint_every=2"]
    full = run_system("nasa-attrgrid", sets, tmp_path / "full", quick=True)
    run_system("nasa-attrgrid", ["steps=2", *sets[1:]], tmp_path / "cut", quick=True)
    resumed = run_system("nasa-attrgrid", sets, tmp_path / "cut", resume=True, quick=True)
    assert resumed["rows"] == full["rows"] and resumed["init_loss"] == full["init_loss"]


def test_cli_quick_run_writes_the_metrics(tmp_path: Path):
    assert main(["distill", "--preset", "nasa-attrgrid", "--quick", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"positive", "nasa@0.5", "cfg@1", "exact"} == set(m["rows"])
    for r in m["rows"].values():
        assert {"neg_mass", "off_mass", "target_mass", "mmd2"} == set(r)
        assert 0 <= r["neg_mass"] + r["off_mass"] + r["target_mass"] <= 1 + 1e-9
    keys = {"best_nasa", "best_cfg", "claim_nasa_suppresses", "claim_nasa_beats_cfg",
            "claim_nasa_less_blending", "init_loss", "wall_s"}  # fmt: skip
    assert keys <= set(m)
    assert "| nasa@0.5 |" in (tmp_path / "report.md").read_text()
