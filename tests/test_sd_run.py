"""``scoredistill distill --teacher SD_DIR --prompts FILE`` end to end, and its bad inputs.

The teacher is the tiny text-to-image pipeline of ``conftest.sd_folder``; the runs use the
``--quick`` budget: these tests check plumbing and contracts (files, a LoRA-only checkpoint,
bit-exact resume of LoRA players, the exported folders), not quality."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from scoredistill.cli import main
from scoredistill.runs.sd import prompt_digits


def _args(preset, sd_folder, prompts, out, *extra):
    return ["distill", "--preset", preset, "--teacher", str(sd_folder), "--prompts", prompts,
            "--out", str(out), *extra]  # fmt: skip


def test_prompt_digits():
    assert prompt_digits(["a handwritten 3", "a bold handwritten 7"]).tolist() == [3, 7]
    assert prompt_digits(["a handwritten 3", "a cat"]) is None
    assert prompt_digits(["3 or 4"]) is None
    assert prompt_digits(["version 1.5 of a 3"]).tolist() == [3]  # "1.5" names no digit


def test_dry_run_reports_lora_and_full_players(sd_folder, prompts, tmp_path, capsys):
    assert main(_args("swiftbrush-sd", sd_folder, prompts, tmp_path / "o", "--dry-run")) == 0
    lora = json.loads(capsys.readouterr().out)["networks"]
    assert main(_args("dmd2-sd", sd_folder, prompts, tmp_path / "o", "--dry-run")) == 0
    full = json.loads(capsys.readouterr().out)["networks"]
    unet = full["frozen_params"]["unet"]
    assert full["trainable_params"] == {"student": unet, "critic": unet}
    assert 0 < lora["trainable_params"]["student"] < unet
    # the bundled teacher's VAE maps 1x8x8 digits to 4x4x4 latents (docs/text_to_image.md)
    assert (full["latent_shape"], full["image_shape"]) == ([4, 4, 4], [1, 8, 8])
    # the fixture's file: two prompts and a blank line (stripped)
    assert full["teacher_folder"] == str(sd_folder) and full["prompts"] == f"{prompts} (2)"
    assert full["export"] == "OUT/pipeline: StableDiffusionPipeline with LCMScheduler"
    assert lora["export"] == "OUT/lora: a LoRA for the teacher's own pipeline, with LCMScheduler"
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_swiftbrush_quick_run_resumes_bit_exactly_and_exports_lora(sd_folder, prompts, tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert main(_args("swiftbrush-sd", sd_folder, prompts, straight, "--quick")) == 0
    first = _args("swiftbrush-sd", sd_folder, prompts, resumed, "--quick", "--steps", "2")
    assert main(first) == 0
    again = _args("swiftbrush-sd", sd_folder, prompts, resumed, "--quick", "--resume")
    assert main([*again, "--steps", "3"]) == 0
    a = load_file(straight / "checkpoints" / "step-3" / "state.safetensors")
    b = load_file(resumed / "checkpoints" / "step-3" / "state.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    models = [k for k in a if k.startswith("model/")]  # generator, critic, EMA: LoRA only
    assert len(models) == 3 * 64 and all(".lora." in k for k in models)
    for name in ("report.md", "samples.png", "lora/pytorch_lora_weights.safetensors",
                 "lora/scheduler/scheduler_config.json", "lora/README.md"):  # fmt: skip
        assert (straight / name).is_file(), name
    data = np.load(straight / "samples.npz")
    assert data["x"].shape == (32, 64) and data["latents"].shape == (32, 64)
    assert set(np.unique(data["labels"])) <= {0, 1}
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["guidance"] == 4.5 and np.isfinite(metrics["fd"])


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"prompts": "missing.txt"}, "missing.txt is not a file"),
        ({"prompts": "EMPTY"}, "holds no prompt"),
        ({"set": ["student.lora_rank=0"]}, "student.lora_rank"),
        ({"set": ["objective.guidance=1", "negative_prompt=blurry"]}, "negative_prompt"),
        ({"set": ["train.parallel=fsdp2"]}, "train.parallel"),
        ({"drop": "vae"}, "vae"),
    ],
)
def test_bad_inputs_are_one_line_exit_2(change, needle, sd_folder, prompts, tmp_path, capsys):
    folder = sd_folder
    if "drop" in change:
        folder = tmp_path / "teacher"
        shutil.copytree(sd_folder, folder)
        shutil.rmtree(folder / change["drop"])
    if change.get("prompts") == "EMPTY":
        (tmp_path / "empty.txt").write_text("\n  \n")
        change = {"prompts": str(tmp_path / "empty.txt")}
    p = change.get("prompts", prompts)
    sets = [a for s in change.get("set", []) for a in ("--set", s)]
    code = main(_args("swiftbrush-sd", folder, p, tmp_path / "o", *sets))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()
