"""Issue 15: every objective is the same function of the noise level on every schedule.

- Paper time ranges are in the paper's own steps (``t_reference``): the same draw ``u`` gives the
  same log-SNR on vp-linear, vp-cosine and edm, checked on every time an objective asks a
  denoiser for, and against the paper's own tables written out here.
- Weights are functions of the log-SNR: at a fixed log-SNR and the same noise the per-sample
  update ``g`` agrees across schedules (VSD/ESD once weighted by the raw ``sigma^2``).
- f-distill's per-time-bin ratio normalisation (FastGen's default) against a hand computation.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from scoredistill.objectives import (
    ASD,
    BSD,
    CDS,
    CSD,
    CSM,
    DMD,
    ESD,
    ISM,
    SDS,
    SFD,
    SIM,
    VSD,
    FDistill,
    SiD,
)
from scoredistill.objectives._ingredients import ref_to_t, sample_t
from scoredistill.schedules import SCHEDULES, get_schedule, log_snr, t_from_log_snr
from scoredistill.teachers.analytic import GaussianMixtureTeacher

F64 = torch.float64
TARGETS = ("vp-linear", "vp-cosine", "edm")
# float64 throughout: bisection to 2^-60 in t and closed-form denoisers round at ~1e-15, so 1e-9
# is a wide margin for log-SNRs; 1e-4 (the bound) for updates of guided, normalised terms
LAM_TOL = 1e-9
G_RTOL = 1e-4
MID = (0.3, 0.7)  # EDM-referenced ranges narrowed to sigma in [0.32, 7.9]: inside every table


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(schedule: str):
    """A labelled two-class Gaussian teacher and a different Gaussian pair as the critic."""
    means = torch.tensor([[-1.0, 0.5, 0.2], [1.0, -0.5, 0.4]], dtype=F64)
    teacher = GaussianMixtureTeacher(means, [0.5, 0.5], stds=[0.4, 0.5], labels=[0, 1])
    critic = GaussianMixtureTeacher(means * 0.7 + 0.3, [0.5, 0.5], stds=[0.6, 0.7], labels=[0, 1])
    return teacher.with_schedule(schedule), critic.with_schedule(schedule)


class Recorder:
    """A denoiser that logs the log-SNR of every time it is asked for."""

    def __init__(self, exact: GaussianMixtureTeacher) -> None:
        self.exact, self.schedule, self.lams = exact, exact.schedule, []

    def denoise(self, x_t, t, cond=None):
        self.lams.append(log_snr(self.schedule, t.to(F64)))
        return self.exact.denoise(x_t, t, cond)

    def log_prob(self, x_t, t=None, cond=None):
        return self.exact.log_prob(x_t, t, cond)


def _exact_log_ratio(teacher, critic):
    return lambda x_t, t, c: teacher.log_prob(x_t, t, c) - critic.log_prob(x_t, t, c)


def _objectives() -> dict[str, object]:
    """Every fixed objective at its defaults (paper steps and reference), except EDM-referenced
    ranges narrowed to ``MID`` so no draw falls outside a VP table (which then clamps it)."""
    return {
        "sds": SDS(),
        "vsd": VSD(),
        "esd": ESD(),
        "csd": CSD(),
        "csm": CSM(),
        "cds": CDS(),
        "asd": ASD(),
        "bsd": BSD(),
        "ism": ISM(),
        "dmd": DMD(t_range=MID, critic_t_range=MID),
        "fdistill": FDistill(t_range=MID, critic_t_range=MID, gan_generator_weight=0.0),
        "sid": SiD(t_range=MID),
        "sim": SIM(t_range=MID),
        "sfd": SFD(),
    }


def _update(obj, x, cond, teacher, critic, seed: int):
    """The per-sample update ``g = B dL/dx`` of ``obj.generator_loss`` and the loss's logs."""
    x = x.clone().requires_grad_(True)
    extra = {"log_ratio": _exact_log_ratio(teacher, critic)} if isinstance(obj, FDistill) else {}
    loss = obj.generator_loss(x, cond, teacher=teacher, critic=critic, rng=_rng(seed), **extra)
    loss.value.backward()
    return x.grad * x.shape[0]


def _lam_range(schedule) -> tuple[float, float]:
    lam = log_snr(schedule, torch.tensor([schedule.t_max, schedule.t_min], dtype=F64))
    return lam[0].item(), lam[1].item()


# ---------------------------------------------------------------------------------- the mapping
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_reference_equal_to_the_schedule_is_the_identity(name):
    sched = get_schedule(name)
    u = torch.rand(1000, generator=_rng(0), dtype=F64)
    want = sched.t_min + (sched.t_max - sched.t_min) * u
    assert torch.equal(ref_to_t(sched, u, name), want)  # bit-exact: no bisection on this path
    assert torch.equal(ref_to_t(sched, u, "schedule"), want)  # "schedule": the one in use
    assert torch.equal(
        sample_t(64, sched, (0.1, 0.9), _rng(1), dtype=F64, reference=name),
        sample_t(64, sched, (0.1, 0.9), _rng(1), dtype=F64),
    )


@pytest.mark.parametrize(
    ("reference", "steps", "table"),
    [
        ("vp-scaled-linear", (20, 500, 980), "sd"),  # SwiftBrush, threestudio (SD 1.5/2.1)
        ("vp-linear", (38, 712), "ddpm"),  # SFD's CIFAR-10 DDPM steps
        ("edm", (20, 500, 980), "karras"),  # DMD2 / SiD: 1000 Karras sigmas
    ],
)
@pytest.mark.parametrize("target", TARGETS)
def test_paper_steps_land_on_the_papers_noise_level(reference, steps, table, target):
    """Step ``k`` of the paper's table, ``u = k / 999``, has on every schedule the paper's own
    ``sigma/alpha``, written out here from the betas / Karras' formula (clamped to the target)."""
    k = torch.tensor(steps, dtype=F64)
    if table == "karras":
        lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
        want = (lo + k / 999 * (hi - lo)) ** 7
    else:
        betas = (
            torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
            if table == "sd"
            else torch.linspace(1e-4, 0.02, 1000, dtype=F64)
        )
        abar = torch.cumprod(1 - betas, 0)[k.long()]
        want = ((1 - abar) / abar).sqrt()
    sched = get_schedule(target)
    a, s = sched.alpha_sigma(ref_to_t(sched, k / 999, reference))
    lo_s, hi_s = (math.exp(-lam / 2) for lam in reversed(_lam_range(sched)))
    torch.testing.assert_close(s / a, want.clamp(lo_s, hi_s), rtol=1e-9, atol=0)


def test_sfd_range_no_longer_starts_at_the_data():
    """The issue's numbers: SFD's [38, 712] read as fractions of EDM's grid began at sigma =
    0.005; through the DDPM table it begins at sigma = 0.137 on EDM too."""
    edm = get_schedule("edm")
    base = SFD().base
    u = torch.tensor(base.t_range, dtype=F64)
    _, s = edm.alpha_sigma(ref_to_t(edm, u, base.t_reference))
    _, s_old = edm.alpha_sigma(ref_to_t(edm, u))
    assert s[0].item() == pytest.approx(0.137, abs=1e-3) and s_old[0].item() < 0.006


@pytest.mark.parametrize("name", list(_objectives()))
def test_same_draw_gives_the_same_log_snr_on_every_schedule(name):
    """Every time the objective asks the teacher or the critic for (``t``, ``t'``, ``t + Δt``,
    inversion grids, the critic's DSM times) has the same log-SNR on vp-linear, vp-cosine and
    edm under the same rng, up to each table's ends (intersection of their ranges)."""
    obj = _objectives()[name]
    x = torch.randn(16, 3, generator=_rng(2), dtype=F64)
    cond = torch.arange(16) % 2
    runs = {}
    for target in TARGETS:
        teacher, critic = (Recorder(n) for n in _pair(target))
        _update(obj, x, cond, teacher, critic, seed=3)
        if hasattr(obj, "critic_loss"):
            obj.critic_loss(x, cond, critic=critic, rng=_rng(4))
        runs[target] = (teacher.lams, critic.lams)
    lo = max(_lam_range(get_schedule(t))[0] for t in TARGETS)
    hi = min(_lam_range(get_schedule(t))[1] for t in TARGETS)
    ref_teacher, ref_critic = runs["edm"]
    assert ref_teacher, f"{name}: the teacher was never called"
    for target, (lams_t, lams_c) in runs.items():
        assert len(lams_t) == len(ref_teacher) and len(lams_c) == len(ref_critic), target
        for got, want in zip(lams_t + lams_c, ref_teacher + ref_critic, strict=True):
            torch.testing.assert_close(
                got.clamp(lo, hi), want.clamp(lo, hi), rtol=0, atol=LAM_TOL, msg=f"{name} {target}"
            )


# ---------------------------------------------------------------------------------- the update
@pytest.mark.parametrize("name", list(_objectives()))
def test_update_is_the_same_function_of_snr_on_every_schedule(name):
    """Same draws (so the same log-SNRs, test above, and the same eps), exact Gaussian teacher and
    critic: the per-sample update agrees on vp-linear, vp-cosine and edm."""
    obj = _objectives()[name]
    x = torch.randn(16, 3, generator=_rng(5), dtype=F64) * 1.5
    cond = torch.arange(16) % 2
    g = {t: _update(obj, x, cond, *_pair(t), seed=6) for t in TARGETS}
    scale = g["edm"].abs().max()
    assert scale > 0, name
    for target in ("vp-linear", "vp-cosine"):
        torch.testing.assert_close(
            g[target], g["edm"], rtol=G_RTOL, atol=G_RTOL * scale, msg=f"{name} on {target}"
        )


@pytest.mark.parametrize("lam", [-4.0, 0.0, 3.0])
@pytest.mark.parametrize("name", ["vsd", "esd", "sds", "dmd", "csd", "bsd"])
def test_update_at_a_fixed_log_snr_is_schedule_free(name, lam):
    """The weight alone: ``t`` picked on each schedule by ``t_from_log_snr`` (each schedule its
    own reference, so no mapping is involved) and the same eps. With VSD/ESD's old raw
    ``sigma^2`` the EDM update was ``(1 + e^-lam)`` times the VP one (55x at lam = -4)."""
    x = torch.randn(8, 3, generator=_rng(7), dtype=F64)
    cond = torch.arange(8) % 2
    g = {}
    for target in TARGETS:
        sched = get_schedule(target)
        t = t_from_log_snr(sched, torch.tensor(lam, dtype=F64)).item()
        u = (t - sched.t_min) / (sched.t_max - sched.t_min)
        obj = dataclasses.replace(_objectives()[name], t_range=(u, u), t_reference=target)
        g[target] = _update(obj, x, cond, *_pair(target), seed=8)
    scale = g["edm"].abs().max()
    for target in ("vp-linear", "vp-cosine"):
        torch.testing.assert_close(g[target], g["edm"], rtol=G_RTOL, atol=G_RTOL * scale)


def test_vsd_weight_is_one_minus_alpha_bar_at_most_one():
    """SwiftBrush's sigma_t^2 = 1 - alpha_bar_t on VP; on EDM the same weight, not sigma^2."""
    edm = get_schedule("edm")
    teacher, critic = _pair("edm")
    x = torch.randn(4, 3, generator=_rng(9), dtype=F64)
    obj = VSD(guidance=1.0, t_range=(1.0, 1.0), t_reference="edm")  # sigma = 80
    parts = obj.gradient(x, None, teacher=teacher, critic=critic, rng=_rng(10))
    a, s = edm.alpha_sigma(parts["t"])
    # g = w (eps_r - eps_f) = w (alpha / sigma) (D_fake - D_real), w = sigma^2 / (alpha^2 + sigma^2)
    w = s**2 / (a**2 + s**2)
    want = (w * a / s)[:, None] * (parts["d_fake"] - parts["d_real"])
    torch.testing.assert_close(parts["g"], want, rtol=1e-10, atol=1e-14)
    assert float(w.max()) <= 1.0


# ---------------------------------------------------------------------------------- f-distill
def test_ratio_is_normalised_by_its_time_bins_mean():
    """Two bins over sigma/alpha in [0.002, 80]: hand-made ratios 1, 3 (bin 0) and 2, 6 (bin 1)
    become 0.5, 1.5 in each (each bin's mean 1); with h = r (forward KL) and no h-normalisation
    the weight is that ratio. FastGen's 1e-6 in the bin mean moves it by ~1e-6."""
    obj = FDistill(
        "kl", ratio_bins=2, normalize_h=False, log_ratio_clip=None, ratio_clip=None,
        gan_generator_weight=0.0,
    )  # fmt: skip
    r = torch.tensor([1.0, 3.0, 2.0, 6.0], dtype=F64)
    level = torch.tensor([1.0, 5.0, 50.0, 70.0], dtype=F64)  # bin edge at 40.001
    h = obj.weight(r.log(), level)
    torch.testing.assert_close(h, torch.tensor([0.5, 1.5, 0.5, 1.5], dtype=F64), rtol=1e-5, atol=0)
    assert abs(h[:2].mean().item() - 1) < 1e-5 and abs(h[2:].mean().item() - 1) < 1e-5
    with pytest.raises(ValueError, match="level"):
        obj.weight(r.log())


def test_fdistill_update_matches_an_independent_binning():
    """The f-distill update is h(r / bin mean) times DMD's on the same draws, with the 10 bins
    (FastGen's default) found here by ``bucketize`` on edges linspace(0.002, 80, 11)."""
    teacher, critic = _pair("vp-linear")
    obj = FDistill("js", normalization="none", gan_generator_weight=0.0, t_range=(0.0, 1.0))
    assert (obj.ratio_bins, obj.ratio_bin_range) == (10, (0.002, 80.0))  # FastGen's default
    x = torch.randn(256, 3, generator=_rng(11), dtype=F64)
    got = _update(obj, x, None, teacher, critic, seed=12)
    dmd = DMD(obj.t_range, obj.t_reference, normalization="none")
    parts = dmd.gradient(x, None, teacher=teacher, critic=critic, rng=_rng(12))
    log_r = teacher.log_prob(parts["x_t"], parts["t"]) - critic.log_prob(parts["x_t"], parts["t"])
    r = log_r.clamp(-10, 10).exp().clamp(0.1, 20)
    a, s = teacher.schedule.alpha_sigma(parts["t"])
    edges = torch.linspace(0.002, 80, 11, dtype=F64)
    idx = (torch.bucketize(s / a, edges[1:-1], right=True)).clamp(0, 9)
    assert idx.unique().numel() >= 5  # the draws span several bins
    mean = torch.stack(
        [r[idx == b].mean() if (idx == b).any() else r.new_ones(()) for b in range(10)]
    )
    rn = r / mean[idx]
    h = rn / (1 + rn)
    h = h / h.mean()
    torch.testing.assert_close(got, h[:, None] * parts["g"], rtol=1e-5, atol=1e-9)
