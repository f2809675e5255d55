"""The ``distill`` family's teacher-initialised student and data-derived critic sigma_data
(issue 15's two suspected causes of the gap to FastGen's DMD2 on a ring)."""

from __future__ import annotations

import math

import pytest
import torch

from scoredistill.config import ConfigError
from scoredistill.runs.distill import _build, resolve
from scoredistill.runs.distill_generator import check_generator, critic_sigma_data
from scoredistill.teachers.testbeds import get_testbed

TINY = ["critic.init_steps=2", "critic.init_batch=64", "critic.hidden=32", "critic.depth=2"]


def test_data_sigma_is_the_mixture_std_from_samples():
    cfg, _ = resolve("dmd2-ring8", ["critic.sigma_data=null"])
    testbed = get_testbed("ring8")
    x = testbed.truth.sample(200_000, rng=torch.Generator().manual_seed(0), dtype=torch.float64)
    sd = critic_sigma_data(cfg.critic, testbed)
    # per-dimension std of the data, pooled over dimensions; 200k draws: standard error ~0.2 %
    assert sd == pytest.approx(math.sqrt(x.var(0).mean().item()), rel=0.01)
    assert critic_sigma_data(resolve("dmd2-ring8", [])[0].critic, testbed) == 0.5


def test_teacher_init_student_is_the_fitted_critic_at_sigma_init():
    cfg, _ = resolve(
        "dmd2-gan-ring8", [*TINY, "generator.init=teacher", "generator.sigma_init=2.5"]
    )
    testbed = get_testbed("ring8")
    gen, critic, _ = _build(cfg, testbed, gan_head=True)
    assert critic.head is not None and gen.denoiser.head is None  # the GAN head stays with D
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    t = torch.full((16,), gen.t_init)
    _, sigma = critic.schedule.alpha_sigma(t)
    assert (sigma / critic.schedule.alpha_sigma(t)[0])[0].item() == pytest.approx(2.5, rel=1e-4)
    with torch.no_grad():
        assert torch.allclose(gen(z), critic.denoise(sigma[:, None] * z, t), atol=1e-6)
    # a copy: training the student leaves the critic as it was
    critic_storage = {q.data_ptr() for q in critic.parameters()}
    assert not any(p.data_ptr() in critic_storage for p in gen.parameters())


def test_teacher_init_few_step_student_starts_from_the_critic():
    cfg, _ = resolve(
        "dmd2-4step-ring8", [*TINY, "generator.init=teacher", "critic.sigma_data=null"]
    )
    gen, critic, _ = _build(cfg, get_testbed("ring8"))
    assert gen.nfe == 4
    # ring8's per-dimension data std: radius 2 on a uniform angle, component std 0.05
    assert gen.denoiser.sigma_data == critic.sigma_data == pytest.approx(math.sqrt(2 + 0.05**2))
    x = torch.randn(8, 2)
    t = torch.full((8,), 0.5)
    with torch.no_grad():
        assert torch.allclose(gen.denoiser.denoise(x, t), critic.denoise(x, t))


def test_teacher_init_rejects_students_it_cannot_copy():
    # a conv student has no MLP denoiser to copy (MSD's students can: tests/test_msd_tsm.py)
    cfg, _ = resolve("dmd2-digits", ["generator.kind=conv", "generator.init=teacher"])
    with pytest.raises(ConfigError, match=r"generator\.init=teacher"):
        check_generator(cfg.generator, get_testbed("digits"))


def test_critic_loss_weighting_follows_the_critic_sigma_data_unless_set():
    """EDM's weight lambda = (s^2 + sd^2) / (s sd)^2 with the critic's own sd (None), or a set one."""
    from scoredistill.objectives._ingredients import denoising_loss
    from scoredistill.sources.critic import make_critic

    torch.manual_seed(0)
    critic = make_critic(2, schedule="edm", hidden=16, depth=1, sigma_data=2.0)
    x = torch.randn(64, 2, dtype=torch.float64)
    critic = critic.double()
    t = torch.full((64,), 0.5, dtype=torch.float64)

    def loss(sd):
        rng = torch.Generator().manual_seed(3)  # the same noise for every call
        return denoising_loss(critic, x, None, rng, t=t, sigma_data=sd).value.item()

    alpha, sigma = critic.schedule.alpha_sigma(t[:1])
    s = (sigma / alpha).item()
    lam = lambda sd: (s**2 + sd**2) / (s * sd) ** 2  # noqa: E731
    assert loss(None) == pytest.approx(loss(2.0), rel=1e-12)
    assert loss(0.5) / loss(2.0) == pytest.approx(lam(0.5) / lam(2.0), rel=1e-12)
    assert resolve("dmd2-ring8", [])[1].sigma_data is None


def test_the_training_loop_weights_the_critic_loss_with_the_critic_sigma_data(tmp_path):
    """The loop hands objectives a wrapped critic; its DSM weighting must still see the critic's
    sigma_data (a wrapper without it silently fell back to 0.5)."""
    from scoredistill.objectives.dmd import DMD
    from scoredistill.sources.critic import make_critic
    from scoredistill.sources.generators import OneStepGenerator
    from scoredistill.train.two_player import TwoPlayerConfig, train_two_player

    seen: list[float | None] = []

    class Recording(DMD):
        def critic_loss(self, x, cond, *, critic, rng, real=None):
            seen.append(getattr(critic, "sigma_data", None))
            return super().critic_loss(x, cond, critic=critic, rng=rng, real=real)

    torch.manual_seed(0)
    testbed = get_testbed("ring8")
    gen = OneStepGenerator(2, hidden=16, depth=1)
    critic = make_critic(2, schedule=testbed.teacher.schedule, hidden=16, depth=1, sigma_data=1.7)
    cfg = TwoPlayerConfig(steps=1, batch_size=8, critic_updates=1, eval_every=0, log_every=1)
    train_two_player(
        cfg,
        objective=Recording(),
        generator=gen,
        critic=critic,
        teacher=testbed.teacher,
        sample_latent=lambda n, rng: gen.sample_latent(n, rng),
        sample_cond=None,
        evaluate=lambda g: {},
        out_dir=tmp_path,
    )
    assert seen == [1.7]


@pytest.mark.parametrize("schedule", ["edm", "vp-cosine", "vp-linear"])
def test_few_step_sigma_init_starts_the_grid_at_that_ve_level(schedule):
    from scoredistill.schedules import get_schedule, log_snr
    from scoredistill.sources.generators import FewStepGenerator, default_student_times

    sched = get_schedule(schedule)
    gen = FewStepGenerator.from_mlp(2, sched, steps=4, hidden=8, depth=1, sigma_init=2.5)
    ts = torch.tensor(gen.ts, dtype=torch.float64)
    level = torch.exp(-0.5 * log_snr(sched, ts))  # sigma / alpha at each student time
    assert level[0].item() == pytest.approx(2.5, rel=1e-5)
    assert bool((ts[:-1] > ts[1:]).all()) and ts[-1].item() > sched.t_min
    # the default grid's fractions of [t_min, t_max], laid on [t_min, t_top]
    full = torch.tensor(default_student_times(sched, 4), dtype=torch.float64)
    frac = (full - sched.t_min) / (sched.t_max - sched.t_min)
    torch.testing.assert_close(ts, sched.t_min + frac * (ts[0] - sched.t_min))
    # no sigma_init: the default grid, from t_max
    assert FewStepGenerator.from_mlp(2, sched, steps=4, hidden=8, depth=1).ts == tuple(
        full.tolist()
    )


def test_few_step_sigma_init_on_edm_is_karras_grid_below_it():
    """EDM's t is Karras' rho = 7 grid, so the compressed grid is Karras' formula from 2.5 to
    sigma_min = 0.002 with K + 1 points (the last, sigma_min, dropped): an independent form."""
    from scoredistill.schedules import get_schedule
    from scoredistill.sources.generators import FewStepGenerator

    sched = get_schedule("edm")
    gen = FewStepGenerator.from_mlp(2, sched, steps=4, hidden=8, depth=1, sigma_init=2.5)
    _, sigma = sched.alpha_sigma(torch.tensor(gen.ts, dtype=torch.float64))
    hi, lo = 2.5 ** (1 / 7), 0.002 ** (1 / 7)
    karras = [(hi + k / 4 * (lo - hi)) ** 7 for k in range(4)]  # 2.5, 0.739, 0.169, 0.026
    assert sigma.tolist() == pytest.approx(karras, rel=1e-4)


def test_few_step_teacher_copy_takes_sigma_init_and_bad_uses_are_refused():
    from scoredistill.sources.generators import FewStepGenerator

    cfg, _ = resolve(
        "dmd2-4step-ring8", [*TINY, "generator.init=teacher", "generator.sigma_init=2.5"]
    )
    gen, critic, _ = _build(cfg, get_testbed("ring8"))
    a, s = critic.schedule.alpha_sigma(torch.tensor(gen.ts[:1]))
    assert (s / a).item() == pytest.approx(2.5, rel=1e-5)
    with pytest.raises(ValueError, match="ts or sigma_init"):
        FewStepGenerator(gen.denoiser, ts=(0.5, 0.2), sigma_init=2.5)
    bad, _ = resolve("dmd2-ring8", ["generator.sigma_init=2.5"])  # a fresh one-step MLP
    with pytest.raises(ConfigError, match=r"generator\.sigma_init"):  # has no noise input
        check_generator(bad.generator, get_testbed("ring8"))


@pytest.mark.parametrize("init", ["scratch", "teacher"])
def test_phase_experts_take_the_single_network_grid_and_teacher_copies(init):
    """Phased DMD's experts (``generator.experts=2``) on the ``sigma_init`` grid: the times are
    those of a single-network student on that grid, the boundary is its third time, and from
    the teacher every expert is its own trainable copy of the fitted critic, equal to it."""
    from scoredistill.sources.experts import PhaseExperts
    from scoredistill.sources.generators import FewStepGenerator

    sets = [*TINY, f"generator.init={init}", "generator.sigma_init=2.5"]
    cfg, _ = resolve("phased-dmd-ring8", sets)
    torch.manual_seed(0)
    gen, critic, _ = _build(cfg, get_testbed("ring8"))
    single = FewStepGenerator(critic, steps=4, sigma_init=2.5)
    assert isinstance(gen.denoiser, PhaseExperts)
    assert gen.ts == single.ts and gen.denoiser.bounds == (single.ts[2],)
    a, s = critic.schedule.alpha_sigma(torch.tensor(gen.ts[:1]))
    assert (s / a).item() == pytest.approx(2.5, rel=1e-5)
    first, second = gen.denoiser.experts
    assert first is not second and all(p.requires_grad for p in gen.parameters())
    shared = {id(p) for p in first.parameters()} & {id(p) for p in second.parameters()}
    assert not shared and not {id(p) for p in critic.parameters()} & {
        id(p) for p in gen.parameters()
    }
    x, t = torch.randn(5, 2), torch.full((5,), single.ts[1])
    with torch.no_grad():
        outs = [e(x, t) for e in (first, second)]
        if init == "teacher":  # copies of the fitted critic (its GAN head dropped)
            for out in outs:
                torch.testing.assert_close(out, critic(x, t), rtol=0, atol=0)
    if init == "scratch":  # fresh experts: two independent draws (zero output layers alike)
        pairs = zip(first.parameters(), second.parameters(), strict=True)
        assert any(not torch.equal(p, q) for p, q in pairs)


@pytest.mark.parametrize("schedule", ["edm", "vp-cosine"])
def test_few_step_sigmas_put_each_student_step_at_its_ve_level(schedule):
    """``generator.sigmas`` names the student's levels: sigma/alpha at each of its times equals
    them (read back through the schedule's own alpha and sigma), for a fresh and a teacher copy."""
    from scoredistill.schedules import get_schedule
    from scoredistill.sources.generators import times_at_ve_levels

    levels = [5.0, 2.5, 1.0, 0.4]
    ts = torch.tensor(times_at_ve_levels(get_schedule(schedule), levels), dtype=torch.float64)
    a, s = get_schedule(schedule).alpha_sigma(ts)
    assert (s / a).tolist() == pytest.approx(levels, rel=1e-5)
    sets = ["generator.sigma_init=null", f"generator.sigmas={levels}", f"schedule={schedule}"]
    for init in ("scratch", "teacher"):
        cfg, _ = resolve("dmd2-4step-ring8", [*TINY, f"generator.init={init}", *sets])
        gen, _, _ = _build(cfg, get_testbed("ring8", schedule=schedule))
        assert gen.ts == pytest.approx(ts.tolist(), rel=1e-9)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["generator.sigmas=[5.0,2.5,1.0,0.4]"], "replaces sigma_init"),  # both given
        (["generator.sigma_init=null", "generator.sigmas=[5.0,2.5,1.0]"], "steps=4 strictly"),
        (["generator.sigma_init=null", "generator.sigmas=[5.0,1.0,2.5,0.4]"], "decreasing"),
        (["generator.sigma_init=null", "generator.sigmas=[500.0,2.5,1.0,0.4]"], "level=500.0 "),
    ],
)
def test_bad_few_step_sigmas_are_refused_naming_the_key(sets, message):
    cfg, _ = resolve("dmd2-4step-ring8", sets)
    with pytest.raises(ConfigError, match=rf"generator\.sigmas.*{message}"):
        check_generator(cfg.generator, get_testbed("ring8"))


@pytest.mark.parametrize(
    ("preset", "sets"),
    [
        ("dmd2-ring8", []),
        ("dmd2-gan-ring8", []),  # the critic carries DMD2's GAN head
        ("phased-dmd-ring8", ["generator.init=teacher", "generator.sigma_init=2.5"]),
        ("disback-ring8", []),
        ("dmd2-teacher-init-ring8", ["generator.latent_extra=6"]),
        ("dmd2-ring8", ["train.ema_halflife=0"]),  # the loop still holds the EMA copy
    ],
)
def test_dry_run_counts_the_networks_the_run_builds(preset, sets):
    """``--dry-run``'s parameter counts equal those of the networks ``_build`` trains (after
    its DSM fit), and the memory is 4 fp32 copies per trained network, 1 per path snapshot."""
    from scoredistill.objectives import DMD
    from scoredistill.runs.dry_run import param_report

    cfg, objective = resolve(preset, [*TINY, *sets])
    report = param_report(cfg, objective)
    gan = bool(getattr(objective, "needs_real", False))
    gen, critic, _ = _build(cfg, get_testbed("ring8"), gan_head=gan)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    params = report["params"]
    assert params["student"] == count(gen) and params["critic"] == count(critic)
    assert params["student EMA (frozen)"] == count(gen)
    assert gan == (preset == "dmd2-gan-ring8") and isinstance(objective, DMD) != (
        "phased" in preset
    )
    mib = report["weights_and_optimizer_MiB"]
    assert mib["student"] == pytest.approx(16 * count(gen) / 2**20, abs=1e-3)
    nodes = cfg.backtrack.nodes
    assert params.get("backtrack path (frozen)", 0) == (nodes + 1) * count(critic) * bool(nodes)
    assert mib["total"] == pytest.approx(sum(v for k, v in mib.items() if k != "total"), abs=2e-3)


def test_latent_extra_is_refused_where_no_teacher_copy_takes_it():
    for preset in ("dmd2-ring8", "dmd2-4step-ring8"):
        cfg, _ = resolve(preset, [*TINY, "generator.latent_extra=2"])
        with pytest.raises(ConfigError, match=r"generator\.latent_extra"):
            check_generator(cfg.generator, get_testbed("ring8"))
    cfg, _ = resolve("dmd2-teacher-init-ring8", [*TINY, "generator.latent_extra=6"])
    gen, critic, _ = _build(cfg, get_testbed("ring8"), gan_head=False)
    # the copy's parameters plus the 6 x hidden extra-latent layer
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(gen) == count(critic) + 6 * cfg.critic.hidden
    assert gen.sample_latent(4, torch.Generator().manual_seed(0)).shape == (4, 8)


class _Recorder(torch.nn.Module):
    """Delegates to ``inner`` and records the keyword arguments of every call."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, z, cond=None, **kw):
        self.calls.append(kw)
        return self.inner(z, cond, **kw)


@pytest.mark.parametrize("kind", ["one_step", "few_step"])
def test_regression_term_regresses_the_deterministic_map_of_z(kind):
    """DMD v1's regression needs a deterministic ``z -> x``: a one-step student's ``G(z)``, a
    few-step student's **first** step (its later steps re-noise with fresh noise). So the term
    is the same under any state of torch's global generator, and is the first step's MSE."""
    from scoredistill.runs.distill_regression import regression_term as _regression_term

    sets = [*TINY, "objective.regression_weight=2", "regression_pairs=32", "regression_nfe=4"]
    sets += ["train.batch_size=8", "generator.init=teacher", "generator.sigma_init=2.5"]
    sets += ["generator.kind=few_step", "generator.steps=4"] if kind == "few_step" else []
    cfg, objective = resolve("dmd2-teacher-init-ring8", sets)
    testbed = get_testbed("ring8")
    gen, _, _ = _build(cfg, testbed)
    term = _regression_term(cfg, objective, testbed, gen)
    rec = _Recorder(gen)
    values = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the re-noising of a full rollout would draw from it
        values.append(term(rec, torch.Generator().manual_seed(0)).value.item())
    assert values[0] == values[1]
    assert rec.calls == [{"k": 1}] * 2 if kind == "few_step" else rec.calls == [{}] * 2
    mse = term(gen, torch.Generator().manual_seed(0)).logs["regression_mse"]
    assert values[0] == pytest.approx(2.0 * mse * 2, rel=1e-5)  # lambda * sum over D=2 dims


def test_regression_on_a_student_without_a_deterministic_map_is_refused_at_resolution():
    """Refused when the config resolves (before the critic's DSM start), the key named."""
    with pytest.raises(ConfigError, match=r"regression_weight > 0 needs generator\.kind"):
        resolve("dmd2-digits", [*TINY, "objective.regression_weight=1", "generator.kind=conv"])
    cfg, _ = resolve("dmd2-digits", [*TINY, "objective.regression_weight=0", "generator.kind=conv"])
    assert cfg.generator.kind == "conv"


def test_later_step_pairs_are_the_gaussian_flow_in_closed_form(tmp_path):
    """``regression_steps=all``'s pairs for step k >= 2 on a one-Gaussian teacher N(mu, s^2 I):
    the input is the teacher's samples noised to the student's level sigma_k, and the EDM
    PF-ODE flow from sigma_k to sigma_min is the affine map
    ``mu + sqrt(s^2 + sigma_min^2) / sqrt(s^2 + sigma_k^2) (x - mu)``."""
    import numpy as np

    from scoredistill.runs.distill_regression import later_step_pairs as _later_step_pairs

    mu, s = np.array([[1.0, -2.0]]), 0.3
    np.savez(tmp_path / "g.npz", means=mu, weights=np.ones(1), stds=np.full(1, s))
    cfg, _ = resolve(
        "dmd2-4step-ring8", [*TINY, "testbed=" + str(tmp_path / "g.npz"), "train.batch_size=8"]
    )
    testbed = get_testbed(cfg.testbed)
    gen, _, _ = _build(cfg, testbed)
    y = testbed.truth.sample(4000, rng=torch.Generator().manual_seed(3))
    pairs = _later_step_pairs(testbed, gen, y, None, torch.Generator().manual_seed(4))
    sched, m = testbed.teacher.schedule, torch.tensor(mu, dtype=torch.float32)
    floor = sched.alpha_sigma(torch.tensor(0.0))[1].item()  # EDM at t = 0: sigma_min, alpha 1
    assert len(pairs) == 3
    for t_k, (x_k, y_k) in zip(gen.ts[1:], pairs, strict=True):
        sigma = sched.alpha_sigma(torch.tensor(t_k))[1].item()
        assert x_k.std(0).mean().item() == pytest.approx(math.hypot(s, sigma), rel=0.05)
        scale = math.hypot(s, floor) / math.hypot(s, sigma)
        torch.testing.assert_close(y_k, m + scale * (x_k - m), atol=2e-4, rtol=0)


def test_all_steps_regression_is_each_steps_mse_on_its_own_pairs():
    """Every step k is called once on its own rows (step 1 on ``z``, k >= 2 on ``x_t`` at t_k),
    and the term is the mean of the K regression losses."""
    from scoredistill.runs.distill_regression import regression_term as _regression_term

    sets = [*TINY, "objective.regression_weight=2", "regression_pairs=32", "regression_nfe=4"]
    sets += ["train.batch_size=8", "regression_steps=all"]
    cfg, objective = resolve("dmd2-4step-ring8", sets)
    testbed = get_testbed("ring8")
    gen, _, _ = _build(cfg, testbed)
    term = _regression_term(cfg, objective, testbed, gen)
    rec = _Recorder(gen)
    loss = term(rec, torch.Generator().manual_seed(0))
    assert [c["k"] for c in rec.calls] == [1, 2, 3, 4]
    assert "x_t" not in rec.calls[0] and all(c["x_t"].shape == (2, 2) for c in rec.calls[1:])
    mses = [loss.logs[f"regression_mse_{k}"] for k in range(1, 5)]
    assert loss.value.item() == pytest.approx(2.0 * 2 * sum(mses) / 4, rel=1e-5)
    t_2 = torch.full((2,), gen.ts[1])
    x = rec.calls[1]["x_t"]
    torch.testing.assert_close(gen(x, None, k=2, x_t=x), gen.denoiser(x, t_2, None))


@pytest.mark.parametrize(
    "sets",
    [
        ["regression_steps=all"],  # no regression weight
        ["regression_steps=all", "objective.regression_weight=1", "generator.kind=one_step"],
        ["regression_steps=all", "objective.regression_weight=1", "generator.experts=2"],
    ],
)
def test_all_steps_regression_is_refused_without_one_few_step_network(sets):
    with pytest.raises(ConfigError, match=r"regression_steps=all"):
        resolve("dmd2-4step-ring8", [*TINY, *sets])


def test_the_every_step_regression_preset_runs_and_logs_each_step(tmp_path):
    """``dmd2-4step-reg`` end to end at a tiny budget: the loop adds the term to each generator
    step and logs every step's regression MSE."""
    import json

    from scoredistill.runs.distill import run_distill

    sets = [*TINY, "train.steps=3", "train.batch_size=16", "train.eval_every=0"]
    sets += [
        "train.eval_samples=100",
        "train.log_every=1",
        "regression_pairs=64",
        "regression_nfe=4",
    ]
    sets += ["generator.hidden=32", "generator.depth=2"]
    cfg, objective = resolve("dmd2-4step-reg-ring8", sets)
    assert cfg.regression_steps == "all" and objective.regression_weight == 4.0
    metrics = run_distill(cfg, objective, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "regression_mse_4" in r]
    assert len(logged) == 3 and all(r["regression_mse_4"] >= 0 for r in logged)
    assert metrics["nfe"] == 4


def test_a_few_step_students_evaluation_draw_depends_on_its_seed_only():
    """The re-noising noise of the run's fixed evaluation draw comes from the draw's own rng:
    torch's global generator left in any state gives the same samples (it once did not), and
    the draw equals the rollout with that rng done by hand."""
    from scoredistill.runs.distill import _student_samples
    from scoredistill.sources.generators import FewStepGenerator

    testbed = get_testbed("ring8")
    torch.manual_seed(0)
    gen = FewStepGenerator.from_mlp(2, testbed.teacher.schedule, steps=4, hidden=32, depth=2)
    torch.manual_seed(1)
    x1 = _student_samples(gen, testbed, 64, seed=3)[0]
    torch.manual_seed(2)
    x2 = _student_samples(gen, testbed, 64, seed=3)[0]
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    rng = torch.Generator().manual_seed(3 + 12345)
    with torch.no_grad():
        by_hand = gen(gen.sample_latent(64, rng), None, rng=rng)
    torch.testing.assert_close(x1, by_hand, rtol=0, atol=0)
    assert gen.nfe == 4 and not torch.equal(x1, gen(gen.sample_latent(64, rng), None, rng=rng))
