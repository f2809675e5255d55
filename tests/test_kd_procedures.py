"""KD procedures: online KD, LM distillation on a Markov language, the sweep, DisWOT, presets."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr

from scoredistill.bench.kd import EXPECTED, with_derived
from scoredistill.config import ConfigError
from scoredistill.kd.losses import jsd
from scoredistill.kd.markov import LMConfig, MarkovConfig, MarkovLanguage, TinyLM
from scoredistill.kd.models import MLP
from scoredistill.runs.kd_procedures import PROCEDURE_PRESETS, resolve_procedure, run_procedure
from scoredistill.runs.kd_procedures.cvdd import SmallCNN, bn_matching_loss
from scoredistill.runs.kd_procedures.diswot import diswot_score
from scoredistill.runs.kd_procedures.federated import dirichlet_split, edgefd_claims, knfu_fuse
from scoredistill.runs.kd_procedures.lm import LMDistillConfig, distill_step_loss, draw_batch
from scoredistill.runs.kd_procedures.online import (
    OnlineConfig,
    online_step,
    run_online,
    student_loss,
    teacher_loss,
)
from scoredistill.runs.kd_procedures.proc_common import seeded, spearman

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", sorted(PROCEDURE_PRESETS))
def test_quick_preset_writes_finite_metrics(name: str, tmp_path: Path) -> None:
    metrics = run_procedure(name, [], tmp_path, quick=True)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["preset"] == name and (tmp_path / "report.md").exists()
    assert json.loads((tmp_path / "config.json").read_text())["preset"] == name
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
    assert "wall_s" in scalars and all(math.isfinite(v) for v in scalars.values()), scalars
    headline = [k for k in scalars if f"baseline_{k}" in scalars]
    assert headline, "every procedure reports a metric next to its baseline"
    # the benchmark can check every stated effect: each claim's metrics are in the run
    claims = EXPECTED.get(name, [])
    assert claims or name == "dml-online-classification"  # DML is BD-KD's reference arm
    full = with_derived(metrics)
    for c in claims:
        assert c.metric in full, (c.text, c.metric)
        if isinstance(c.against, str) and ":" not in c.against:
            assert c.against in full, (c.text, c.against)
        elif isinstance(c.against, str):
            assert c.against.partition(":")[0] in PROCEDURE_PRESETS, c.against


@pytest.mark.parametrize(
    ("name", "item", "key"),
    [
        ("gkd-markov", "nonsense=1", "nonsense"),
        ("gkd-markov", "language.bogus=3", "language.bogus"),
        ("bdkd-online-classification", "temprature=2", "temprature"),
        ("sweep-digits", "widths=oops", "widths"),
    ],
)
def test_bad_override_names_the_key(name: str, item: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_procedure(name, [item], tmp_path / "run")
    assert not (tmp_path / "run").exists()  # rejected before any work


def test_overrides_and_quick_resolve() -> None:
    _, cfg = resolve_procedure("gkd-markov", ["beta=0.0", "language.vocab=8"], quick=True)
    assert cfg.beta == 0.0 and cfg.language.vocab == 8 and cfg.language.length == 8
    assert cfg.steps == PROCEDURE_PRESETS["gkd-markov"]["quick"]["steps"]


# ----------------------------------------------------------------------------- Markov language
def _lang(**kw: int) -> MarkovLanguage:
    return MarkovLanguage(MarkovConfig(**kw), torch.Generator().manual_seed(0))


def test_markov_probabilities_are_normalised() -> None:
    lang = _lang(vocab=5, order=2, length=3)
    assert torch.allclose(lang.probs.sum(-1), torch.ones(len(lang.probs)), atol=1e-6)
    assert (lang.probs > 0).all()  # the ε leak keeps both KL directions finite
    every = torch.tensor(list(itertools.product(range(5), repeat=3)))  # all 125 sequences
    total = lang.log_prob(every).double().exp().sum()
    assert abs(float(total) - 1.0) < 1e-5  # float32 products of 3 factors, 125 terms


def test_markov_sampler_matches_exact_transitions() -> None:
    lang = _lang(vocab=6, order=1, length=16)
    tokens = lang.sample(3000, torch.Generator().manual_seed(1))
    ctx = lang.contexts(tokens).flatten()
    counts = torch.zeros_like(lang.probs, dtype=torch.float64)
    counts.index_put_((ctx, tokens.flatten()), torch.ones(ctx.numel(), dtype=torch.float64), True)
    visits = counts.sum(-1, keepdim=True)
    seen = visits.squeeze(-1) >= 1000
    p = lang.probs.double()[seen]
    freq = counts[seen] / visits[seen]
    # each frequency is a binomial proportion: within 5 standard errors (two-sided p ≈ 6e-7 per
    # cell, ~40 cells) unless the sampler is wrong
    se = (p * (1 - p) / visits[seen]).sqrt()
    assert seen.sum() >= 5 and ((freq - p).abs() <= 5 * se + 1e-12).all()


# ----------------------------------------------------------------------------- GKD / MiniLLM
def _logits(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return 3 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_gkd_beta0_is_token_forward_kl_and_masked() -> None:
    s, t = _logits(0, (4, 7, 11)), _logits(1, (4, 7, 11))
    tokens = torch.zeros(4, 7, dtype=torch.int64)
    p, log_p, log_q = t.softmax(-1), t.log_softmax(-1), s.log_softmax(-1)
    naive = (p * (log_p - log_q)).sum(-1)  # (B, L) forward KL per token
    cfg = LMDistillConfig(method="gkd", beta=0.0)
    assert torch.allclose(distill_step_loss(s, t, tokens, cfg), naive.mean(), atol=1e-5)
    mask = torch.rand(4, 7, generator=torch.Generator().manual_seed(2)) < 0.5
    masked = jsd(s, t, 0.0, mask=mask)
    assert torch.allclose(masked, naive[mask].mean(), atol=1e-5)  # masked tokens contribute 0


def test_minillm_without_mixing_is_reverse_kl_gkd() -> None:
    s, t = _logits(3, (3, 5, 9)), _logits(4, (3, 5, 9))
    tokens = torch.randint(9, (3, 5), generator=torch.Generator().manual_seed(5))
    mini = LMDistillConfig(method="minillm", mix_alpha=0.0)  # p̃ = q: every weight is 1
    rkl = LMDistillConfig(method="gkd", beta=1.0)
    assert torch.allclose(
        distill_step_loss(s, t, tokens, mini), distill_step_loss(s, t, tokens, rkl), atol=1e-6
    )


def test_gkd_lambda_selects_data_or_student_samples() -> None:
    torch.manual_seed(0)
    student = TinyLM(5, LMConfig(embed=4, hidden=4))
    data = torch.full((6, 7), 4, dtype=torch.int64)  # the data is constant; samples are not
    rng = torch.Generator().manual_seed(0)
    for lmbda, from_data in ((0.0, True), (1.0, False)):
        cfg = LMDistillConfig(method="gkd", lmbda=lmbda, batch_size=6)
        batch = draw_batch(student, None, data, 0, cfg, rng)
        assert batch.shape == (6, 7) and bool((batch == 4).all()) == from_data


# ----------------------------------------------------------------------------- CV-DD
def test_bn_matching_vanishes_at_the_running_statistics() -> None:
    torch.manual_seed(0)
    model = SmallCNN(3, 4).eval()
    x = torch.randn(16, 1, 8, 8)
    conv1, bn1, _, conv2, bn2 = list(model.body)[:5]
    with torch.no_grad():  # set each BN's running stats to its input's batch stats (biased var)
        h = conv1(x)
        bn1.running_mean.copy_(h.mean((0, 2, 3)))
        bn1.running_var.copy_(h.var((0, 2, 3), unbiased=False))
        h = conv2(torch.relu(bn1(h)))
        bn2.running_mean.copy_(h.mean((0, 2, 3)))
        bn2.running_var.copy_(h.var((0, 2, 3), unbiased=False))
    logits, term = bn_matching_loss(model, x, first_mult=10.0)
    assert logits.shape == (16, 4) and float(term.detach()) < 1e-5  # float32 rounding of means/vars
    _, moved = bn_matching_loss(model, x + 1.0, first_mult=10.0)
    assert float(moved.detach()) > 1.0


# ----------------------------------------------------------------------------- online KD
@pytest.mark.parametrize("method", ["dml", "bdkd"])
def test_online_losses_reach_only_their_own_network(method: str) -> None:
    cfg = OnlineConfig(method=method)
    torch.manual_seed(0)
    student, teacher = MLP(6, (8,), 4), MLP(6, (16,), 4)
    x, y = torch.randn(10, 6), torch.randint(4, (10,))
    s_logits, t_logits = student(x), teacher(x)
    grads = torch.autograd.grad(
        student_loss(s_logits, t_logits, y, cfg), list(teacher.parameters()), allow_unused=True
    )
    assert all(g is None for g in grads)
    grads = torch.autograd.grad(
        teacher_loss(t_logits, s_logits, y, cfg), list(student.parameters()), allow_unused=True
    )
    assert all(g is None for g in grads)
    before = [p.detach().clone() for p in [*student.parameters(), *teacher.parameters()]]
    opts = (torch.optim.SGD(student.parameters(), 0.1), torch.optim.SGD(teacher.parameters(), 0.1))
    online_step(student, teacher, opts, x, y, cfg)
    after = [*student.parameters(), *teacher.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_online_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = OnlineConfig(task="wine", steps=12, checkpoint_every=6, batch_size=32)
    full = run_online(cfg, tmp_path / "full")
    run_online(dataclasses.replace(cfg, steps=6), tmp_path / "cut")
    resumed = run_online(cfg, tmp_path / "cut", resume=True)
    for key in ("accuracy", "ece", "nll", "teacher_nll", "loss_student"):
        assert resumed[key] == full[key], key


# ----------------------------------------------------------------------------- DisWOT, ranks
def test_diswot_score_is_deterministic_under_a_seed() -> None:
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 3
    with seeded(torch.Generator().manual_seed(1)):
        teacher = MLP(6, (12,), 3)

    def score(seed: int) -> dict[str, float]:
        with seeded(torch.Generator().manual_seed(seed)):
            student = MLP(6, (5,), 3)
        return diswot_score(student, teacher, x, y)

    assert score(7) == score(7) and score(7) != score(8)
    assert score(7)["score"] == -(score(7)["d_rel"] + score(7)["d_sem"])


def test_spearman_matches_scipy_with_ties() -> None:
    a, b = [3.0, 1.0, 2.0, 2.0, 5.0], [0.1, 0.4, 0.2, 0.3, 0.9]
    assert abs(spearman(a, b) - spearmanr(a, b).statistic) < 1e-12


# ----------------------------------------------------------------------------- federated
def test_dirichlet_split_partitions_rows_with_label_skew() -> None:
    y = torch.arange(10).repeat(100)
    parts = dirichlet_split(y, 8, 0.1, torch.Generator().manual_seed(0), min_size=10)
    rows = torch.cat(parts)
    assert sorted(rows.tolist()) == list(range(len(y)))  # every row exactly once
    assert min(len(p) for p in parts) >= 10
    # α = 0.1: a typical client holds most of its rows in few classes
    top = [torch.bincount(y[p], minlength=10).max() / len(p) for p in parts]
    assert float(torch.tensor(top).median()) > 0.4  # IID would give ~0.1


def test_knfu_fuses_only_semantic_neighbours() -> None:
    a = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    b = torch.tensor([[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    probs = torch.stack([a, a, b])  # clients 0 and 1 agree, client 2 differs
    q = knfu_fuse(probs, beta=10.0)
    assert torch.allclose(q[0], a) and torch.allclose(q[1], a)
    assert torch.allclose(q[2], b)  # D_2j > mean for j != 2: only itself is a neighbour
    assert torch.allclose(q.sum(-1), torch.ones(3, 2))


def test_edgefd_claims_in_distribution_only() -> None:
    rng = torch.Generator().manual_seed(0)
    local = torch.randn(200, 4, generator=rng)
    near, far = torch.randn(50, 4, generator=rng) * 0.5, torch.randn(50, 4, generator=rng) + 20
    claims = edgefd_claims(local, torch.cat([near, far]), k=5, quantile=0.95, seed=0)
    assert claims[:50].float().mean() > 0.9 and not claims[50:].any()
