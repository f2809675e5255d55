"""Export round trips: a stock ``DiffusionPipeline.from_pretrained`` of ``OUT/pipeline`` gives the
student's own samples for the same noise, one-step, four-step, intermediate-start and
class-conditional."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, DiTTransformer2DModel, UNet2DModel

from scoredistill.export import export_pipeline, sample_exported
from scoredistill.sources.diffusers import DiffusersGenerator
from scoredistill.teachers.diffusers import DiffusersTeacher

BLOCKS = {
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
}


def _student(steps: int, prediction: str, classes: int | None = None, top: int | None = None):
    """A tiny teacher and a student whose weights moved away from it (as after training)."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        num_class_embeds=classes,
        **BLOCKS,
    )
    teacher = DiffusersTeacher(unet.eval(), DDPMScheduler(prediction_type=prediction))
    gen = DiffusersGenerator(teacher, steps=steps, init_timestep=top)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return gen.eval(), teacher


def _ours(gen: DiffusersGenerator, n: int, seed: int, labels=None) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)  # one stream: z first, then the re-noising
    with torch.no_grad():
        return gen(gen.sample_latent(n, rng), labels, rng=rng).reshape(n, *gen.shape)


def _pipeline(path, n: int, seed: int, steps: int, **kw) -> tuple[np.ndarray, torch.Tensor]:
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    raw = []  # the callback sees each step's sample; after the last step it is the raw x0
    out = pipe(
        batch_size=n,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        callback=lambda i, t, x: raw.append(x.clone()),
        **kw,
    )
    return out.images, raw[-1]


def _check(images: np.ndarray, raw: torch.Tensor, ours: torch.Tensor) -> None:
    # identical float32 network calls; the scheduler's coefficients (float32 sqrt of float32
    # abar) and ours (float64, rounded once) differ by ~1 ulp, amplified by 1/alpha in the
    # eps -> x0 conversion at the top step: 1e-5 relative to the sample scale is ~100 ulps
    scale = float(ours.abs().max())
    torch.testing.assert_close(raw, ours, rtol=1e-5, atol=1e-5 * scale)
    want = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert images.shape == want.shape and np.abs(images - want).max() <= 1e-5 * max(scale, 1)


@pytest.mark.parametrize(("steps", "prediction"), [(1, "epsilon"), (4, "v_prediction")])
def test_unconditional_round_trip(tmp_path, steps, prediction, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gen, teacher = _student(steps, prediction)
    path = export_pipeline(gen, teacher, tmp_path, steps=steps, note="made by a test")
    index = json.loads((path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "LCMScheduler"]
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    readme = (path / "README.md").read_text()
    assert f"num_inference_steps={steps}" in readme and "made by a test" in readme
    images, raw = _pipeline(path, 5, seed=3, steps=steps)
    ours = _ours(gen, 5, seed=3)
    _check(images, raw, ours)
    if prediction != "epsilon":  # an untrained eps-net's x0 at the top is ~x/alpha: all clipped
        assert float(((ours > -1) & (ours < 1)).float().mean()) > 0.05
    torch.testing.assert_close(sample_exported(path, 5, rng=torch.Generator().manual_seed(3)), raw)


def test_class_conditional_round_trip_and_helper(tmp_path):
    gen, teacher = _student(2, "v_prediction", classes=4)  # 3 classes + the null row
    path = export_pipeline(gen, teacher, tmp_path, steps=2)
    labels = [0, 2, 1, 2]
    images, raw = _pipeline(path, 4, seed=5, steps=2, class_labels=labels)
    _check(images, raw, _ours(gen, 4, seed=5, labels=torch.tensor(labels)))
    with_null = torch.tensor([0, -1, 1, -1])
    got = sample_exported(path, 4, labels=with_null, rng=torch.Generator().manual_seed(6))
    ours = _ours(gen, 4, seed=6, labels=with_null)
    torch.testing.assert_close(got, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))
    assert "3 is the null" in (path / "README.md").read_text()


def test_intermediate_start_exports_a_cut_table(tmp_path):
    gen, teacher = _student(1, "epsilon", top=624)  # SiD-like start, below the table's top
    assert gen.timesteps == (624,)
    path = export_pipeline(gen, teacher, tmp_path, steps=1)
    assert (
        json.loads((path / "scheduler" / "scheduler_config.json").read_text())[
            "num_train_timesteps"
        ]
        == 625
    )
    images, raw = _pipeline(path, 3, seed=7, steps=1)
    _check(images, raw, _ours(gen, 3, seed=7))
    path2 = export_pipeline(gen, teacher, tmp_path, steps=1)  # a second export replaces the first
    assert path2 == path and sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]


def test_export_refuses_what_it_cannot_reproduce(tmp_path):
    gen, teacher = _student(2, "epsilon")
    with pytest.raises(ValueError, match="trained for 2"):
        export_pipeline(gen, teacher, tmp_path, steps=1)
    dit = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=1,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=2,
    )
    dit_teacher = DiffusersTeacher(dit.eval(), DDPMScheduler())
    with pytest.raises(ValueError, match="UNet2DModel"):
        export_pipeline(DiffusersGenerator(dit_teacher), dit_teacher, tmp_path, steps=1)
    assert not (tmp_path / "pipeline").exists()
