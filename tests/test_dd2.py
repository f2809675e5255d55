"""DD2 (issue 14): the continuous Markov-token testbed against brute-force enumeration, the
per-position conditional score distillation update against its definition, the system run."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoredistill.config import ConfigError
from scoredistill.kd.markov import MarkovConfig
from scoredistill.kd.markov_tokens import MarkovTokens, prefix_condition
from scoredistill.objectives.dd2 import DD2
from scoredistill.objectives.dmd import DMD
from scoredistill.runs.systems import run_system
from scoredistill.runs.systems.dd2 import gap_closed
from scoredistill.schedules import get_schedule
from scoredistill.teachers.conditional_mixture import PerSampleTeacher


def _testbed(vocab: int = 3, length: int = 3, std: float = 0.4, seed: int = 0) -> MarkovTokens:
    cfg = MarkovConfig(vocab=vocab, order=1, branching=2, length=length)
    return MarkovTokens(cfg, std, seed)


def _brute_log_joint(tb: MarkovTokens, x: torch.Tensor, upto: int) -> torch.Tensor:
    """``log p(x_1..x_upto)`` of the HMM by summing over every token sequence (no filter)."""
    pts = x.reshape(x.shape[0], tb.length, 2)
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for seq in itertools.product(range(tb.vocab), repeat=upto):
        p = tb.start[seq[0]] * torch.ones(x.shape[0], dtype=torch.float64)
        for j, v in enumerate(seq):
            if j:
                p = p * tb.trans[seq[j - 1], v]
            d2 = (pts[:, j] - tb.codebook[v]).pow(2).sum(-1)
            p = p * torch.exp(-0.5 * d2 / tb.std**2) / (2 * math.pi * tb.std**2)
        total = total + p
    return total.log()


def test_the_conditional_is_the_ratio_of_brute_force_joints():
    """p(x_l | x_<l) from the forward filter = p(x_<=l) / p(x_<l) by enumeration. std = 0.4
    makes the posterior of each token far from one-hot, so the filter's memory matters."""
    tb = _testbed()
    x = torch.randn(
        16, tb.length * 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    cond = prefix_condition(x, tb.length, 2)
    rows = x.reshape(-1, 2)
    got = tb.conditional(cond).log_prob(rows).reshape(16, tb.length)
    for pos in range(tb.length):
        want = _brute_log_joint(tb, x, pos + 1) - (_brute_log_joint(tb, x, pos) if pos else 0)
        torch.testing.assert_close(got[:, pos], want, rtol=0, atol=1e-9)  # float64 sums


def test_prefix_condition_keeps_the_prefix_and_names_the_position():
    x = torch.arange(12.0).reshape(2, 6).requires_grad_(True)  # B = 2, L = 3, D = 2
    c = prefix_condition(x, 3, 2)
    assert c.shape == (6, 9)
    torch.testing.assert_close(c[4], torch.tensor([6.0, 7.0, 0, 0, 0, 0, 0, 1, 0]))  # b=1, l=1
    torch.testing.assert_close(c[5, :6], torch.tensor([6.0, 7.0, 8.0, 9.0, 0, 0]))  # l=2
    c[:, :6].sum().backward()  # token l is in the prefix of L - 1 - l rows of its sequence
    torch.testing.assert_close(x.grad[0], torch.tensor([2.0, 2.0, 1.0, 1.0, 0.0, 0.0]))


def test_samplers_reach_their_closed_form_likelihoods_and_tv():
    """AR draws and the AR map: mean log-likelihood = the chain's (5 SE); independent draws: the
    closed-form log-likelihood and bigram TV (TV's sampling bias is O(sqrt(V^2 / n)) = 0.03)."""
    tb = _testbed(vocab=6, length=5, std=0.05)
    rng, n = torch.Generator().manual_seed(2), 6000
    ref = tb.exact_reference()
    for sampler, key in (
        (tb.sample_ar, "ar_loglik"),
        (tb.sample_independent, "independent_loglik"),
    ):
        tokens, _ = tb.quantise(sampler(n, rng))
        ll = tb.lang.log_prob(tokens).double()
        assert abs(ll.mean() - ref[key]) < 5 * ll.std() / math.sqrt(n)
    tokens, _ = tb.quantise(tb.sample_independent(n, rng))
    assert abs(tb.bigram_tv(tokens) - ref["independent_bigram_tv"]) < 0.03
    tokens, dist = tb.quantise(tb.ar_map(torch.randn(n, tb.length * 2, generator=rng)))
    ll = tb.lang.log_prob(tokens).double()  # the init's noise -> code map is the AR law
    assert dist.max() < 1e-12 and abs(ll.mean() - ref["ar_loglik"]) < 5 * ll.std() / math.sqrt(n)
    ar_tokens, _ = tb.quantise(tb.sample_ar(n, rng))
    assert tb.bigram_tv(ar_tokens) < 0.03  # only the finite-sample floor
    assert ref["independent_bigram_tv"] > 0.3  # the testbed has a gap to close


class _ExactCritic:
    """The teacher as its own critic (exact conditional denoiser): DD2's fixed point."""

    def __init__(self, teacher: PerSampleTeacher, shift: float = 0.0) -> None:
        self.teacher, self.schedule, self.shift = teacher, teacher.schedule, shift

    def denoise(self, x_t, t, cond=None):
        return self.teacher.denoise(x_t, t, cond) + self.shift


def _objective(tb: MarkovTokens, prefix_grad: bool) -> tuple[DD2, PerSampleTeacher]:
    teacher = PerSampleTeacher(tb.conditional, get_schedule("rf"), 2)
    dmd = DMD(t_reference="schedule", normalization="none")
    return DD2(tb.length, 2, prefix_condition, prefix_grad, dmd), teacher


def test_the_update_is_dmd_per_token_and_vanishes_at_the_teacher():
    """A critic that is the teacher shifted by ``delta`` gives every token the gradient
    ``delta / (B L)`` (w = 1) and nothing through the prefix; the teacher itself gives 0."""
    tb = _testbed(vocab=4, length=3, std=0.1)
    obj, teacher = _objective(tb, prefix_grad=False)
    x = tb.sample_ar(8, torch.Generator().manual_seed(3)).float().requires_grad_(True)
    for shift in (0.0, 0.25):
        x.grad = None
        crit = _ExactCritic(teacher, shift)
        rng = torch.Generator().manual_seed(4)
        obj.generator_loss(x, None, teacher=teacher, critic=crit, rng=rng).value.backward()
        torch.testing.assert_close(x.grad, torch.full_like(x, shift / (8 * tb.length)))


def test_prefix_grad_moves_only_prefixes_toward_the_teacher():
    """At the fixed point the DMD part is 0, so with ``prefix_grad`` only tokens that are some
    prefix move (the last never does), and a small step along -grad raises the teacher's
    conditional log-density of the later tokens."""
    tb = _testbed(vocab=4, length=3, std=0.3)
    obj, teacher = _objective(tb, prefix_grad=True)
    x = tb.sample_ar(64, torch.Generator().manual_seed(5)).float().requires_grad_(True)
    loss = obj.generator_loss(
        x, None, teacher=teacher, critic=_ExactCritic(teacher), rng=torch.Generator().manual_seed(6)
    )
    loss.value.backward()
    grad = x.grad.reshape(64, tb.length, 2)
    assert grad[:, -1].abs().max() == 0
    assert grad[:, 0].abs().max() > 0

    def log_lik(y: torch.Tensor) -> torch.Tensor:
        c = prefix_condition(y, tb.length, 2)
        return tb.conditional(c.double()).log_prob(y.detach().double().reshape(-1, 2)).sum()

    moved = x.detach() - 1e-2 * x.grad / x.grad.norm()  # prefixes only: x.grad[:, -1] = 0
    assert log_lik(moved) > log_lik(x.detach())


def test_the_critic_fits_every_position_given_its_detached_prefix():
    tb = _testbed(vocab=4, length=3, std=0.1)
    obj, teacher = _objective(tb, prefix_grad=True)
    seen = {}

    class Recorder(_ExactCritic):
        def denoise(self, x_t, t, cond=None):
            seen["cond"], seen["x_t"] = cond, x_t
            return super().denoise(x_t, t, cond)

    x = torch.randn(5, tb.length * 2, requires_grad=True)
    loss = obj.critic_loss(x, None, critic=Recorder(teacher), rng=torch.Generator().manual_seed(7))
    assert seen["x_t"].shape == (15, 2) and not seen["cond"].requires_grad
    torch.testing.assert_close(seen["cond"], prefix_condition(x.detach(), tb.length, 2))
    assert not loss.value.requires_grad


def test_gap_closed_is_zero_at_independent_and_one_at_ar():
    assert gap_closed(0.6, 0.6, 0.02) == 0.0 and gap_closed(0.6, 0.02, 0.02) == 1.0
    assert gap_closed(-31.0, -14.5, -6.5) == pytest.approx(16.5 / 24.5)


@pytest.mark.parametrize(
    ("key", "value"),
    [("std", "0.2"), ("t_lo", "0.99"), ("branching", "9"), ("length", "1"), ("steps", "0")],
)
def test_bad_values_name_the_key(key: str, value: str):
    with pytest.raises(ConfigError, match=key):
        run_system("dd2-markov", [f"{key}={value}"], Path("/nonexistent"), quick=True)


def test_resume_equals_an_uninterrupted_run(tmp_path: Path):
    sets = ["steps=4", "checkpoint_every=2", "eval_samples=64"]
    full = run_system("dd2-markov", sets, tmp_path / "full", quick=True)
    run_system("dd2-markov", ["steps=2", *sets[1:]], tmp_path / "cut", quick=True)
    resumed = run_system("dd2-markov", sets, tmp_path / "cut", resume=True, quick=True)
    for key in ("student_loglik", "student_bigram_tv", "final_critic_loss"):
        assert resumed[key] == full[key]


@pytest.mark.slow  # ~13 s on this CPU, most of it the interpreter importing torch
def test_cli_quick_run_writes_the_metrics(tmp_path: Path):
    cmd = [sys.executable, "-m", "scoredistill", "distill", "--preset", "dd2-markov-prefix-grad",
           "--quick", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    for who in ("student", "ar", "independent"):
        for metric in ("loglik", "bigram_tv", "off_codebook"):
            assert math.isfinite(m[f"{who}_{metric}"])
    assert {"gap_closed_bigram_tv", "gap_closed_loglik", "claim_holds", "wall_s"} <= set(m)
    assert json.loads((tmp_path / "config.json").read_text())["prefix_grad"] is True
    assert "Gap closed" in (tmp_path / "report.md").read_text()


def test_a_windowed_critic_ignores_older_prefix_tokens():
    from scoredistill.runs.systems.dd2 import PrefixNet

    torch.manual_seed(0)
    net = PrefixNet(2, 4, 16, 2, window=1)
    torch.nn.init.normal_(net.out.weight)  # the output layer starts at zero
    x = torch.randn(3, 8)
    moved = x.clone()
    moved[:, :2] += 5.0  # token 0: older than the window of positions 2 and 3
    args = (torch.randn(12, 2), torch.randn(12))
    out, out_moved = (net(*args, prefix_condition(v, 4, 2)).reshape(3, 4, 2) for v in (x, moved))
    torch.testing.assert_close(out[:, 2:], out_moved[:, 2:])
    assert not torch.allclose(out[:, 1], out_moved[:, 1])  # position 1 reads token 0
