"""``--dry-run``'s network report on the exact testbeds (``runs.dry_run``): memory by hand, and
the consistency family's counts against the networks its run builds."""

from __future__ import annotations

import pytest
from torch import nn

from scoredistill.runs.dry_run import network_report


def test_memory_is_four_copies_of_what_trains_and_one_of_what_is_frozen():
    trunk, head = nn.Linear(10, 20), nn.Linear(20, 1)  # 220 and 21 parameters
    trunk.requires_grad_(False)
    report = network_report({"critic": nn.Sequential(trunk, head)}, {"ema (frozen)": 1000})
    assert report["params"] == {"teacher (exact mixture)": 0, "critic": 241, "ema (frozen)": 1000}
    mib = report["weights_and_optimizer_MiB"]
    assert mib["critic"] == pytest.approx(4 * (4 * 21 + 220) / 2**20, abs=1e-3)
    assert mib["ema (frozen)"] == pytest.approx(4 * 1000 / 2**20, abs=1e-3)
    assert mib["total"] == pytest.approx(mib["critic"] + mib["ema (frozen)"], abs=1e-3)


@pytest.mark.parametrize(
    ("preset", "critic"), [("scm-ring8", False), ("rcm-ring8", True), ("sana-sprint-ring8", True)]
)
def test_consistency_dry_run_counts_the_networks_the_run_builds(preset, critic):
    from scoredistill.runs.consistency import _build_critic, _build_student, param_report, resolve
    from scoredistill.teachers.testbeds import get_testbed
    from scoredistill.teachers.trigflow import mixture_sigma_data

    cfg, objective = resolve(preset, ["critic.init_steps=2", "critic.init_batch=16"])
    report = param_report(cfg, objective)
    testbed = get_testbed("ring8")
    student = _build_student(cfg, testbed, mixture_sigma_data(testbed.truth))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert report["params"]["student"] == count(student)
    assert report["params"].get("student EMA (frozen)") == count(student)  # the presets keep an EMA
    assert ("critic" in report["params"]) == critic
    if critic:
        built, _ = _build_critic(cfg, testbed, objective)  # after its (2-step) DSM fit
        assert report["params"]["critic"] == count(built)
        grad = sum(p.numel() for p in built.parameters() if p.requires_grad)
        frozen_trunk = preset.startswith("sana")  # SANA-Sprint: only the head trains
        assert (grad < count(built)) == frozen_trunk
        mib = 4 * (4 * grad + count(built) - grad) / 2**20
        assert report["weights_and_optimizer_MiB"]["critic"] == pytest.approx(mib, abs=1e-3)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trained_mib(params: int) -> float:
    return 4 * 4 * params / 2**20  # fp32 weights, gradient, Adam's two moments


@pytest.mark.parametrize(
    ("preset", "source", "critic"),
    [
        ("vsd-particles-digits", "source (particles)", True),  # particles + an MLP critic
        ("sds-particles-ring8", "source (particles)", False),
        ("sds-views", "source (voxel field)", False),  # the voxel field alone
        ("vsd-views", "source (voxel field)", True),  # + the camera-conditioned MLP critic
    ],
)
def test_optimize_dry_run_counts_the_networks_the_run_builds(preset, source, critic):
    from scoredistill.runs.optimize import _particles_task, _views_task, resolve
    from scoredistill.runs.optimize_build import load_testbed
    from scoredistill.runs.optimize_dry_run import param_report

    cfg, objective = resolve(preset, ["critic.init_steps=0"])  # the run's critic: no DSM fit
    report = param_report(cfg, objective)
    build = _views_task if cfg.testbed == "views" else _particles_task
    task = build(cfg, objective, load_testbed(cfg))
    params, mib = report["params"], report["weights_and_optimizer_MiB"]
    if source == "source (particles)":  # N particles of the testbed's dimension
        assert params[source] == cfg.source.n_particles * task["teacher"].dim
    assert params[source] == _count(task["source"]) > 0
    assert params["teacher (exact mixture)"] == 0
    assert ("critic" in params) == critic
    expected = _trained_mib(params[source])
    if critic:
        assert params["critic"] == _count(task["critic"])
        expected += _trained_mib(params["critic"])
    assert mib[source] == pytest.approx(_trained_mib(params[source]), abs=1e-3)
    assert mib["total"] == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("preset", ["kd-digits", "pld-digits", "marginmse-retrieval"])
def test_kd_dry_run_counts_the_networks_the_run_builds(preset):
    from scoredistill.kd.tasks import load_task
    from scoredistill.runs.kd import resolve
    from scoredistill.runs.kd_dry_run import param_report
    from scoredistill.runs.kd_nets import build_plan, teacher_net

    cfg = resolve(preset, [])
    report = param_report(cfg)
    params, mib = report["params"], report["weights_and_optimizer_MiB"]
    task = load_task(cfg.task, seed=cfg.data_seed, n_labels=cfg.n_labels)
    teacher = teacher_net(cfg, task)
    assert "teacher (exact mixture)" not in params  # a real network here
    assert params["teacher (frozen)"] == _count(teacher) > 0
    assert mib["teacher (frozen)"] == pytest.approx(4 * _count(teacher) / 2**20, abs=1e-3)
    student = build_plan(cfg, task, teacher).student
    key = f"student ({cfg.method})"
    assert params[key] == _count(student) > 0
    assert mib[key] == pytest.approx(_trained_mib(_count(student)), abs=1e-3)
    assert (f"reference ({cfg.reference})" in params) == bool(cfg.reference)
    if preset == "kd-digits":  # MLP(64 -> 256 -> 256 -> 10) and MLP(64 -> 32 -> 10), by hand
        assert params["teacher (frozen)"] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
        assert params[key] == 64 * 32 + 32 + 32 * 10 + 10


def test_kd_procedure_dry_run_counts_the_networks_the_run_builds():
    from scoredistill.kd.tasks import load_task
    from scoredistill.runs.kd_procedures import FAMILY
    from scoredistill.runs.kd_procedures.online import _models

    resolved = FAMILY.resolve("dml-online-classification", [])
    report = FAMILY.dry_run(resolved)["networks"]
    cfg = resolved.config
    task = load_task(cfg.task, seed=cfg.data_seed)
    student, teacher = _models(cfg, task.dim, task.num_classes)
    params, mib = report["params"], report["weights_and_optimizer_MiB"]
    assert params == {"student": _count(student), "teacher (trained online)": _count(teacher)}
    (w,) = cfg.student_widths  # MLP(dim -> w -> classes), by hand
    assert params["student"] == task.dim * w + w + w * task.num_classes + task.num_classes
    both = _trained_mib(params["student"]) + _trained_mib(params["teacher (trained online)"])
    assert mib["total"] == pytest.approx(both, abs=2e-3)  # online KD trains both networks


def test_kd_dry_run_on_the_command_line_prints_the_networks(tmp_path, capsys):
    import json

    from scoredistill.cli import main

    code = main(["kd", "--preset", "kd-digits", "--dry-run", "--out", str(tmp_path / "x")])
    report = json.loads(capsys.readouterr().out)["networks"]
    assert code == 0 and not (tmp_path / "x").exists()
    assert report["params"]["teacher (frozen)"] > report["params"]["student (kd)"] > 0


def test_dry_run_needs_no_out_folder_and_a_run_does(capsys):
    import json

    from scoredistill.cli import main

    assert main(["distill", "--preset", "dmd2-ring8", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "dmd"
    assert main(["distill", "--preset", "dmd2-ring8", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out is required (except with --dry-run)" in err and "\n" not in err
