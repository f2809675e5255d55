"""The command line: output contract, and one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from scoredistill.cli import main


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_testbeds_lists_every_testbed(tmp_path, capsys):
    code, out, _ = _run(["testbeds", "--plot", str(tmp_path)], capsys)
    assert code == 0
    assert (tmp_path / "digits.png").stat().st_size > 1000
    for name in (
        "ring8",
        "ring8-unbalanced",
        "grid25",
        "cond2d",
        "gmm16",
        "gmm64",
        "moons",
        "digits",
    ):
        assert f"\n{name} " in "\n" + out


def test_sample_writes_the_output_contract(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, _, _ = _run(
        [
            "sample",
            "--testbed",
            "cond2d",
            "--sampler",
            "heun",
            "--nfe",
            "4",
            "--n",
            "300",
            "--out",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0
    with np.load(out_dir / "samples.npz") as data:
        assert data["x"].shape == (300, 2)
        assert data["labels"].shape == (300,)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    expected = {
        "mmd",
        "sw2",
        "energy",
        "mode_coverage",
        "mode_tv",
        "spread_ratio",
        "logp",
        "class_acc",
    }
    assert expected | {"nfe", "wall_s"} <= set(metrics)
    assert metrics["nfe"] == 3  # Heun: (4 + 1) // 2 = 2 times, 2 * 2 - 1 evaluations
    assert all(np.isfinite(v) for v in metrics.values())
    assert (out_dir / "samples.png").stat().st_size > 1000
    assert json.loads((out_dir / "config.json").read_text())["sampler"] == "heun"


def test_sample_is_deterministic_in_the_seed(tmp_path, capsys):
    for name in ("a", "b"):
        args = ["sample", "--testbed", "ring8", "--sampler", "ancestral", "--nfe", "3", "--n", "50"]
        assert main([*args, "--seed", "4", "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "a" / "samples.npz") as a, np.load(tmp_path / "b" / "samples.npz") as b:
        assert np.array_equal(a["x"], b["x"])


def test_baseline_table(tmp_path, capsys):
    args = [
        "baseline",
        "--testbed",
        "ring8",
        "--samplers",
        "ddim,heun",
        "--nfe",
        "1,2,8",
        "--n",
        "200",
    ]
    code, _, _ = _run([*args, "--out", str(tmp_path)], capsys)
    assert code == 0
    result = json.loads((tmp_path / "baseline.json").read_text())
    cells = [(r["sampler"], r["nfe"]) for r in result["rows"]]
    # Heun budgets 1 and 2 are the same run (1 NFE); it is listed once
    assert cells == [
        ("ddim", 1),
        ("ddim", 2),
        ("ddim", 8),
        ("heun", 1),
        ("heun", 7),
        ("exact", 0),
        ("exact-std", 0),
    ]
    assert "| ddim | 8 |" in (tmp_path / "baseline.md").read_text()
    assert (tmp_path / "samples_heun.png").exists()


def test_npz_teacher_is_accepted(tmp_path, capsys):
    np.savez(
        tmp_path / "m.npz", means=[[0.0, 0.0], [3.0, 0.0]], weights=[1.0, 1.0], stds=[0.2, 0.2]
    )
    args = [
        "sample",
        "--testbed",
        str(tmp_path / "m.npz"),
        "--sampler",
        "ddim",
        "--nfe",
        "8",
        "--n",
        "100",
    ]
    code, _, _ = _run([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sample", "--testbed", "ring9", "--sampler", "ddim", "--nfe", "4"], "ring9"),
        (["sample", "--testbed", "ring8", "--sampler", "ddim", "--nfe", "-2"], "positive integer"),
        (["sample", "--testbed", "ring8", "--sampler", "ddim", "--nfe", "0"], "positive integer"),
        (["sample", "--testbed", "ring8", "--sampler", "plms", "--nfe", "4"], "plms"),
        (
            ["sample", "--testbed", "ring8", "--sampler", "ddim", "--nfe", "4", "--cfg", "3"],
            "conditional",
        ),
        (["sample", "--testbed", "missing.npz", "--sampler", "ddim", "--nfe", "4"], "missing.npz"),
        (["baseline", "--testbed", "ring8", "--samplers", "ddim,foo"], "foo"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    code, _, err = _run([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_malformed_npz_is_one_line_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", means=np.zeros((3, 2)), weights=np.ones(2), stds=np.ones(3))
    args = ["sample", "--testbed", str(tmp_path / "bad.npz"), "--sampler", "ddim", "--nfe", "4"]
    code, _, err = _run([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "'weights'" in err and err.count("\n") == 1


def test_console_script_exit_code(tmp_path):
    """The installed entry point (python -m) exits 2 with no traceback."""
    args = [
        "sample",
        "--testbed",
        "nope",
        "--sampler",
        "ddim",
        "--nfe",
        "1",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "scoredistill", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("scoredistill: error:") and "Traceback" not in proc.stderr


def test_learned_teacher_round_trip_through_the_cli(tmp_path, capsys):
    """train-teacher writes a folder that `sample` accepts; metrics are against the exact truth."""
    teacher_dir = tmp_path / "teacher"
    assert main(["train-teacher", "--steps", "30", "--quiet", "--out", str(teacher_dir)]) == 0
    args = ["sample", "--testbed", str(teacher_dir), "--sampler", "ddim", "--nfe", "4"]
    assert main([*args, "--n", "200", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert np.isfinite(metrics["mmd"]) and metrics["nfe"] == 4


def test_distill_dry_run_and_bad_keys(tmp_path, capsys):
    args = ["distill", "--preset", "sid-ring8", "--set", "objective.sid_alpha=1.0", "--dry-run"]
    code, out, _ = _run([*args, "--out", str(tmp_path)], capsys)
    assert code == 0
    cfg = json.loads(out)
    assert cfg["method"] == "sid" and cfg["objective"]["sid_alpha"] == 1.0
    assert cfg["train"]["critic_updates"] == 1  # the preset's value
    for bad, needle in [
        (["--set", "objective.sid_alfa=1"], "objective.sid_alfa"),
        (["--set", "train.stepz=3"], "train.stepz"),
        (["--set", "train.steps=many"], "train.steps"),
        (["--testbed", "ring9"], "ring9"),
    ]:
        code, _, err = _run(
            ["distill", "--preset", "sid-ring8", *bad, "--out", str(tmp_path / "o")], capsys
        )
        assert code == 2 and needle in err and err.count("\n") == 1, (bad, err)
    code, _, err = _run(["distill", "--preset", "nope", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "dmd2-ring8" in err
    # a setting that only the objective and the generator together rule out, before any training
    bad = ["--set", "objective.regression_weight=1", "--set", "generator.kind=conv", "--dry-run"]
    code, _, err = _run(
        ["distill", "--preset", "dmd2-digits", *bad, "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "objective.regression_weight" in err and err.count("\n") == 1, err


def test_distill_refuses_a_used_folder_without_resume(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("x")
    code, _, err = _run(["distill", "--preset", "dmd2-ring8", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--resume" in err


@pytest.mark.slow
def test_bench_onestep_writes_the_table(tmp_path, capsys):
    tiny = ["train.steps=2", "train.batch_size=32", "critic.init_steps=2", "train.eval_every=0"]
    tiny += ["train.eval_samples=200", "critic.hidden=16", "generator.hidden=16"]
    args = [
        "bench",
        "--suite",
        "onestep",
        "--seeds",
        "0,1",
        "--presets",
        "dmd2-ring8,vsd-ring8,sfd-cond2d",
        *[a for s in tiny for a in ("--set", s)],
    ]
    code, _, _ = _run([*args, "--out", str(tmp_path)], capsys)
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    methods = results["testbeds"]["ring8"]["methods"]
    assert set(methods) == {"dmd2-ring8", "vsd-ring8"}
    assert all("mmd_std" in m and "initial_mmd" in m and m["nfe"] == 1 for m in methods.values())
    teacher = results["testbeds"]["ring8"]["teacher"]
    assert len(teacher["rows"]) == 4 * 5 * 4  # 4 samplers x 5 grids x NFE 1, 2, 4, 8
    assert set(teacher["best"]) == {"mmd_local", "mmd", "sw2"}
    assert set(teacher["best"]["mmd"]) == {"1", "2", "4", "8"}
    assert "forget_mass" in results["testbeds"]["cond2d"]["methods"]["sfd-cond2d"]
    md = (tmp_path / "results.md").read_text()
    assert "| **dmd2-ring8** | 1 |" in md and "forget mass" in md
    assert "teacher best by mmd_local:" in md and "below best 4 / 8 NFE on" in md
    # a second call reads the finished runs back instead of training again
    mtime = (tmp_path / "runs" / "vsd-ring8-seed0" / "metrics.json").stat().st_mtime
    code, _, _ = _run([*args, "--out", str(tmp_path)], capsys)
    assert code == 0
    assert (tmp_path / "runs" / "vsd-ring8-seed0" / "metrics.json").stat().st_mtime == mtime


@pytest.mark.slow
def test_bench_kd_suite_runs_through_the_cli(tmp_path, capsys):
    args = ["bench", "--suite", "kd", "--quick", "--presets", "kd-digits", "--out", str(tmp_path)]
    code, _, _ = _run(args, capsys)
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["presets"]) == ["kd-digits"]
    assert "| verdict |" in (tmp_path / "results.md").read_text()
    code, _, err = _run([*args[:-2], "--set", "train.steps=3", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--set" in err
