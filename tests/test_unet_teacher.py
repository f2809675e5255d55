"""The diffusers UNet teacher trainer: it learns, writes a stock pipeline folder, resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scoredistill.data import load_digits_images
from scoredistill.io import load_safetensors
from scoredistill.train import unet_teacher
from scoredistill.train.unet_teacher import make_unet, sample_unet_teacher, train_unet_teacher

TINY = {"channels": (8, 16), "batch_size": 32, "progress": False}  # ~16k parameters


@pytest.fixture(scope="module")
def digits():
    data = load_digits_images("train")
    return data.x[:256], data.labels[:256]


def _losses(out: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_training_learns_and_saves_a_stock_pipeline(tmp_path: Path, digits):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    out = tmp_path / "run"
    info = train_unet_teacher(*digits, out, steps=20, lr=3e-3, log_every=1, **TINY)
    losses = _losses(out)
    assert len(losses) == 20 and all(map(torch.isfinite, torch.tensor(losses)))
    # per-step losses are noisy (random t): compare the means of the first and last quarters
    assert sum(losses[-5:]) < sum(losses[:5])
    assert info["num_classes"] == 10 and info["null_label"] == 10 and info["params"] > 0
    assert not (out / "checkpoints").exists()  # removed once the pipeline is written

    pipe = DDPMPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    assert isinstance(pipe.scheduler, DDPMScheduler)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert pipe.unet.config.num_class_embeds == 11  # 10 classes + the null label
    unet = UNet2DModel.from_pretrained(out / "pipeline" / "unet", local_files_only=True)
    assert (out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    for a, b in zip(unet.parameters(), pipe.unet.parameters(), strict=True):
        assert torch.equal(a, b)

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4)
    x = sample_unet_teacher(unet, pipe.scheduler.config, labels, num_inference_steps=3, rng=g)
    assert x.shape == (4, 1, 8, 8) and bool(torch.isfinite(x).all())
    guided = sample_unet_teacher(
        unet, pipe.scheduler.config, labels, num_inference_steps=3, guidance_scale=2.0, rng=g
    )
    assert guided.shape == x.shape


def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, digits, monkeypatch):
    kw = {"steps": 8, "checkpoint_every": 4, "log_every": 1, **TINY}
    train_unet_teacher(*digits, tmp_path / "whole", **kw)

    real_save = unet_teacher.save_checkpoint

    def save_then_die(directory, step, **rest):
        real_save(directory, step, **rest)
        if step == 4:
            raise KeyboardInterrupt("killed after the step-4 checkpoint")

    monkeypatch.setattr(unet_teacher, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_unet_teacher(*digits, tmp_path / "split", **kw)
    monkeypatch.setattr(unet_teacher, "save_checkpoint", real_save)
    with pytest.raises(ValueError, match="resume=True"):
        train_unet_teacher(*digits, tmp_path / "split", **kw)
    train_unet_teacher(*digits, tmp_path / "split", resume=True, **kw)

    weights = "pipeline/unet/diffusion_pytorch_model.safetensors"
    a, b = (
        load_safetensors(tmp_path / "whole" / weights),
        load_safetensors(tmp_path / "split" / weights),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)  # bit for bit
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "split")


def test_unconditional_data_gives_an_unconditional_unet(tmp_path: Path, digits):
    info = train_unet_teacher(digits[0][:64], None, tmp_path, steps=2, **TINY)
    assert info["num_classes"] is None and info["label_dropout"] == 0.0
    config = json.loads((tmp_path / "pipeline" / "unet" / "config.json").read_text())
    assert config["num_class_embeds"] is None


def test_bad_inputs_are_named(tmp_path: Path, digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train_unet_teacher((x + 1) * 127.5, y, tmp_path / "a", steps=1, **TINY)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.4"):
        train_unet_teacher(x, y, tmp_path / "b", steps=1, num_classes=5, **TINY)
    with pytest.raises(ValueError, match="beta_schedule"):
        train_unet_teacher(x, y, tmp_path / "c", steps=1, beta_schedule="cosine", **TINY)
    with pytest.raises(ValueError, match="divisible by 2"):
        make_unet(6, 1, 10, channels=(8, 16, 16))


BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "teachers" / "digits-unet"


def test_bundled_teacher_is_a_small_stock_pipeline():
    from diffusers import DDPMPipeline

    size = sum(f.stat().st_size for f in (BUNDLED / "pipeline").rglob("*") if f.is_file())
    assert size <= 10 * 2**20
    pipe = DDPMPipeline.from_pretrained(BUNDLED / "pipeline", local_files_only=True)
    assert pipe.unet.config.num_class_embeds == 11 and pipe.unet.config.sample_size == 8
    assert pipe.scheduler.config.prediction_type == "epsilon"
