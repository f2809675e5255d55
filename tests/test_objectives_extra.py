"""SIM and SFD against closed forms, on the T6 toy of ``test_objectives.py`` (Gaussian teacher,
affine generator x = m + S z, exact critic) and a 2-class conditional Gaussian mixture.

SIM's surrogate (derived here). Let D(θ) = E_{q_t} d(y), y = D_r(x_t) - D_q(x_t), and
v = f_f - x with f_f the frozen exact fake; ∂ is the pathwise derivative through x_t = alpha x +
sigma eps at fixed (z, eps). ∇D = E[d'(y)^T ∂(f_r - f_f)] - E[d'(y)^T ∂_θ D_q]; the second term
follows from differentiating the score identity E[u(x_t)^T (D_q(x_t) - x)] = 0 in θ (u fixed):
E[u^T ∂_θ D_q] = -E[∂(u^T v)] with u frozen. Hence
    ∇D = E[ d'(y)^T ∂(f_r - x) + (∂ d'(y))^T v ] = E[ ∂( d(y) + d'(y)^T v ) ],
so SIM's expected update is ∇D exactly; for d = ½||·||^2 it is SiD at sid_alpha = 1/2, i.e.
∇F / 2 with F = E||D_r - D_q||^2 (checked below via c → ∞). Note b7's shortcut (SiD's term times
sg(1/sqrt(|y|^2 + c^2))) fails the pseudo-Huber test below at c = 0.28 (z up to 33).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from scoredistill.objectives import SFD, SIM, SiD
from scoredistill.objectives._ingredients import add_noise, sample_t
from scoredistill.teachers.analytic import GaussianMixtureTeacher
from test_objectives import (
    F64,
    K_SE,
    N_MC,
    U,
    _alpha_sigma,
    _check,
    _fisher,
    _fixed,
    _flat_grad,
    _per_sample_grads,
    _problem,
)


def _grad_x(obj, x, cond, teacher, critic, seed: int):
    xx = x.detach().clone().requires_grad_(True)
    rng = torch.Generator().manual_seed(seed)
    obj.generator_loss(xx, cond, teacher=teacher, critic=critic, rng=rng).value.backward()
    return xx.grad


def _gauss_denoise(x_t, mean, cov, alpha, sigma):
    """E[x0 | x_t] for x0 ~ N(mean, cov), batched over leading dims of ``mean``/``cov``."""
    eye = torch.eye(x_t.shape[-1], dtype=F64)
    gain = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * eye)
    return mean + (gain @ (x_t - alpha * mean)[..., None])[..., 0]


# ---------------------------------------------------------------------------------- SIM limits
def test_sim_large_c_times_c_is_sid_half():
    teacher, critic, m, s, _, _ = _problem(3, seed=3)
    x = (
        m + torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) @ s.T
    ).detach()
    c = 1e4 * math.sqrt(3)  # huber_c = 1e4: c * d(y) = ½|y|^2 (1 + O(|y|^2/c^2)), |y| ~ 1
    sim = SIM(huber_c=1e4, loss_scale=c, t_range=(U, U))
    sid = SiD(sid_alpha=0.5, normalization="none", loss_scale=1.0, t_range=(U, U))
    got = _grad_x(sim, x, None, teacher, critic, seed=1)
    want = _grad_x(sid, x, None, teacher, critic, seed=1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)  # truncation ~|y|^2/c^2 ~ 1e-8


def test_sim_small_c_is_the_euclidean_norm_distance():
    """c → 0: d(y) = ||y||, d'(y) = y/||y||, written out here independently of ``SIM.distance``."""
    teacher, critic, m, s, _, _ = _problem(3, seed=4)
    x0 = (
        m + torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) @ s.T
    ).detach()
    got = _grad_x(SIM(huber_c=1e-12, t_range=(U, U)), x0, None, teacher, critic, seed=2)

    x = x0.clone().requires_grad_(True)
    rng = torch.Generator().manual_seed(2)
    t = sample_t(64, teacher.schedule, (U, U), rng, dtype=F64, reference=SIM().t_reference)
    x_t, _, _, _ = add_noise(x, t, teacher.schedule, rng)
    f_r, f_f = teacher.denoise(x_t, t), critic.denoise(x_t, t)
    y = f_r - f_f
    norm = y.norm(dim=1, keepdim=True)
    (norm[:, 0] + (y / norm * (f_f - x)).sum(1)).mean().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-9, atol=1e-14)  # c^2/|y|^2 ~ 1e-24: rounding


def test_sim_large_c_expected_update_is_half_the_fisher_gradient():
    teacher, critic, m, s, mu_star, cov_star = _problem(3, seed=3)
    obj = _fixed(SIM(huber_c=1e4, loss_scale=1e4 * math.sqrt(3)))
    alpha, sigma = _alpha_sigma(teacher.schedule, U, obj.t_reference)

    def loss(x, rng):
        return obj.generator_loss(x, None, teacher=teacher, critic=critic, rng=rng).value

    mc, se = _per_sample_grads(loss, m, s, N_MC, seed=40)
    grad_f = _flat_grad(_fisher(m, s, mu_star, cov_star, alpha, sigma), m, s)
    _check(mc, se, grad_f / 2, "sim-l2")


# ---------------------------------------------------------------------------------- SIM exact
def _pseudo_huber_reference(m, s, mu_star, cov_star, alpha, sigma, c, n, seed):
    """Per-sample ∇_θ d(D_p(x_t) - D_q(x_t; θ)), θ = (m, S), with D_q moving with θ (autograd)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, m.shape[0], generator=g, dtype=F64)
    eps = torch.randn(n, m.shape[0], generator=g, dtype=F64)
    mb = m.detach().expand(n, -1).clone().requires_grad_(True)  # one copy per sample
    sb = s.detach().expand(n, -1, -1).clone().requires_grad_(True)
    x_t = alpha * (mb + (sb @ z[..., None])[..., 0]) + sigma * eps
    y = _gauss_denoise(x_t, mu_star, cov_star, alpha, sigma) - _gauss_denoise(
        x_t, mb, sb @ sb.transpose(1, 2), alpha, sigma
    )
    d = (y.pow(2).sum(1) + c**2).sqrt() - c
    gm, gs = torch.autograd.grad(d.sum(), (mb, sb))
    per = torch.cat([gm, gs.flatten(1)], 1)
    return per.mean(0), per.std(0) / math.sqrt(n)


def test_sim_expected_update_is_the_pseudo_huber_divergence_gradient():
    d = 2
    teacher, critic, m, s, mu_star, cov_star = _problem(d, seed=5)
    huber_c = 0.2  # c = 0.28 ~ |y|: the distance is far from both its L2 and L1 limits
    obj = _fixed(SIM(huber_c=huber_c))
    alpha, sigma = _alpha_sigma(teacher.schedule, U, obj.t_reference)

    def loss(x, rng):
        return obj.generator_loss(x, None, teacher=teacher, critic=critic, rng=rng).value

    mc, se = _per_sample_grads(loss, m, s, N_MC, seed=41)
    ref, se_ref = _pseudo_huber_reference(
        m, s, mu_star, cov_star, alpha, sigma, huber_c * math.sqrt(d), N_MC, seed=42
    )
    assert mc @ ref > 0, f"not a descent direction: {mc} vs {ref}"
    se_both = (se**2 + se_ref**2).sqrt()  # independent samples: variances add
    assert se_both.max() < 0.1 * ref.norm(), f"MC too noisy to test (se {se_both.max():.3g})"
    z = (mc - ref).abs() / se_both
    assert z.max() < K_SE, f"mc {mc}\nref {ref}\nz {z}"


@pytest.mark.parametrize("huber_c", [0.05, 0.2, 10.0])
def test_sim_fixed_point_and_sign(huber_c):
    obj = SIM(huber_c=huber_c)
    teacher, critic, m, s, _, _ = _problem(2, seed=11, at_teacher=True)

    def loss(x, rng):
        return obj.generator_loss(x, None, teacher=teacher, critic=critic, rng=rng).value

    mc, se = _per_sample_grads(loss, m, s, 4096, seed=50)
    assert (mc.abs() <= K_SE * se + 1e-9).all(), f"fixed point: {mc} (se {se})"  # y = 0 exactly

    teacher, critic, m, s, mu_star, _ = _problem(2, seed=12, schedule="edm")
    rng = torch.Generator().manual_seed(60)
    x = m + torch.randn(4096, 2, generator=rng, dtype=F64) @ s.T
    obj.generator_loss(x, None, teacher=teacher, critic=critic, rng=rng).value.backward()
    before = (m - mu_star).norm()
    after = (m.detach() - 0.1 * before * m.grad / m.grad.norm() - mu_star).norm()
    assert after < before, f"distance {before:.4f} -> {after:.4f}"  # 10 % step: first order


def test_sim_rejects_nonpositive_c():
    with pytest.raises(ValueError, match="huber_c"):
        SIM(huber_c=0.0)


# ---------------------------------------------------------------------------------- SFD
MU = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=F64)  # class 0 (forget), class 1 (safe)


def _sfd_nets(student_mean):
    teacher = GaussianMixtureTeacher(MU, [0.5, 0.5], stds=[0.5, 0.5], labels=[0, 1])
    means = torch.stack([student_mean, MU[1]])
    critic = GaussianMixtureTeacher(means, [0.5, 0.5], stds=[0.5, 0.5], labels=[0, 1])
    return teacher, critic


def test_sfd_moves_the_forget_class_toward_the_safe_class():
    m = MU[0].clone().requires_grad_(True)  # the student reproduces the teacher's class 0
    teacher, critic = _sfd_nets(m.detach())
    rng = torch.Generator().manual_seed(90)
    x = m + 0.5 * torch.randn(4096, 2, generator=rng, dtype=F64)
    cond = torch.zeros(4096, dtype=torch.long)
    SFD(forget_class=0, safe_class=1).generator_loss(
        x, cond, teacher=teacher, critic=critic, rng=rng
    ).value.backward()
    toward = (MU[1] - m).detach()
    cos = -(m.grad @ toward) / (m.grad.norm() * toward.norm())
    assert cos > 0.9, f"cosine of the step with mu_safe - m is {cos:.3f}"  # axis-symmetric setup
    step = 0.1 * toward.norm() * -m.grad / m.grad.norm()
    assert (m.detach() + step - MU[1]).norm() < toward.norm()


def test_sfd_other_labels_get_the_base_update_bit_for_bit():
    teacher, critic = _sfd_nets(MU[0] + 0.3)
    g = torch.Generator().manual_seed(91)
    x = torch.randn(256, 2, generator=g, dtype=F64) * 2
    cond = torch.randint(0, 2, (256,), generator=g)
    base = SiD(sid_alpha=1.2, t_range=(0.038, 0.712))
    got = _grad_x(SFD(forget_class=0, safe_class=1, base=base), x, cond, teacher, critic, seed=3)
    want = _grad_x(base, x, cond, teacher, critic, seed=3)
    keep = cond != 0
    torch.testing.assert_close(got[keep], want[keep], rtol=0, atol=0)  # same arithmetic per row
    assert not torch.equal(got[~keep], want[~keep])
    # without labels there is nothing to forget: the base method, bit for bit
    got = _grad_x(SFD(base=base), x, None, teacher, critic, seed=4)
    torch.testing.assert_close(got, _grad_x(base, x, None, teacher, critic, seed=4), rtol=0, atol=0)


def test_sfd_critic_weights_forget_rows():
    _, critic = _sfd_nets(MU[0] + 0.3)
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    cond = torch.zeros(16, dtype=torch.long)
    sfd = SFD(forget_critic_weight=0.01)
    got = sfd.critic_loss(x, cond, critic=critic, rng=torch.Generator().manual_seed(6)).value
    want = sfd.base.critic_loss(x, cond, critic=critic, rng=torch.Generator().manual_seed(6)).value
    torch.testing.assert_close(got, 0.01 * want, rtol=1e-15, atol=0)  # one product: rounding only


@pytest.mark.parametrize(("forget", "safe"), [(0, 0), (-1, 1), (1, -2)])
def test_sfd_rejects_bad_labels(forget, safe):
    with pytest.raises(ValueError, match="forget_class"):
        SFD(forget_class=forget, safe_class=safe)


def test_sfd_composes_with_dmd():
    from scoredistill.objectives import DMD

    teacher, critic = _sfd_nets(MU[0] + 0.3)
    x = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(7))
    cond = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(8))
    base = DMD()
    got = _grad_x(dataclasses.replace(SFD(), base=base), x, cond, teacher, critic, seed=9)
    want = _grad_x(base, x, cond, teacher, critic, seed=9)
    torch.testing.assert_close(got[cond != 0], want[cond != 0], rtol=0, atol=0)


# ---------------------------------------------------------------------------------- SiD guidance
class _Relabel:
    """A denoiser queried with ``fn(D_c, D_∅)`` in place of its conditional output."""

    def __init__(self, net, fn) -> None:
        self.net, self.fn, self.schedule = net, fn, net.schedule

    def denoise(self, x_t, t, cond=None):
        d_c = self.net.denoise(x_t, t, cond)
        return self.fn(d_c, self.net.denoise(x_t, t, torch.full_like(cond, -1)))


def _cond_pair():
    means = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64)
    teacher = GaussianMixtureTeacher(means, [0.5, 0.5], stds=[0.3, 0.4], labels=[0, 1])
    critic = GaussianMixtureTeacher(means + 0.3, [0.4, 0.6], stds=[0.5, 0.5], labels=[0, 1])
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    cond = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))
    return teacher, critic, x, cond


@pytest.mark.parametrize(
    ("kappa", "fn"),
    [
        (0.0, lambda d_c, d_u: d_u),  # Zero-CFG: the fake runs unconditionally
        (-1.0, lambda d_c, d_u: 2 * d_u - d_c),  # Anti-CFG: D_∅ - (D_c - D_∅)
        (2.5, lambda d_c, d_u: d_u + 2.5 * (d_c - d_u)),  # LSG's κ2 = κ3
    ],
)
def test_sid_fake_guidance_is_cfg_of_the_fake(kappa, fn):
    teacher, critic, x, cond = _cond_pair()
    guided = _grad_x(SiD(guidance_fake=kappa), x, cond, teacher, critic, seed=3)
    by_hand = _grad_x(SiD(), x, cond, teacher, _Relabel(critic, fn), seed=3)
    torch.testing.assert_close(guided, by_hand)


def test_sid_critic_guidance_trains_the_guided_output():
    """κ1: the fake's DSM error is that of ``D_∅ + κ1 (D_c - D_∅)`` (labels kept: cond_drop 0)."""
    _, critic, x, cond = _cond_pair()
    kappa = 3.0
    obj = SiD(guidance_critic=kappa, cond_drop=0.0)
    value = obj.critic_loss(x, cond, critic=critic, rng=torch.Generator().manual_seed(4)).value
    by_hand = SiD(cond_drop=0.0).critic_loss(
        x,
        cond,
        critic=_Relabel(critic, lambda d_c, d_u: d_u + kappa * (d_c - d_u)),
        rng=torch.Generator().manual_seed(4),
    )
    assert value.item() == pytest.approx(by_hand.value.item(), rel=1e-12)
    plain = SiD().critic_loss(x, cond, critic=critic, rng=torch.Generator().manual_seed(4))
    assert abs(plain.value.item() - value.item()) > 1e-3  # guidance changes the target


def test_sid_guided_fake_trains_with_label_dropout():
    _, critic, x, cond = _cond_pair()
    seen = []

    class Spy:
        schedule = critic.schedule

        def denoise(self, x_t, t, c=None):
            seen.append(c.clone())
            return critic.denoise(x_t, t, c)

    SiD(guidance_fake=0.0).critic_loss(x, cond, critic=Spy(), rng=torch.Generator().manual_seed(5))
    SiD().critic_loss(x, cond, critic=Spy(), rng=torch.Generator().manual_seed(5))
    dropped, kept = (seen[0] == -1).float().mean().item(), (seen[1] == -1).float().mean().item()
    assert kept == 0.0 and 0.0 < dropped < 0.3  # 10 % of 64 labels: 6.4 ± 2.4
