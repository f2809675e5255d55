"""The real-model path end to end: a diffusers folder in, a trained student, a stock pipeline out.

The teacher is a tiny random class-conditional ``UNet2DModel`` saved by diffusers itself
(``DDPMPipeline.save_pretrained``); the run uses the ``--quick`` budget, so these tests check the
plumbing and the contracts (files, shapes, the export reproducing the student), not quality."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scoredistill.cli import main


def _run(args: list[str]) -> int:
    return main(args)


def test_dry_run_prints_parameters_and_memory(teacher_dir, capsys) -> None:
    args = ["distill", "--preset", "dmd2-unet", "--teacher", teacher_dir, "--dry-run"]
    assert _run([*args, "--out", "unused"]) == 0
    out = json.loads(capsys.readouterr().out)
    params = out["networks"]["params"]
    assert params["student"] == params["critic"] == params["teacher (frozen)"] > 1000
    assert out["networks"]["shape"] == [1, 8, 8] and out["networks"]["num_classes"] == 10
    assert out["teacher"] == teacher_dir and out["method"] == "dmd"
    assert out["networks"]["labels"].startswith("10 classes and null row 10")
    assert out["networks"]["export"] == "OUT/pipeline: ConsistencyModelPipeline with LCMScheduler"
    assert out["real_images"] == "none: dmd reads only the teacher, so 'data' is unused"
    gan = ["distill", "--preset", "dmd2-gan-unet", "--teacher", teacher_dir, "--dry-run"]
    assert _run([*gan, "--out", "unused"]) == 0
    real = json.loads(capsys.readouterr().out)["real_images"]
    assert real == "sklearn's digits (train split), for the GAN term's real class"


@pytest.mark.parametrize("preset", ["dmd2-unet", "cd-unet"])
def test_num_classes_declares_a_unet_without_a_null_row(teacher_dir, capsys, preset) -> None:
    """11 label rows read as 10 classes + null row 10 by default; ``num_classes=11`` makes
    every row a class (a stock class-conditional UNet); 12 fits neither and is refused."""
    args = ["distill", "--preset", preset, "--teacher", teacher_dir, "--dry-run"]
    assert _run([*args, "--set", "num_classes=11"]) == 0
    net = json.loads(capsys.readouterr().out)["networks"]
    assert net["num_classes"] == 11 and net["labels"].startswith("11 classes, no null row")
    assert _run([*args, "--set", "num_classes=12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_classes=12 does not fit 11 label rows" in err[0]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["dmd2-unet", "dmd2-4step-unet"])
def test_quick_run_writes_the_contract_and_a_stock_pipeline(teacher_dir, tmp_path, preset):
    from diffusers import DiffusionPipeline

    out = tmp_path / "run"
    args = ["distill", "--preset", preset, "--teacher", teacher_dir, "--quick", "--out", str(out)]
    assert _run(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    k = 4 if "4step" in preset else 1
    assert metrics["nfe"] == k and np.isfinite(metrics["fd"])
    assert set(metrics["teacher_best"]) <= {"1", "2"}
    data = np.load(out / "samples.npz")
    assert data["x"].shape == (64, 64) and data["labels"].shape == (64,)
    for name in ("report.md", "samples.png", "curves.png", "pipeline/README.md"):
        assert (out / name).is_file(), name
    assert "## Where the student lands" in (out / "report.md").read_text()
    pipe = DiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    labels = torch.arange(4)
    images = pipe(
        batch_size=4,
        class_labels=labels,
        num_inference_steps=k,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (4, 8, 8, 1) and np.isfinite(images).all()
    assert f"num_inference_steps={k}" in (out / "pipeline" / "README.md").read_text()


@pytest.mark.parametrize(
    ("teacher", "needle"),
    [
        ("no/such-model", "not a local folder"),
        ("/nonexistent/folder", "no such folder"),
    ],
)
def test_bad_teacher_is_one_line_exit_2(teacher, needle, tmp_path, capsys) -> None:
    args = ["distill", "--preset", "dmd2-unet", "--teacher", teacher, "--out", str(tmp_path / "o")]
    assert _run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "o").exists()  # nothing written


def test_data_of_another_shape_is_refused_only_where_it_is_read(teacher_dir, tmp_path, capsys):
    """The GAN term reads real images: a folder of another shape is one line naming the key and
    the fix. Without it the key is unused, so the same folder (or, for a teacher that is not
    8x8, the digits default) is not read and cannot stop the run."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    for preset, code in (("dmd2-gan-unet", 2), ("dmd2-unet", 0)):
        args = ["distill", "--preset", preset, "--teacher", teacher_dir, "--dry-run"]
        assert _run([*args, "--set", f"data={folder}"]) == code
        err = capsys.readouterr().err
        if code:
            assert len(err.strip().splitlines()) == 1
            assert "config key 'data'" in err and "(1, 8, 8)" in err and "--set data=DIR" in err


def test_sample_reads_every_label_row_as_a_class_with_num_classes(teacher_dir, tmp_path, capsys):
    """Row 10 of the fixture's 11 is the null label by default, so ``--class 10`` is refused;
    ``--num-classes 11`` makes it a class."""
    args = ["sample", "--teacher", teacher_dir, "--sampler", "ddim", "--nfe", "1", "--n", "4"]
    assert _run([*args, "--class", "10", "--out", str(tmp_path / "a")]) == 2
    assert "classes are 0..9" in capsys.readouterr().err
    out = tmp_path / "b"
    assert _run([*args, "--class", "10", "--num-classes", "11", "--out", str(out)]) == 0
    assert set(np.load(out / "samples.npz")["labels"].tolist()) == {10}


def test_teacher_flag_refuses_a_testbed_preset(teacher_dir, capsys) -> None:
    args = ["distill", "--preset", "dmd2-digits", "--teacher", teacher_dir, "--out", "x"]
    assert _run(args) == 2
    assert "dmd2-unet" in capsys.readouterr().err


def test_sample_and_baseline_take_a_teacher_folder(teacher_dir, tmp_path, capsys) -> None:
    out = tmp_path / "s"
    args = ["sample", "--teacher", teacher_dir, "--sampler", "ddim", "--nfe", "2", "--n", "32"]
    assert _run([*args, "--class", "3", "--out", str(out)]) == 0
    data = np.load(out / "samples.npz")
    assert data["x"].shape == (32, 64) and set(data["labels"].tolist()) == {3}
    assert json.loads((out / "metrics.json").read_text())["nfe"] == 2
    out = tmp_path / "b"
    args = ["baseline", "--teacher", teacher_dir, "--samplers", "ddim,euler", "--nfe", "1,2"]
    assert _run([*args, "--n", "32", "--out", str(out)]) == 0
    rows = json.loads((out / "baseline.json").read_text())["rows"]
    assert {r["sampler"] for r in rows} == {"ddim", "euler", "diffusers-ddim"}
    assert {r["nfe"] for r in rows} == {1, 2}
    capsys.readouterr()
    both = ["sample", "--teacher", teacher_dir, "--testbed", "ring8", "--sampler", "ddim"]
    assert _run([*both, "--nfe", "1", "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of --testbed" in capsys.readouterr().err


def test_train_teacher_unet_writes_a_diffusers_pipeline(tmp_path) -> None:
    from diffusers import DDPMPipeline

    out = tmp_path / "t"
    args = ["train-teacher", "--arch", "unet", "--data", "digits", "--steps", "2", "--quiet"]
    assert _run([*args, "--out", str(out)]) == 0
    pipe = DDPMPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    assert pipe.unet.config.num_class_embeds == 11 and pipe.unet.config.sample_size == 8


@pytest.mark.slow
def test_bf16_autocast_and_checkpointing_run(teacher_dir, tmp_path) -> None:
    out = tmp_path / "bf16"
    args = ["distill", "--preset", "sid-unet", "--teacher", teacher_dir, "--quick"]
    sets = ["--set", "precision=bf16", "--set", "student.gradient_checkpointing=true"]
    assert _run([*args, *sets, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["fd"]) and metrics["nfe"] == 1
    assert (out / "pipeline" / "model_index.json").is_file()


def _odd_teacher(path) -> str:
    """A folder diffusers saves and loads but cannot run: 6 → 3 → 2 down, 2 → 4 up (not 3)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=6, in_channels=1, out_channels=1, block_out_channels=(8, 16, 16),
        layers_per_block=1, down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3, norm_num_groups=8,
    )  # fmt: skip
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("family", ["distill", "consistency"])
def test_a_network_that_cannot_run_is_refused_before_training(tmp_path, capsys, family):
    """``--dry-run`` and a real run both stop on one line naming the folder and the shape (a run
    used to reach step 1 and end with a traceback labelled an internal error)."""
    folder = _odd_teacher(tmp_path / "odd")
    preset = {"distill": "sid-unet", "consistency": "cd-unet"}[family]
    for extra in (["--dry-run"], ["--quick"]):
        args = [
            "distill",
            "--preset",
            preset,
            "--teacher",
            folder,
            *extra,
            "--out",
            str(tmp_path / "o"),
        ]
        assert _run(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1 and f"{folder}: the network cannot run on one (1, 6, 6) input" in err[0]
        )
        assert "Sizes of tensors must match" in err[0]
        assert not (tmp_path / "o").exists()


def test_an_edm_student_no_scheduler_replays_is_named_before_training(tmp_path, capsys):
    """EDMEulerScheduler replays one step only: a 4-step student of an EDM teacher is named by
    ``--dry-run``'s ``export`` and warned about before training; 1 step exports. The presets'
    VP-table start (``sigma_init``) is refused on it in one line naming the key and the fix."""
    from diffusers import DDPMPipeline, EDMEulerScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2, norm_num_groups=8,
    )  # fmt: skip
    DDPMPipeline(unet=unet, scheduler=EDMEulerScheduler()).save_pretrained(tmp_path / "edm")
    base = ["distill", "--preset", "dmd2-unet", "--teacher", str(tmp_path / "edm")]
    assert _run([*base, "--dry-run", "--out", "unused"]) == 2  # the preset's VP start
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config key 'student.sigma_init': 2.5 picks a start on a VP" in err[0]
    assert "--set student.sigma_init=0" in err[0]
    base += ["--set", "student.sigma_init=0"]
    plans = {}
    for k in (1, 4):
        assert _run([*base, "--set", f"student.steps={k}", "--dry-run", "--out", "unused"]) == 0
        plans[k] = json.loads(capsys.readouterr().out)["networks"]["export"]
    assert plans[1] == "OUT/pipeline: ConsistencyModelPipeline with EDMEulerScheduler"
    assert plans[4].startswith("none: no stock scheduler reproduces this student")
    args = [*base, "--quick", "--set", "student.steps=4", "--set", "train.steps=1"]
    with pytest.warns(UserWarning, match="the student will not be exported: .*K = 4"):
        assert _run([*args, "--out", str(tmp_path / "run")]) == 0


def test_sample_and_baseline_refuse_a_network_that_cannot_run(tmp_path, capsys):
    folder = _odd_teacher(tmp_path / "odd")
    for cmd in (
        ["sample", "--sampler", "ddim", "--nfe", "1", "--n", "4"],
        ["baseline", "--nfe", "1"],
    ):
        assert _run([cmd[0], "--teacher", folder, *cmd[1:], "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "the network cannot run on one (1, 6, 6) input" in err[0]
