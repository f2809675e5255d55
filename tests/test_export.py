"""Export round trips: a stock ``DiffusionPipeline.from_pretrained`` of ``OUT/pipeline`` (VP, flow,
one-step EDM) or the README loop of ``OUT/student`` (DiT, class-conditional flow) gives the
student's own samples for the same ``torch.Generator``; what no stock scheduler reproduces is
refused with the reason."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    DiTTransformer2DModel,
    EDMEulerScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DModel,
)

from scoredistill.export import export_pipeline, export_run, sample_exported
from scoredistill.sources.diffusers import DiffusersGenerator
from scoredistill.teachers.diffusers import DiffusersTeacher

BLOCKS = {
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
}
EPS32 = float(torch.finfo(torch.float32).eps)


def _unet(classes: int | None = None) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        num_class_embeds=classes,
        **BLOCKS,
    )


def _dit(out_channels: int = 2) -> DiTTransformer2DModel:
    """A tiny DiT, 2 classes + null row; ``out_channels = 2`` is DiT's learned sigma."""
    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=1,
        out_channels=out_channels,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=2,
    )


def _student(steps: int, scheduler=None, *, net=None, top: int | None = None, **unet):
    """A tiny teacher and a student whose weights moved away from it (as after training)."""
    net = _unet(**unet) if net is None else net
    teacher = DiffusersTeacher(net.eval(), scheduler or DDPMScheduler())
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
    """Images and the raw last sample (recorded from ``scheduler.step``: ``DDPMPipeline`` has no
    callback) of the stock pipeline reloaded from ``path``."""
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    raw, step = [], pipe.scheduler.step

    def recording(*args, **kwargs):
        out = step(*args, **kwargs)
        raw.append(out[0].clone())
        return out

    pipe.scheduler.step = recording
    g = torch.Generator().manual_seed(seed)
    out = pipe(batch_size=n, num_inference_steps=steps, generator=g, output_type="np", **kw)
    return out.images, raw[-1]


def _check(images: np.ndarray, raw: torch.Tensor, ours: torch.Tensor, atol: float = 0.0) -> None:
    # identical float32 network calls; the scheduler's coefficients (float32) and ours (float64,
    # rounded once) differ by ~1 ulp, amplified by 1/alpha in the eps -> x0 conversion at the top
    # step: 1e-5 relative to the sample scale is ~100 ulps (``atol`` adds a scheduler's own error)
    scale = float(ours.abs().max())
    torch.testing.assert_close(raw, ours, rtol=1e-5, atol=1e-5 * scale + atol)
    want = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert images.shape == want.shape and np.abs(images - want).max() <= 1e-5 * max(scale, 1) + atol


def _run_readme(path, ns: dict | None = None) -> torch.Tensor:
    """Execute the README's code block as written (diffusers classes only) on this folder."""
    readme = (path / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(code.strip().splitlines()) <= 15
    ns = {} if ns is None else ns
    exec(code.replace("PATH/TO/student", str(path)), ns)
    return ns["x"]


@pytest.mark.parametrize(("steps", "prediction"), [(1, "epsilon"), (4, "v_prediction")])
def test_unconditional_round_trip(tmp_path, steps, prediction, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gen, teacher = _student(steps, DDPMScheduler(prediction_type=prediction))
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
    gen, teacher = _student(2, DDPMScheduler(prediction_type="v_prediction"), classes=4)
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
    gen, teacher = _student(1, top=624)  # SiD-like start, below the table's top
    assert gen.timesteps == (624,)
    path = export_pipeline(gen, teacher, tmp_path, steps=1)
    config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    assert config["num_train_timesteps"] == 625
    images, raw = _pipeline(path, 3, seed=7, steps=1)
    _check(images, raw, _ours(gen, 3, seed=7))
    path2 = export_pipeline(gen, teacher, tmp_path, steps=1)  # a second export replaces the first
    assert path2 == path and sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]


@pytest.mark.parametrize("steps", [1, 2])
def test_flow_round_trip(tmp_path, steps):
    gen, teacher = _student(steps, FlowMatchEulerDiscreteScheduler(shift=3.0))
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0)
    stock.set_timesteps(steps)  # the student's grid is the stock one: sigma 1 (pure noise) first
    a, s = teacher.schedule.alpha_sigma(torch.tensor(gen.ts, dtype=torch.float64))
    native = teacher.native_level(2 * (a.log() - s.log()))[2]
    torch.testing.assert_close(native.float(), stock.timesteps, rtol=1e-6, atol=0)
    assert gen.init_scale == pytest.approx(1.0, abs=1e-12)  # x_t = z: the pipelines' randn
    path = export_run(gen, teacher, tmp_path, steps=steps)
    assert path.name == "pipeline"
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    assert config["stochastic_sampling"] and config["shift"] == 3.0
    images, raw = _pipeline(path, 5, seed=3, steps=steps)
    ours = _ours(gen, 5, seed=3)
    _check(images, raw, ours)
    got = sample_exported(path, 5, rng=torch.Generator().manual_seed(3), steps=steps)
    torch.testing.assert_close(got, raw)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_edm_one_step_round_trip(tmp_path, prediction):
    gen, teacher = _student(1, EDMEulerScheduler(prediction_type=prediction), classes=4)
    noise_sigma = math.sqrt(80.0**2 + 1)  # EDMEulerScheduler.init_noise_sigma, not sigma_max
    assert gen.init_scale == pytest.approx(noise_sigma, rel=1e-12)
    path = export_run(gen, teacher, tmp_path, steps=1)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "ConsistencyModelPipeline"
    assert index["scheduler"] == ["diffusers", "EDMEulerScheduler"]
    labels = [0, 2, 1, 2, 0]
    images, raw = _pipeline(path, 5, seed=4, steps=1, class_labels=labels)
    ours = _ours(gen, 5, seed=4, labels=torch.tensor(labels))
    # EDMEulerScheduler.step returns x + (x - x0)/sigma·(0 - sigma) in float32: x0 plus a few
    # roundings at the scale of x = noise_sigma·z, not of x0
    x_t = noise_sigma * torch.randn(5, 64, generator=torch.Generator().manual_seed(4))
    _check(images, raw, ours, atol=4 * EPS32 * float(x_t.abs().max()))


def test_dit_student_folder_readme_loop(tmp_path):
    gen, teacher = _student(2, DDPMScheduler(prediction_type="epsilon"), net=_dit())
    with pytest.raises(ValueError, match="UNet2DModel"):
        export_pipeline(gen, teacher, tmp_path, steps=2)
    path = export_run(gen, teacher, tmp_path, steps=2)
    assert path.name == "student" and sorted(p.name for p in tmp_path.iterdir()) == ["student"]
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "scheduler", "transformer"]
    got = _run_readme(path)  # 16 samples, seed 0, label 0
    ours = _ours(gen, 16, seed=0, labels=torch.zeros(16, dtype=torch.long))
    torch.testing.assert_close(got, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))
    with_null = torch.tensor([0, -1, 1])
    got = sample_exported(path, 3, labels=with_null, rng=torch.Generator().manual_seed(2))
    ours = _ours(gen, 3, seed=2, labels=with_null)
    torch.testing.assert_close(got, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))


def test_class_conditional_flow_student_folder_readme_loop(tmp_path):
    gen, teacher = _student(2, FlowMatchEulerDiscreteScheduler(shift=3.0), classes=4)
    with pytest.raises(ValueError, match="no stock pipeline passes class_labels"):
        export_pipeline(gen, teacher, tmp_path, steps=2)
    path = export_run(gen, teacher, tmp_path, steps=2, note="flow")
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "scheduler", "unet"]
    got = _run_readme(path)
    ours = _ours(gen, 16, seed=0, labels=torch.zeros(16, dtype=torch.long))
    torch.testing.assert_close(got, ours, rtol=1e-5, atol=1e-5 * float(ours.abs().max()))


def test_export_refuses_what_it_cannot_reproduce(tmp_path):
    gen, teacher = _student(2)
    with pytest.raises(ValueError, match="trained for 2"):
        export_pipeline(gen, teacher, tmp_path, steps=1)
    gen, teacher = _student(2, EDMEulerScheduler())  # Euler moves to the next sigma, no noise
    with pytest.raises(ValueError, match="deterministic Euler step cannot re-noise with fresh"):
        export_run(gen, teacher, tmp_path, steps=2)
    dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    gen, teacher = _student(1, dynamic)  # set_timesteps(K) needs mu, which no pipeline passes
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        export_run(gen, teacher, tmp_path, steps=1)
    assert list(tmp_path.iterdir()) == []
