"""SiD-Protein (issue 14): the ideal-backbone testbed against known geometry, Kabsch RMSD against
an explicit rotation, the metrics on hand-made traces, the paper's time grid, the noise-scaled
multistep sampler against a hand-rolled loop, and the system run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from scoredistill.config import ConfigError
from scoredistill.eval.backbones import backbone_metrics
from scoredistill.objectives._ingredients import sample_t, t_to_ref
from scoredistill.runs.systems import _resolve, run_system
from scoredistill.runs.systems.sid_protein import (
    SiDProteinConfig,
    TeacherPlusResidual,
    _ExactModule,
    best_claims,
    claims,
    score,
    student_sigmas,
    teacher_grid,
    teacher_rows,
)
from scoredistill.samplers import SPACINGS, sample
from scoredistill.schedules import get_schedule
from scoredistill.sources.generators import FewStepGenerator
from scoredistill.teachers.backbones import (
    backbone_teacher,
    canonical_frame,
    chain_from_internal,
    kabsch_rmsd,
    make_templates,
)
from scoredistill.teachers.neural import NeuralDenoiser


def _angle(a, b, c) -> float:
    u, v = a - b, c - b
    return math.degrees(math.acos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))


def _dihedral(a, b, c, d) -> float:
    """IUPAC dihedral by the atan2 formula (Blondel & Karplus 1996), independent of NeRF."""
    b0, b1, b2 = a - b, c - b, d - c
    b1 = b1 / np.linalg.norm(b1)
    v, w = b0 - (b0 @ b1) * b1, b2 - (b2 @ b1) * b1
    return math.degrees(math.atan2(np.cross(b1, v) @ w, v @ w))


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_chain_reproduces_its_internal_coordinates():
    rng = np.random.default_rng(0)
    theta, tau = rng.uniform(80, 140, 10), rng.uniform(-180, 180, 9)
    x = chain_from_internal(theta, tau)
    assert np.allclose(np.linalg.norm(x[1:] - x[:-1], axis=1), 3.8, atol=1e-12)
    for i in range(10):
        assert _angle(x[i], x[i + 1], x[i + 2]) == pytest.approx(theta[i], abs=1e-9)
    for i in range(9):
        got = _dihedral(x[i], x[i + 1], x[i + 2], x[i + 3])
        assert (got - tau[i] + 180) % 360 - 180 == pytest.approx(0, abs=1e-9)


def test_ideal_helix_and_strand_have_textbook_geometry():
    _, t = make_templates(4, 16, seed=0)
    helix, strand = t[0], t[1]
    # α-helix: rise 1.5 Å/residue; Cα(i)-Cα(i+3) ~ 5.0-5.3 Å, Cα(i)-Cα(i+4) ~ 6.2 Å
    assert np.linalg.norm(helix[-1] - helix[0]) / 15 == pytest.approx(1.5, abs=0.05)
    assert np.linalg.norm(helix[3:] - helix[:-3], axis=1).mean() == pytest.approx(5.1, abs=0.2)
    assert np.linalg.norm(helix[4:] - helix[:-4], axis=1).mean() == pytest.approx(6.2, abs=0.2)
    # β-strand: rise ~ 3.3 Å per residue
    assert np.linalg.norm(strand[-1] - strand[0]) / 15 == pytest.approx(3.3, abs=0.1)


def test_kabsch_matches_an_explicit_rotation_and_ignores_rigid_motion():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 3))
    # explicit Kabsch: rotate x onto y with R = V diag(1, 1, d) U^T, then the plain RMSD
    xc, yc = x - x.mean(0), y - y.mean(0)
    u, _, vt = np.linalg.svd(xc.T @ yc)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1, 1, d]) @ u.T
    want = np.sqrt(((xc @ rot.T - yc) ** 2).sum(1).mean())
    got = kabsch_rmsd(torch.from_numpy(x)[None], torch.from_numpy(y)[None])
    assert float(got) == pytest.approx(want, rel=1e-10)
    moved = x @ _rotation(2).T + np.array([3.0, -1.0, 2.0])
    same = kabsch_rmsd(torch.from_numpy(moved)[None], torch.from_numpy(x)[None])
    assert float(same) < 1e-6  # float64 rounding of a sqrt near 0
    # proper rotations only: the mirror image of a helix is not superposable
    _, t = make_templates(1, 16, seed=0)
    mirror = t[0] * np.array([1.0, 1.0, -1.0])
    assert float(kabsch_rmsd(torch.from_numpy(mirror)[None], torch.from_numpy(t[:1]))) > 1.0


def test_canonical_frame_is_a_centred_proper_rotation_onto_principal_axes():
    x = chain_from_internal(np.full(14, 100.0), np.linspace(-150, 150, 13))
    c = canonical_frame(x @ _rotation(3).T + 5.0)
    assert np.allclose(c.mean(0), 0, atol=1e-12)
    cov = c.T @ c
    assert np.allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-9)
    assert np.all(np.diff(np.diag(cov)) <= 0)
    assert float(kabsch_rmsd(torch.from_numpy(c)[None], torch.from_numpy(x)[None])) < 1e-6
    assert np.allclose(canonical_frame(x @ _rotation(4).T), c, atol=1e-9)  # one frame per fold


def test_templates_are_distinct_clash_free_and_deterministic():
    ss, t = make_templates(32, 16, seed=0, min_sep=2.5)
    assert t.shape == (32, 16, 3) and ss[0] == "H" * 16 and ss[1] == "E" * 16
    r = kabsch_rmsd(torch.from_numpy(t), torch.from_numpy(t)) + 99 * torch.eye(32)
    assert float(r.min()) >= 2.5
    d = np.linalg.norm(t[:, :, None] - t[:, None], axis=-1)
    far = np.abs(np.subtract.outer(np.arange(16), np.arange(16))) >= 2
    assert d[:, far].min() >= 4.0
    make_templates.cache_clear()
    assert np.array_equal(make_templates(32, 16, seed=0, min_sep=2.5)[1], t)


def test_metrics_on_exact_copies_and_collapsed_traces():
    _, t = make_templates(8, 16, seed=0)
    tt = torch.from_numpy(t)
    copies = tt.repeat(3, 1, 1) @ torch.from_numpy(_rotation(5)).T  # rotated: still designable
    m = backbone_metrics(copies, tt)
    assert m["designability"] == 1.0 and m["clash_rate"] == 0.0
    assert m["bond_error_A"] == pytest.approx(0.0, abs=1e-9)
    assert m["templates_hit"] == 8 and m["templates_eff"] == pytest.approx(8.0)
    only_two = backbone_metrics(torch.cat([tt[:1].repeat(3, 1, 1), tt[1:2]]), tt)
    p = np.array([0.75, 0.25])  # exp(entropy) of the assignment frequencies
    assert only_two["templates_eff"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    collapsed = backbone_metrics(0.1 * tt[:4], tt)  # shrunk tenfold: bonds 0.38 Å
    assert collapsed["designability"] == 0.0 and collapsed["clash_rate"] == 1.0
    assert collapsed["bond_error_A"] == pytest.approx(3.8 * 0.9, abs=1e-9)


def test_student_grid_is_the_papers():
    ts = student_sigmas(16, 30, 400, 0.37)
    s = np.round(np.linspace(30, 400, 16))  # sid_training_loop.py: torch.round(linspace(...))
    assert np.allclose(ts, 1 - (1 - 10 ** (-(s / 400) * 2.0)))  # sid_utils.sample_t, t = 1 - σ
    assert ts[0] == pytest.approx(10**-0.15) and ts[-1] == pytest.approx(0.01)
    assert student_sigmas(1, 30, 400, 0.37) == pytest.approx((0.63,))


def test_sid_loss_times_span_proteinas_sigma_range():
    rf = get_schedule("rf")
    t_range = (t_to_ref(rf, 0.02, "edm"), t_to_ref(rf, 0.98, "edm"))
    t = sample_t(20000, rf, t_range, torch.Generator().manual_seed(0), reference="edm")
    # rf's t is σ; the edm <-> rf map is a bisection on log-SNR (tolerance 1e-6 relative)
    assert float(t.min()) >= 0.02 * (1 - 1e-5) and float(t.max()) <= 0.98 * (1 + 1e-5)
    assert float(t.min()) < 0.021 and float(t.max()) > 0.97


class _Halver(nn.Module):
    """``D(x_t, t) = x_t / 2 + t``: linear, so the rollout is checkable by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.dim, self.num_classes, self.schedule = 3, 0, get_schedule("rf")
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        return x_t / 2 + t[:, None] + self.w


@pytest.mark.parametrize("gamma", [1.0, 0.45])
def test_noise_scaled_rollout_equals_the_hand_rolled_loop(gamma: float):
    ts = (0.7, 0.3, 0.1)
    gen = FewStepGenerator(_Halver(), ts=ts)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    got = gen(z, None, rng=torch.Generator().manual_seed(1), noise_scale=gamma)
    rng = torch.Generator().manual_seed(1)
    x = (gamma * ts[0] * z) / 2 + ts[0]  # generate_multistep: interpolate(γ x_0, 0, t)
    for s in ts[1:]:
        eps = torch.randn(5, 3, generator=rng)
        x = ((1 - s) * x + gamma * s * eps) / 2 + s
    assert torch.allclose(got, x, atol=1e-6)
    if gamma == 1.0:  # the default (training) path is γ = 1
        again = gen(z, None, rng=torch.Generator().manual_seed(1))
        assert torch.equal(again, got)


def test_exact_teacher_runs_as_a_one_step_sampler():
    _, t = make_templates(4, 16, seed=0)
    teacher = backbone_teacher(t, 0.55)
    gen = FewStepGenerator(_ExactModule(teacher), ts=(0.63,))
    z = torch.randn(6, 48, generator=torch.Generator().manual_seed(0))
    want = teacher.denoise(0.45 * 0.63 * z, torch.full((6,), 0.63))
    assert torch.allclose(gen(z, None, noise_scale=0.45), want)
    assert teacher.means.shape == (4, 48) and float(teacher.eigvals.sqrt().max()) == pytest.approx(
        0.055
    )  # nm: 0.55 Å


def test_teacher_copy_starts_as_the_teacher_and_adds_edms_residual():
    _, t = make_templates(4, 16, seed=0)
    teacher = backbone_teacher(t, 0.55)
    g = TeacherPlusResidual(teacher, hidden=16, depth=2, sigma_data=0.6)
    x = torch.randn(5, 48, generator=torch.Generator().manual_seed(0))
    tt = torch.tensor([0.02, 0.1, 0.4, 0.7, 0.95])
    assert torch.equal(g(x, tt), teacher.denoise(x, tt))  # zero-initialised output layer
    torch.nn.init.normal_(g.net.out.weight, std=0.1, generator=torch.Generator().manual_seed(1))
    # the library's EDM denoiser on the same net minus its skip term c_skip x / alpha
    edm = NeuralDenoiser(g.net, get_schedule("rf"), "edm", 0.6, 0)
    alpha, sigma = get_schedule("rf").alpha_sigma(tt)
    s = (sigma / alpha)[:, None]
    skip = 0.36 / (s**2 + 0.36) * x / alpha[:, None]
    want = teacher.denoise(x, tt) + edm.denoise(x, tt) - skip
    assert torch.allclose(g(x, tt), want, atol=1e-5)
    g(x, tt).sum().backward()
    assert all(p.grad is not None for p in g.parameters())


def _row(row, nfe, gamma, des, eff):
    return {
        "row": row, "nfe": nfe, "gamma": gamma, "designability": des, "templates_eff": eff,
        "rmsd_median_A": 1.0 - des,
    }  # fmt: skip


def test_claims_read_the_rows():
    cfg = SiDProteinConfig(gammas=(0.3, 0.45, 1.0))
    rows = [
        _row("teacher DDIM", 16, None, 0.70, 30), _row("teacher DDIM", 400, None, 0.88, 30),
        _row("SiD 1-step", 1, 1.0, 0.30, 20), _row("SiD 16-step", 16, 0.3, 0.95, 10),
        _row("SiD 16-step", 16, 0.45, 0.85, 15), _row("SiD 16-step", 16, 1.0, 0.60, 25),
    ]  # fmt: skip
    c = claims(cfg, rows)
    assert c["teacher_nfe"] == 400 and c["nfe_ratio"] == 25
    assert c["one_step_gap"] == pytest.approx(0.58) and c["claim_one_step_far_below"]
    assert c["student_gap"] == pytest.approx(0.03) and c["claim_student_close"]
    assert c["claim_gamma_tradeoff"] and c["gamma_rmsd_tradeoff"]
    rows[3]["designability"] = rows[5]["designability"] = 1.0  # saturated: only the RMSD moves
    rows[3]["rmsd_median_A"], rows[5]["rmsd_median_A"] = 0.1, 0.6
    c = claims(cfg, rows)
    assert not c["claim_gamma_tradeoff"] and c["gamma_rmsd_tradeoff"]
    rows[4]["designability"] = 0.80  # 8 points below: not "a few"
    assert not claims(cfg, rows)["claim_student_close"]


def test_teacher_best_row_is_the_best_over_samplers_and_grids():
    cfg = SiDProteinConfig(templates=4, eval_samples=200, teacher_nfes=(2, 4, 8), grid_max_nfe=4)
    _, t = make_templates(4, 16, seed=0, min_sep=2.5)
    teacher, templates_a = backbone_teacher(t, 0.55), torch.from_numpy(t)
    rows = teacher_rows(cfg, teacher_grid(cfg, teacher, templates_a))
    # independently: every sampler on every grid, each from the runner's noise (seed + 20000)
    cells = {}
    for s in ("ddim", "dpmpp-2m", "heun", "euler"):
        for g in SPACINGS:
            for nfe in (2, 4):
                rng = torch.Generator().manual_seed(cfg.seed + 20_000)
                x, used = sample(teacher, s, nfe, 200, rng=rng, spacing=g)
                cells[s, g, used] = score(cfg, x, templates_a)["designability"]
    rng = torch.Generator().manual_seed(cfg.seed + 20_000)  # above grid_max_nfe: DDIM only
    x, _ = sample(teacher, "ddim", 8, 200, rng=rng, spacing="logsnr")
    cells["ddim", "logsnr", 8] = score(cfg, x, templates_a)["designability"]
    best = {r["nfe"]: r for r in rows if r["row"].startswith("teacher best")}
    ddim = {r["nfe"]: r for r in rows if r["row"] == "teacher DDIM"}
    assert sorted(best) == [2, 4, 8] and sorted(ddim) == [2, 4, 8]
    for budget, r in best.items():
        want = max(d for (_, _, used), d in cells.items() if used <= budget)
        assert r["designability"] == want and r["nfe_used"] <= budget
        assert cells[r["sampler"], r["spacing"], r["nfe_used"]] == want  # the named cell won
        assert r["designability"] >= ddim[budget]["designability"]
    assert ddim[4]["designability"] == cells["ddim", "logsnr", 4]
    assert best[4]["designability"] > ddim[4]["designability"]  # informative: DDIM is not it
    # the claim against the best: the first budget within few_points of the student's 0.95
    student = {"row": "SiD 16-step", "nfe": 16, "gamma": cfg.gamma, "designability": 0.95}
    fake = [{"row": "teacher best (x)", "nfe": k, "designability": d}
            for k, d in ((16, 0.80), (64, 0.91), (400, 0.96))]  # fmt: skip
    c = best_claims(cfg, [*fake, student])
    assert c["best_at_student_nfe"] == 0.80 and c["best_nfe_within_few_points"] == 64
    assert c["best_nfe_reaching_student"] == 400 and not c["claim_student_close_best"]  # 64 < 320


@pytest.mark.parametrize(
    "sets",
    [
        ["sigma_lo=0.99"],
        ["gammas=[]"],
        ["gammas=[0.3,1.0]"],
        ["teacher_nfes=[0]"],
        ["one_step_t=1"],
        ['teacher_samplers=["nope"]'],
    ],
)
def test_bad_values_raise_config_error(sets):
    with pytest.raises(ConfigError):
        _resolve("sid-protein", sets)


def test_resume_equals_an_uninterrupted_run(tmp_path: Path):
    sets = ["steps=4", "checkpoint_every=2", "teacher_nfes=[1]", "gammas=[0.45,1.0]"]
    full = run_system("sid-protein", sets, tmp_path / "full", quick=True)
    run_system("sid-protein", ["steps=2", *sets[1:]], tmp_path / "cut", quick=True)
    resumed = run_system("sid-protein", sets, tmp_path / "cut", resume=True, quick=True)
    assert [r["bond_error_A"] for r in resumed["rows"]] == [r["bond_error_A"] for r in full["rows"]]


@pytest.mark.slow  # ~15 s on this CPU, most of it the interpreter importing torch
def test_cli_quick_run_writes_the_metrics(tmp_path: Path):
    cmd = [sys.executable, "-m", "scoredistill", "distill", "--preset", "sid-protein", "--quick",
           "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    keys = {"teacher_designability", "one_step_designability", "student_designability",
            "student_gap", "nfe_ratio", "claim_one_step_far_below", "claim_student_close",
            "claim_gamma_tradeoff", "rows", "wall_s"}  # fmt: skip
    assert keys <= set(m)
    for r in m["rows"]:
        assert 0 <= r["designability"] <= 1 and math.isfinite(r["bond_error_A"])
    assert "designable" in (tmp_path / "report.md").read_text()


def test_dsm_init_variant_runs_and_caches_its_fit(tmp_path: Path):
    m = run_system("sid-protein", ["init=dsm", "teacher_nfes=[1]"], tmp_path, quick=True)
    assert (tmp_path / "init_denoiser.safetensors").exists()
    assert all(0 <= r["designability"] <= 1 for r in m["rows"])
