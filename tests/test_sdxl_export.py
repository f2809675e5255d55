"""SDXL students exported for stock diffusers (``export_sdxl``), on the tiny SDXL pipeline of
``test_sdxl_teacher`` (``EulerDiscreteScheduler``, SDXL's own).

(a) a full student exported as ``OUT/pipeline`` loads with plain
``DiffusionPipeline.from_pretrained`` as a ``StableDiffusionXLPipeline`` and reproduces the
student's latents from the same ``torch.Generator`` seed, for K = 1 and 2; (b) a LoRA student
exported as ``OUT/lora`` (``unet.``-prefixed keys) loads with ``load_lora_weights`` into the
teacher's pipeline and reproduces the student, which differs from the teacher on that grid;
(c) end to end: ``distill`` with ``dmd2-sd`` (full) and ``swiftbrush-sd`` (LoRA) on the SDXL
folder exports folders that redraw the run's own ``samples.npz`` latents.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from safetensors import safe_open

from scoredistill.export_latent import export_latent_student
from scoredistill.sources.diffusers import DiffusersGenerator
from scoredistill.sources.lora import AdapterView, add_lora
from scoredistill.teachers.diffusers_latent import load_latent_teacher
from test_sd3_teacher import _cli
from test_sdxl_teacher import PROMPTS, _pipe

IDS = torch.tensor([0, 1, 1, 0])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdxl") / "pipe"
    _pipe().save_pretrained(path)
    return path


def _teacher(folder):
    teacher = load_latent_teacher(folder)
    teacher.set_prompt_labels(PROMPTS)
    return teacher


def _load(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _nudge(params, scale: float, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))


def _student(gen: DiffusersGenerator) -> torch.Tensor:
    rng = torch.Generator().manual_seed(0)
    z = gen.sample_latent(len(IDS), rng)
    with torch.no_grad():
        return gen(z, IDS, rng=rng)


def _pipeline(pipe, steps: int) -> torch.Tensor:
    out = pipe([PROMPTS[i] for i in IDS.tolist()], num_inference_steps=steps, guidance_scale=1.0,
               generator=torch.Generator().manual_seed(0), output_type="latent").images  # fmt: skip
    return out.flatten(1)


@pytest.mark.parametrize("steps", [1, 2])
def test_full_student_is_a_stock_sdxl_pipeline(folder, tmp_path, steps):
    teacher = _teacher(folder)
    gen = DiffusersGenerator(teacher, steps=steps)
    _nudge(gen.parameters(), 0.01)
    path = export_latent_student(gen, teacher, tmp_path, steps=steps, prompt=PROMPTS[0])
    assert path.name == "pipeline" and "guidance_scale=1.0" in (path / "README.md").read_text()
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["force_zeros_for_empty_prompt"] is True
    pipe = _load(path)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    ours = _student(gen)
    # float32 UNet, K <= 2 LCM steps; as test_sd_export (2e-5 at |z| ~ 3)
    torch.testing.assert_close(_pipeline(pipe, steps), ours, atol=2e-5, rtol=0)
    teacher_pipe = _load(folder)
    teacher_pipe.scheduler = pipe.scheduler  # same grid, the teacher's weights: must differ
    assert (_pipeline(teacher_pipe, steps) - ours).abs().max() > 1e-2


@pytest.mark.parametrize("steps", [1, 2])
def test_lora_student_loads_into_the_teacher_pipeline(folder, tmp_path, steps):
    from diffusers import LCMScheduler

    teacher = _teacher(folder)
    add_lora(teacher.model, "student", rank=4, alpha=6.0)  # alpha != rank: metadata matters
    view = AdapterView(teacher, "student")
    _nudge(view.lora, 0.05)
    gen = DiffusersGenerator(teacher, steps=steps, denoiser=view)
    path = export_latent_student(gen, teacher, tmp_path, steps=steps, prompt=PROMPTS[0])
    assert path.name == "lora"
    with safe_open(path / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("unet.") and "base_model" not in k for k in keys)
    assert not any(".student." in k for k in keys)
    pipe = _load(folder)
    pipe.scheduler = LCMScheduler.from_pretrained(path / "scheduler")
    before = _pipeline(pipe, steps)
    pipe.load_lora_weights(path)
    ours = _student(gen)
    torch.testing.assert_close(_pipeline(pipe, steps), ours, atol=2e-5, rtol=0)
    assert (before - ours).abs().max() > 1e-2  # the LoRA changes the output as the student's


# --- end to end: distill-sd on an SDXL folder exports what diffusers loads --------------------
# (--quick, two training steps: ~5 s each on one core; plumbing and the export contract)


def _redraw(pipe, run, steps: int, output: str = "latent") -> tuple[torch.Tensor, torch.Tensor]:
    """``(pipeline latents, samples.npz latents)`` for the run's evaluation draw
    (``runs.unet.student_draw``: labels, then ``z``, from ``seed + 12345``; seed 0); with
    ``output="pt"`` ``(pipeline images, samples.npz images)``, both in [0, 1]."""
    data = np.load(run / "samples.npz")
    rng = torch.Generator().manual_seed(0 + 12345)
    labels = torch.randint(len(PROMPTS), (len(data["labels"]),), generator=rng)
    assert labels.tolist() == data["labels"].tolist()
    out = pipe([PROMPTS[i] for i in labels.tolist()], num_inference_steps=steps,
               guidance_scale=1.0, generator=rng, output_type=output).images  # fmt: skip
    if output == "pt":
        return out.flatten(1), (torch.from_numpy(data["x"]) + 1) / 2
    return out.flatten(1), torch.from_numpy(data["latents"])


def test_dmd2_on_sdxl_exports_a_pipeline(folder, tmp_path):
    assert _cli("distill", "dmd2-sd", folder, tmp_path, "--steps", "2") == 0
    run = tmp_path / "run"
    pipe = _load(run / "pipeline")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    steps = json.loads((run / "metrics.json").read_text())["nfe"]
    ours, drawn = _redraw(pipe, run, steps)
    torch.testing.assert_close(ours, drawn, atol=1e-4, rtol=0)


def test_swiftbrush_on_sdxl_exports_a_lora(folder, tmp_path):
    from diffusers import LCMScheduler

    assert _cli("distill", "swiftbrush-sd", folder, tmp_path, "--steps", "2") == 0
    lora = tmp_path / "run" / "lora"
    pipe = _load(folder)
    pipe.load_lora_weights(lora)
    pipe.scheduler = LCMScheduler.from_pretrained(lora / "scheduler")
    ours, drawn = _redraw(pipe, tmp_path / "run", 1)
    torch.testing.assert_close(ours, drawn, atol=1e-4, rtol=0)


# --- an EDM-family SDXL folder (Playground v2.5's layout: EDM scheduler, VAE latent statistics) ----


@pytest.fixture(scope="module")
def edm_folder(tmp_path_factory):
    from diffusers import EDMDPMSolverMultistepScheduler

    from test_sdxl_teacher import STATS

    pipe = _pipe()
    pipe.vae.register_to_config(**STATS)
    pipe.scheduler = EDMDPMSolverMultistepScheduler(
        sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, prediction_type="epsilon"
    )
    path = tmp_path_factory.mktemp("playground") / "pipe"
    pipe.save_pretrained(path)
    return path


def test_an_edm_lora_readme_names_the_scheduler_it_saved(edm_folder, tmp_path):
    """The README's code, followed line by line, replays the student: it loads the
    ``EDMEulerScheduler`` saved beside the LoRA (it used to say ``LCMScheduler``, which would
    read that config as a beta table, and list the timesteps as ``[]``)."""
    from diffusers import EDMEulerScheduler

    from scoredistill.export_latent import export_plan

    teacher = _teacher(edm_folder)
    add_lora(teacher.model, "student", rank=4, alpha=6.0)
    view = AdapterView(teacher, "student")
    _nudge(view.lora, 0.05)
    gen = DiffusersGenerator(teacher, steps=1, denoiser=view)
    assert export_plan(gen, teacher) == (
        "OUT/lora: a LoRA for the teacher's own pipeline, with EDMEulerScheduler"
    )
    path = export_latent_student(gen, teacher, tmp_path, steps=1, prompt=PROMPTS[0])
    text = (path / "README.md").read_text()
    assert 'pipe.scheduler = EDMEulerScheduler.from_pretrained("PATH/TO/lora/scheduler")' in text
    assert "LCMScheduler" not in text and "[]" not in text
    pipe = _load(edm_folder)
    pipe.load_lora_weights(path)
    pipe.scheduler = EDMEulerScheduler.from_pretrained(path / "scheduler")
    torch.testing.assert_close(_pipeline(pipe, 1), _student(gen), atol=2e-5, rtol=0)


def test_an_edm_student_that_cannot_be_exported_is_named_before_training(edm_folder, tmp_path):
    """EDMEulerScheduler replays one step only: a K = 2 student on an EDM teacher is said to be
    unexportable by ``--dry-run`` and by a warning before the first training step."""
    from scoredistill.export_latent import export_plan

    teacher = _teacher(edm_folder)
    assert export_plan(DiffusersGenerator(teacher, steps=2), teacher).startswith(
        "none: no stock scheduler reproduces this student: EDMEulerScheduler reproduces only K = 1"
    )
    with pytest.warns(UserWarning, match="the student will not be exported: .*K = 2") as caught:
        assert _cli("distill", "dmd2-sd", edm_folder, tmp_path, "--steps", "1",
                    "--set", "student.steps=2") == 0  # fmt: skip
    first = [w for w in caught if "will not be exported" in str(w.message)]
    assert first and "export skipped" not in str(first[0].message)
    assert not (tmp_path / "run" / "pipeline").exists()


def test_dmd2_on_an_edm_sdxl_folder_exports_its_images(edm_folder, tmp_path):
    """End to end on Playground's layout: the exported pipeline redraws the run's latents, and
    its images (decoded with the VAE's statistics) are the run's ``samples.npz`` images."""
    assert _cli("distill", "dmd2-sd", edm_folder, tmp_path, "--steps", "2") == 0
    run = tmp_path / "run"
    pipe = _load(run / "pipeline")
    assert type(pipe.scheduler).__name__ == "EDMEulerScheduler"
    ours, drawn = _redraw(pipe, run, 1)
    torch.testing.assert_close(ours, drawn, atol=1e-4, rtol=0)
    ours, drawn = _redraw(pipe, run, 1, output="pt")
    torch.testing.assert_close(ours, drawn, atol=1e-4, rtol=0)
