"""``--dry-run``'s network report for the kd-procedures DisWOT, federated, CV-DD and AutoDistil
and for the seed systems (``distill-system``): every count against networks built independently
(by hand or by the run's own builders), every MiB by the 4-copies-trained / 1-copy-frozen rule."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from scoredistill.kd.models import MLP


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _mlp(dims: list[int]) -> int:
    """Parameters of a plain ReLU MLP through ``dims``, by hand: weights and biases."""
    return sum(a * b + b for a, b in itertools.pairwise(dims))


def _small_cnn(width: int, classes: int) -> int:
    """``cvdd.SmallCNN(width)`` by hand: two 3x3 convs, two BatchNorms (scale, shift), a head."""
    conv1, conv2 = 9 * width + width, 9 * width * 2 * width + 2 * width
    return conv1 + 2 * width + conv2 + 4 * width + 2 * width * classes + classes


def _check_mib(report: dict, trained: set[str]) -> None:
    """Each entry's MiB from its count (4 fp32 copies if trained, else 1) and the total."""
    params, mib = report["params"], report["weights_and_optimizer_MiB"]
    expected = {k: (16 if k in trained else 4) * n / 2**20 for k, n in params.items()}
    for key, value in expected.items():
        if key != "teacher (exact mixture)":
            assert mib[key] == pytest.approx(value, abs=1e-3), key
    assert mib["total"] == pytest.approx(sum(expected.values()), abs=3e-3)


def _procedure(preset: str, sets: list[str] | None = None):
    from scoredistill.runs.kd_procedures import FAMILY

    resolved = FAMILY.resolve(preset, sets or [])
    return resolved.config, FAMILY.dry_run(resolved)["networks"]


# ---------------------------------------------------------------------- kd-procedure
def test_diswot_reports_the_teacher_and_the_largest_candidate():
    cfg, report = _procedure("diswot-digits")
    params = report["params"]
    teacher = _mlp([64, 256, 256, 10])  # digits: 64 pixels, 10 classes
    assert params["teacher (frozen)"] == teacher == _count(MLP(64, cfg.teacher_widths, 10))
    key = "student (largest, MLP(128, 64, 32))"  # the largest of the 12 candidates
    assert params == {key: _mlp([64, 128, 64, 32, 10]), "teacher (frozen)": teacher}
    _check_mib(report, {key})


def test_diswot_student_is_the_largest_in_budget_when_it_beats_the_candidates():
    cfg, report = _procedure("diswot-digits", ["n_candidates=1"])  # candidate (8,): 610 params
    space = [
        w
        for d in range(1, cfg.search_max_depth + 1)
        for w in itertools.product(cfg.search_widths, repeat=d)
    ]
    size = {w: _mlp([64, *w, 10]) for w in space if _mlp([64, *w, 10]) <= cfg.param_budget}
    best = max(size, key=lambda w: (size[w], w))
    key = f"student (largest, MLP{best})"
    assert report["params"][key] == size[best] == _count(MLP(64, best, 10))
    assert _mlp([64, 8, 10]) < size[best] <= cfg.param_budget
    _check_mib(report, {key})


@pytest.mark.parametrize(
    ("sets", "n", "widths"), [([], 8, (32,)), (["n_clients=3", "widths=[16,8]"], 3, (16, 8))]
)
def test_federated_reports_every_client(sets, n, widths):
    _, report = _procedure("knfu-digits", sets)
    key = f"clients ({n} x MLP{widths})"
    assert report["params"] == {key: n * _mlp([64, *widths, 10])}
    _check_mib(report, {key})  # every client keeps its own Adam across the rounds


@pytest.mark.parametrize("student", ["cnn", "mlp"])
def test_cvdd_reports_the_committee_the_synthetic_images_and_the_student(student):
    cfg, report = _procedure("cvdd-digits", [f"student={student}"])
    params = report["params"]
    images = "synthetic images (10 per class)"
    assert params[images] == cfg.ipc * 10 * 8 * 8  # the tensor Adam optimises: IPC x C x 8 x 8
    committee = sum(_small_cnn(w, 10) for w in cfg.committee_widths)
    assert params["committee (3 members, frozen)"] == committee
    by_hand = _small_cnn(16, 10) if student == "cnn" else _mlp([64, 32, 10])
    assert params[f"student ({student})"] == by_hand
    _check_mib(report, {images, f"student ({student})"})


def test_cvdd_counts_match_the_runs_own_modules():
    from scoredistill.runs.kd_procedures.cvdd import SmallCNN

    cfg, report = _procedure("cvdd-digits", ["committee_widths=[4,8]", "ipc=3"])
    params = report["params"]
    assert params["committee (2 members, frozen)"] == _count(SmallCNN(4, 10)) + _count(
        SmallCNN(8, 10)
    )
    assert params["synthetic images (3 per class)"] == 3 * 10 * 64
    assert params["student (cnn)"] == _count(SmallCNN(cfg.student_width, 10))


def test_autodistil_reports_the_supernets_the_largest_subnet_and_the_teacher():
    from scoredistill.runs.kd_procedures.autodistil import SuperMLP

    cfg, report = _procedure("autodistil-digits")
    params = report["params"]
    # K = 2: one supernet per depth, both 128 wide: 64 -> 128 -> 10 and 64 -> 128 -> 128 -> 10
    supers = _mlp([64, 128, 10]) + _mlp([64, 128, 128, 10])
    assert supers == _count(SuperMLP(64, 128, 1, 10)) + _count(SuperMLP(64, 128, 2, 10))
    alone = "sub-network alone (largest, (128, 2))"
    assert params == {
        "supernets (2, few-shot)": supers,
        alone: _mlp([64, 128, 128, 10]),
        "teacher (frozen)": _mlp([64, *cfg.teacher_widths, 10]),
    }
    _check_mib(report, {"supernets (2, few-shot)", alone})
    _, one = _procedure("autodistil-digits", ["shots=1"])  # one supernet for every sub-network
    assert one["params"]["supernets (1, few-shot)"] == _mlp([64, 128, 128, 10])


# ---------------------------------------------------------------------- distill-system
def _system(preset: str, sets: list[str] | None = None):
    from scoredistill.runs.systems import FAMILY

    resolved = FAMILY.resolve(preset, sets or [])
    return resolved.config, FAMILY.dry_run(resolved)


def test_dd2_reports_generator_critic_and_ema():
    from scoredistill.runs.systems.dd2 import build, make_critic, make_generator

    cfg, out = _system("dd2-markov")
    report = out["networks"]
    tb = build(cfg)[0]
    gen, critic = _count(make_generator(cfg, tb)), _count(make_critic(cfg, tb))
    assert report["params"] == {
        "teacher (exact mixture)": 0,
        "generator": gen,
        "critic": critic,
        "generator EMA (frozen)": gen,
    }
    _check_mib(report, {"generator", "critic"})


def test_dpo_reports_both_students_generators_and_the_dpo_critics():
    from scoredistill.runs.systems.dpo import make_players, make_task

    cfg, out = _system("dpo-completion")
    report = out["networks"]
    task = make_task(cfg.testbed_seed)
    gen, critics = make_players("dpo", cfg, task)
    _, dmd_critics = make_players("dmd", cfg, task)
    assert len(critics) == 2 and _count(critics) == 2 * _count(dmd_critics)
    params = report["params"]
    assert params["generator (dpo)"] == params["generator (dmd, trained first, frozen)"]
    assert params["generator (dpo)"] == _count(gen) > 0
    assert params["critics (dpo: winner, loser)"] == _count(critics)
    _check_mib(report, {"generator (dpo)", "critics (dpo: winner, loser)"})


def test_nasa_reports_generator_critic_and_ema():
    from scoredistill.runs.systems.nasa import build

    cfg, out = _system("nasa-attrgrid")
    report = out["networks"]
    _, _, gen, critic = build(cfg)
    assert report["params"] == {
        "teacher (exact mixture)": 0,
        "generator": _count(gen),
        "critic": _count(critic),
        "generator EMA (frozen)": _count(gen),
    }
    _check_mib(report, {"generator", "critic"})


@pytest.mark.parametrize("init", ["teacher", "dsm"])
def test_sid_protein_reports_the_students_and_the_frozen_copies(init):
    from scoredistill.runs.systems.sid_protein import init_net
    from scoredistill.teachers.backbones import backbone_teacher, make_templates

    cfg, out = _system("sid-protein", [f"init={init}"])
    report = out["networks"]
    _, tmpl = make_templates(
        cfg.templates, cfg.length, seed=cfg.testbed_seed, min_sep=cfg.min_sep_a
    )
    n = _count(init_net(cfg, backbone_teacher(tmpl, cfg.template_std_a)))
    assert n > 0
    frozen = ["generator EMA (frozen)", "init (frozen)", "init generator, untrained (frozen)"]
    frozen.append("1-step student EMA (frozen)")
    expected = {"teacher (exact mixture)": 0, "generator": n, "fake score": n}
    assert report["params"] == expected | dict.fromkeys(frozen, n)
    _check_mib(report, {"generator", "fake score"})


def test_sparse3d_reports_the_voxel_field():
    cfg, out = _system("sparse3d-views")
    report = out["networks"]
    key = "voxel field (one arm at a time)"
    assert report["params"] == {
        "teacher (exact mixture)": 0,
        key: 4 * cfg.resolution**3,
    }  # density + RGB
    _check_mib(report, {key})


def test_diffprotect_reports_the_vae_the_learned_denoiser_and_the_images():
    from scoredistill.runs.systems.diffprotect_lab import MLPVAE, learned_teacher

    cfg, out = _system("diffprotect-digits")
    report = out["networks"]
    vae = _count(MLPVAE(64, cfg.latent_dim, cfg.vae_hidden))
    den = _count(learned_teacher(cfg.latent_dim, cfg.schedule, cfg.denoiser_hidden, cfg.seed))
    assert report["params"] == {
        "teacher (exact mixture)": 0,
        "vae": vae,
        "learned denoiser (DSM)": den,
        "learned denoiser EMA (frozen)": den,
        "protected images (PGD iterate)": cfg.n_protect * 64,
    }
    _check_mib(report, {"vae", "learned denoiser (DSM)"})


def test_diffprotect_sd_says_why_it_reports_no_networks():
    _, out = _system("diffprotect-sd")
    assert "networks" not in out and "diffusers folder" in out["networks_note"]


# ---------------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("command", "preset", "key"),
    [("kd", "cvdd-digits", "student (cnn)"), ("distill", "dd2-markov", "generator")],
)
def test_dry_run_on_the_command_line_trains_nothing_and_writes_nothing(
    tmp_path, capsys, monkeypatch, command, preset, key
):
    from scoredistill.cli import main

    def boom(*args, **kwargs):
        raise AssertionError("--dry-run trained")

    monkeypatch.setattr(torch.Tensor, "backward", boom)
    monkeypatch.setattr(torch.optim.Adam, "step", boom)
    code = main([command, "--preset", preset, "--dry-run", "--out", str(tmp_path / "x")])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and not (tmp_path / "x").exists()
    assert printed["networks"]["params"][key] > 0
    assert printed["seed"] == 0  # the resolved config is printed beside it
