"""SANA-Sprint (sCM + hinge GAN on a frozen trunk): limits, closed forms, contracts, loop.

Oracles written here, independent of the objective: the single Gaussian of
``tests/test_consistency.py`` for the sCM term, and a **linear discriminator** ``Dis(x_t) =
w . x_t`` judging point masses, for which the hinge losses have closed forms in the noise level:
with ``x_t = m + sigma eps``, ``E relu(b + a sigma eps) = b Phi(b / (a sigma)) + a sigma
phi(b / (a sigma))``, averaged over ``log sigma ~ N(-0.6, 1)`` by Gauss-Hermite quadrature.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from scoredistill.config import ConfigError
from scoredistill.objectives import CONSISTENCY_OBJECTIVES, SCM, SanaSprint
from scoredistill.objectives._ingredients import add_noise, sample_t
from scoredistill.runs import FAMILIES
from scoredistill.schedules import get_schedule
from scoredistill.sources.consistency import TrigFlowStudent
from scoredistill.sources.critic import make_critic
from scoredistill.teachers.analytic import GaussianMixtureTeacher
from scoredistill.train.consistency import ConsistencyLoopConfig, train_consistency

MU, C, SD = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.3, 0.9
D64 = torch.float64


def _gaussian() -> GaussianMixtureTeacher:
    return GaussianMixtureTeacher(MU[None].numpy(), np.ones(1), stds=np.array([C]), schedule="edm")


def _student() -> TrigFlowStudent:
    torch.manual_seed(0)
    student = TrigFlowStudent(2, SD, hidden=16, depth=2)
    torch.nn.init.normal_(student.net.out.weight, std=0.1)  # the output layer starts at zero
    return student


def _discriminator(train_trunk: bool = False):
    """The run's discriminator: a (here untrained) denoiser, frozen (SANA) or trainable
    (``train_trunk``), with a logit head."""
    torch.manual_seed(1)
    critic = make_critic(2, schedule="edm", hidden=16, depth=2)
    return SanaSprint(train_trunk=train_trunk).make_discriminator(critic, 16)


def _data(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (MU + C * torch.randn(n, 2, generator=g, dtype=D64)).to(dtype)


class PointStudent(torch.nn.Module):
    """``f = b`` whatever the input: the student's samples are a point mass at ``b``."""

    sigma_data, dim = SD, 2

    def __init__(self, b) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=D64))
        self.thetas: list[torch.Tensor] = []

    def forward(self, x_hat, theta, cond=None):
        self.thetas.append(theta.detach())
        return self.b.expand(len(x_hat), 2)


class LinearDis(torch.nn.Module):
    """``Dis(x_t, t) = w . x_t`` on the EDM schedule (alpha = 1)."""

    schedule = get_schedule("edm")

    def __init__(self, w) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w, dtype=D64))

    def logit(self, x_t, t, cond=None):
        return x_t @ self.w


def _expected_hinge(b: float, a: float, p_mean: float, p_std: float) -> float:
    """``E_sigma E_eps relu(b + a sigma eps)``, ``log sigma ~ N(p_mean, p_std^2)``."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # probabilists' Hermite
    total = 0.0
    for x, w in zip(nodes, weights, strict=True):
        s = abs(a) * math.exp(p_mean + p_std * x)
        r = b / s
        phi = math.exp(-0.5 * r * r) / math.sqrt(2 * math.pi)
        total += w * (b * 0.5 * (1 + math.erf(r / math.sqrt(2))) + s * phi)
    return total / math.sqrt(2 * math.pi)


# ------------------------------------------------------------------------------ closed forms
def test_discriminator_hinge_loss_matches_its_closed_form() -> None:
    n, a, m_real, m_fake = 100_000, 0.8, 0.5, -0.3
    obj, dis = SanaSprint(), LinearDis([a, 0.0])
    x0 = torch.full((n, 2), m_real, dtype=D64)  # real: a point mass
    got = obj.critic_loss(x0, None, student=PointStudent([m_fake, 2.0]), critic=dis,
                          rng=torch.Generator().manual_seed(0), index=0)  # fmt: skip
    want = 0.5 * (_expected_hinge(1 - a * m_real, a, -0.6, 1.0)
                  + _expected_hinge(1 + a * m_fake, a, -0.6, 1.0))  # fmt: skip
    # Var relu(Y) <= E Y^2 = b^2 + a^2 E sigma^2 (E sigma^2 = e^{2 mu + 2 s^2}) per half
    var = max(1 - a * m_real, 1 + a * m_fake) ** 2 + a**2 * math.exp(2 * -0.6 + 2)
    se = 0.5 * math.sqrt(2 * var / n)
    assert abs(got.value.item() - want) < 4 * se  # 4 standard errors (0.013 of 0.80)
    # it can fail: sCM's law N(-1, 1.4) in place of N(-0.6, 1) moves it by 0.051 > 8 se
    other = 0.5 * (_expected_hinge(1 - a * m_real, a, -1.0, 1.4)
                   + _expected_hinge(1 + a * m_fake, a, -1.0, 1.4))  # fmt: skip
    assert abs(other - want) > 8 * se


def test_adversarial_gradient_is_minus_the_discriminator_direction_exactly() -> None:
    # L_adv = -mean_b w . (b + sigma eps): dL/db = -w whatever the noise, and w gets nothing
    student, dis = PointStudent([0.2, -0.4]), LinearDis([0.8, -1.5])
    loss = SanaSprint().adversarial_loss(_data(64, 1, D64), None, student=student, critic=dis,
                                         rng=torch.Generator().manual_seed(2))  # fmt: skip
    loss.value.backward()
    assert torch.allclose(student.b.grad, -dis.w.detach(), rtol=0, atol=1e-12)
    assert dis.w.grad is None


def test_half_the_adversarial_batch_starts_at_the_largest_angle() -> None:
    n, sd = 20_000, SD
    for largest_sigma, top in ((None, math.pi / 2), (80.0, math.atan(80.0 / sd))):
        obj, student = SanaSprint(largest_sigma=largest_sigma), PointStudent([0.0, 0.0])
        obj.fake(_data(n, 3, D64), None, student, torch.Generator().manual_seed(4))
        theta = student.thetas[-1]
        at_top = (theta == top).double()
        assert abs(at_top.mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)  # binomial se
        rest = theta[theta != top]  # sCM's law: P(theta <= atan(e^{p_mean} / sd)) = 1/2
        below = (rest <= math.atan(math.exp(obj.scm.p_mean) / sd)).double().mean().item()
        assert abs(below - 0.5) < 4 * math.sqrt(0.25 / len(rest))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_the_step_specific_control_judges_the_k_step_sampler(k: int) -> None:
    student, x0 = _student(), _data(32, 5)
    x = SanaSprint(adv_steps=k).fake(x0, None, student, torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)
    ref = student.sample(torch.randn(x0.shape, generator=g), None, steps=k, rng=g)
    assert torch.equal(x, ref) and x.requires_grad


# ------------------------------------------------------------------------------ limits
def test_with_adv_weight_zero_the_loss_is_scms_exactly() -> None:
    x0, teacher, scm = _data(64, 6), _gaussian(), SCM(tangent_warmup_steps=10)

    def run(objective, **kw):
        student = _student()
        loss = objective.loss(x0, None, student=student, teacher=teacher,
                              rng=torch.Generator().manual_seed(7), step=20, **kw)  # fmt: skip
        loss.value.backward()
        return loss, [p.grad for p in student.parameters()]

    ref, ref_grads = run(scm)
    dis = _discriminator()
    got, grads = run(SanaSprint(scm=scm, adv_weight=0.0), critic=dis)
    assert got.value.item() == ref.value.item() and "adv_loss" not in got.logs
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads, strict=True))
    assert all(p.grad is None for p in dis.parameters())
    on, _ = run(SanaSprint(scm=scm), critic=dis)  # the term does change the loss
    assert "adv_loss" in on.logs and on.value.item() != ref.value.item()


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("batch", [1, 32])
def test_sana_sprint_contract(batch: int) -> None:
    obj, teacher = SanaSprint(scm=SCM(tangent_warmup_steps=0)), _gaussian()
    student, dis, x0 = _student(), _discriminator(), _data(batch, 8)

    def student_loss(seed: int):
        return obj.loss(x0, None, student=student, teacher=teacher, critic=dis,
                        rng=torch.Generator().manual_seed(seed), step=5)  # fmt: skip

    first = student_loss(0)
    assert torch.isfinite(first.value) and first.value.dim() == 0 and "adv_loss" in first.logs
    assert student_loss(0).value.item() == first.value.item()  # seeded
    assert student_loss(1).value.item() != first.value.item()
    first.value.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in dis.parameters())  # the student's loss: student only
    student.zero_grad(set_to_none=True)

    c = obj.critic_loss(x0, None, student=student, critic=dis,
                        rng=torch.Generator().manual_seed(2), index=0)  # fmt: skip
    assert torch.isfinite(c.value) and 0 <= c.logs["d_accuracy"] <= 1
    c.value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dis.head.parameters())
    assert all(p.grad is None for p in dis.net.parameters())  # the trunk is frozen
    assert all(p.grad is None for p in student.parameters())


# ------------------------------------------------------------------------------ loop and run
def test_loop_trains_the_head_and_leaves_the_trunk(tmp_path: Path) -> None:
    cfg = ConsistencyLoopConfig(
        steps=4, batch_size=16, checkpoint_every=4, eval_every=0, log_every=1, critic_updates=1
    )
    student, dis = _student(), _discriminator()
    before = copy.deepcopy(dis)

    def data(n, rng):
        return (MU + C * torch.randn(n, 2, generator=rng, dtype=D64)).float(), None

    train_consistency(
        cfg, objective=SanaSprint(scm=SCM(tangent_warmup_steps=2)), student=student,
        teacher=_gaussian(), sample_data=data, evaluate=lambda m: {}, out_dir=tmp_path,
        critic=dis,
    )  # fmt: skip
    trunk = zip(dis.net.parameters(), before.net.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in trunk)
    head = zip(dis.head.parameters(), before.head.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in head)
    assert "critic_loss" in (tmp_path / "metrics.jsonl").read_text()


def _d_data(n, rng):
    return (MU + C * torch.randn(n, 2, generator=rng, dtype=D64)).float(), None


def _trunk_run(out: Path, steps: int, resume: bool = False):
    """``steps`` D/G pairs of the loop with ``train_trunk``; returns ``(ema student,
    discriminator, its copy before training)``."""
    cfg = ConsistencyLoopConfig(
        steps=steps, batch_size=16, checkpoint_every=2, eval_every=0, log_every=1,
        critic_updates=1, critic_beta1=0.9, critic_weight_decay=0.0,
    )  # fmt: skip
    student, dis = _student(), _discriminator(True)
    before = copy.deepcopy(dis)
    obj = SanaSprint(scm=SCM(tangent_warmup_steps=2), train_trunk=True)
    result = train_consistency(
        cfg, objective=obj, student=student, teacher=_gaussian(), sample_data=_d_data,
        evaluate=lambda m: {}, out_dir=out, resume=resume, critic=dis,
    )  # fmt: skip
    return result["ema"], dis, before


def test_the_default_discriminator_is_the_old_frozen_trunk_bit_for_bit() -> None:
    torch.manual_seed(1)  # the construction before train_trunk existed
    ref = make_critic(2, schedule="edm", hidden=16, depth=2).requires_grad_(False)
    ref.attach_logit_head(16)
    dis = _discriminator()
    assert dis.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in dis.state_dict().items())
    assert not any(p.requires_grad for p in dis.net.parameters())
    assert all(p.requires_grad for p in dis.head.parameters())


def test_a_trainable_trunk_gets_the_d_loss_gradient_and_only_the_student_gets_the_g_loss() -> None:
    obj, teacher = SanaSprint(scm=SCM(tangent_warmup_steps=0), train_trunk=True), _gaussian()
    student, dis, x0 = _student(), _discriminator(True), _data(32, 8)
    c = obj.critic_loss(x0, None, student=student, critic=dis,
                        rng=torch.Generator().manual_seed(2), index=0)  # fmt: skip
    c.value.backward()
    # every layer up to the features the head reads gets L_D's gradient; the denoiser's output
    # layer is not on the logit's path and gets none
    on_path = [p for n, p in dis.named_parameters() if not n.startswith("net.out.")]
    assert len(on_path) == 8 and all(p.grad is not None for p in on_path)
    assert all(p.grad.abs().sum() > 0 for p in on_path[:-1])  # the trunk's 4 and the head's
    assert dis.net.out.weight.grad is None
    # the output bias: dL_D/db = (frac(logit_fake > -1) - frac(logit_real < 1)) / 2 (replayed)
    with torch.no_grad():
        rng = torch.Generator().manual_seed(2)
        fake = obj.fake(x0, None, student, rng, grad=False)
        lf, lr = obj.logit(fake, None, dis, rng), obj.logit(x0, None, dis, rng)
    want = 0.5 * ((lf > -1).float().mean() - (lr < 1).float().mean())
    assert torch.allclose(dis.head[2].bias.grad, want.reshape(1), rtol=0, atol=1e-7)
    assert all(p.grad is None for p in student.parameters())  # D's loss: D only
    dis.zero_grad(set_to_none=True)
    g = obj.loss(x0, None, student=student, teacher=teacher, critic=dis,
                 rng=torch.Generator().manual_seed(3), step=5)  # fmt: skip
    assert "adv_loss" in g.logs
    g.value.backward()
    assert all(p.grad is None for p in dis.parameters())  # G's loss: neither trunk nor head
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.requires_grad for p in dis.parameters())  # restored after frozen_params


def test_trunk_dsm_adds_dmd2s_fake_score_loss_on_the_judged_samples() -> None:
    """``trunk_dsm_weight = w``: ``L_D + w DSM(trunk; sg(x_hat_0))``, the DSM replayed by hand on
    the same draws; its gradient reaches the denoiser's output layer (off the logit's path), the
    student gets none; without ``train_trunk`` the key is refused."""
    student, x0 = _student(), _data(32, 8)
    plain = SanaSprint(scm=SCM(tangent_warmup_steps=0), train_trunk=True)
    with_dsm = SanaSprint(scm=SCM(tangent_warmup_steps=0), train_trunk=True, trunk_dsm_weight=0.3)
    dis = _discriminator(True)
    kw = {"student": student, "critic": dis, "index": 0}
    base = plain.critic_loss(x0, None, rng=torch.Generator().manual_seed(4), **kw)
    got = with_dsm.critic_loss(x0, None, rng=torch.Generator().manual_seed(4), **kw)
    with torch.no_grad():
        rng = torch.Generator().manual_seed(4)
        fake = plain.fake(x0, None, student, rng, grad=False)
        plain.logit(fake, None, dis, rng), plain.logit(x0, None, dis, rng)
        t = sample_t(32, dis.schedule, (0.0, 1.0), rng, dtype=fake.dtype)
        x_t, _, alpha, sigma = add_noise(fake, t, dis.schedule, rng)
        w = (sigma**2 + (alpha * dis.sigma_data) ** 2) / (sigma * dis.sigma_data) ** 2
        dsm = (w * (dis.denoise(x_t, t) - fake).pow(2).mean(1)).mean()
    torch.testing.assert_close(got.value, base.value + 0.3 * dsm)
    assert got.logs["trunk_dsm"] == pytest.approx(float(dsm), rel=1e-5)
    got.value.backward()
    assert dis.net.out.weight.grad.abs().sum() > 0  # only the DSM term reaches the output layer
    assert all(p.grad is None for p in student.parameters())
    with pytest.raises(ConfigError, match="trunk_dsm_weight"):
        SanaSprint(trunk_dsm_weight=0.1)


def test_loop_trains_a_trainable_trunk_and_resumes_it(tmp_path: Path) -> None:
    ema, dis, before = _trunk_run(tmp_path / "a", 4)
    for name in ("net", "head"):  # the critic optimizer steps trunk and head: both move
        now, start = getattr(dis, name).parameters(), getattr(before, name).parameters()
        moved = zip(now, start, strict=True)
        assert any(not torch.equal(p, q) for p, q in moved), name
    # 2 steps, then --resume to 4 = 4 steps straight; a checkpoint without the trunk would
    # restart it from the DSM fit and differ
    _trunk_run(tmp_path / "b", 2)
    ema_b, dis_b, _ = _trunk_run(tmp_path / "b", 4, resume=True)
    straight, resumed = (
        [*ema.parameters(), *dis.parameters()],
        [*ema_b.parameters(), *dis_b.parameters()],
    )
    assert all(torch.equal(p, q) for p, q in zip(straight, resumed, strict=True))


def test_sana_sprint_presets_resolve() -> None:
    fam = FAMILIES["distill-consistency"]
    assert CONSISTENCY_OBJECTIVES["sana_sprint"] is SanaSprint
    assert {"sana-sprint-ring8", "sana-sprint-grid25"} <= set(fam.presets)
    paper = SanaSprint()  # SANA's config: scm_lambda 1, adv_lambda 0.5, D law N(-0.6, 1.0)
    assert (paper.scm_weight, paper.adv_weight, paper.d_p_mean, paper.d_p_std) == (1, 0.5, -0.6, 1)
    assert (paper.scm.p_mean, paper.scm.p_std, paper.largest_angle(SD)) == (0.2, 1.6, math.pi / 2)
    resolved = fam.resolve("sana-sprint-ring8", [])
    cfg, obj = resolved.config, resolved.extra
    assert cfg.method == "sana_sprint" and cfg.train.critic_updates == 1 and obj.uses_critic(0)
    scm_cfg, scm_obj = (lambda r: (r.config, r.extra))(fam.resolve("scm-ring8", []))
    assert obj.scm == scm_obj and cfg.train.lr == scm_cfg.train.lr  # isolates the GAN term
    assert obj.largest_angle(SD) == math.atan(80 / SD)
    with pytest.raises(ConfigError, match=re.escape("objective.largest_prob")):
        fam.resolve("sana-sprint-ring8", ["objective.largest_prob=1.5"])
    assert obj.train_trunk is False  # SANA's frozen trunk
    assert obj.adv_weight == 0.1  # the presets' departure from SANA's 0.5 (its comment says why)
    assert fam.resolve("sana-sprint-ring8", ["objective.train_trunk=true"]).extra.train_trunk


@pytest.mark.slow
def test_quick_sana_sprint_run_writes_the_contract_files(tmp_path: Path) -> None:
    import json

    from scoredistill.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--preset", "sana-sprint-ring8", "--quick", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"] == 2 and set(metrics["by_steps"]) == {"1", "2", "3", "4"}
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("adv_loss" in row and "critic_loss" in row for row in logged)
    assert np.isfinite(np.load(out / "samples.npz")["x"]).all()
