"""Text-to-image students against stock diffusers: LoRA views on one base, and the exports.

(a) ``sources.lora``: an adapter leaves the teacher unchanged while off; a view's parameters are
its adapter's only; a frozen view gets no gradient although PEFT switches it on; a deep copy
(the loop's EMA) is a second adapter on the same base with equal outputs. (b) a full student
exported as ``OUT/pipeline`` and a LoRA student as ``OUT/lora`` reproduce the student's latents
through plain ``DiffusionPipeline.from_pretrained`` (+ ``load_lora_weights``) with the same
``torch.Generator`` seed, for K = 1 and 2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

from scoredistill.export_latent import export_latent_student
from scoredistill.sources.diffusers import DiffusersGenerator, make_diffusers_critic
from scoredistill.sources.lora import AdapterView, add_lora
from scoredistill.teachers.diffusers_latent import load_latent_teacher

PROMPTS = ["a handwritten 3", "a bold handwritten 7"]
IDS = torch.tensor([0, 1, 1, 0])


def _teacher(folder):
    teacher = load_latent_teacher(folder)
    teacher.set_prompt_labels(PROMPTS)
    return teacher


def _nudge(params, scale: float, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))


def _student(gen: DiffusersGenerator, seed: int = 0) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    z = gen.sample_latent(len(IDS), rng)
    with torch.no_grad():
        return gen(z, IDS, rng=rng)


def _pipeline_latents(pipe, steps: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    prompts = [PROMPTS[i] for i in IDS.tolist()]
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=1.0, generator=g,
               output_type="latent").images  # fmt: skip
    return out.flatten(1)


def test_adapter_view_shares_the_base_and_keeps_the_teacher(sd_folder):
    teacher = _teacher(sd_folder)
    x, t = torch.randn(4, teacher.dim), torch.full((4,), 0.6, dtype=torch.float64)
    before = teacher.denoise(x, t, IDS)
    add_lora(teacher.model, "critic", rank=4)
    view = AdapterView(teacher, "critic")
    critic = make_diffusers_critic(teacher, denoiser=view)
    n_lora = sum(p.numel() for p in view.lora)
    assert sum(p.numel() for p in critic.parameters()) == n_lora > 0
    assert not any(p.requires_grad for p in teacher.model.parameters() if p not in set(view.lora))
    torch.testing.assert_close(view.denoise(x, t, IDS), before)  # B = 0 at init
    _nudge(view.lora, 0.05)
    assert (view.denoise(x, t, IDS) - before).abs().max() > 1e-4
    torch.testing.assert_close(teacher.denoise(x, t, IDS), before, rtol=0, atol=0)  # off again
    critic.requires_grad_(False)  # as the loop freezes the critic for the generator step
    view.denoise(x, t, IDS).square().sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in view.lora)
    ema = copy.deepcopy(view)
    assert ema.name != view.name and ema.teacher is teacher
    torch.testing.assert_close(ema.denoise(x, t, IDS), view.denoise(x, t, IDS))
    _nudge(view.lora, 0.05, seed=2)
    assert (ema.denoise(x, t, IDS) - view.denoise(x, t, IDS)).abs().max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 2])
def test_full_student_is_a_stock_sd_pipeline(sd_folder, tmp_path, steps):
    from diffusers import DiffusionPipeline

    teacher = _teacher(sd_folder)
    gen = DiffusersGenerator(teacher, steps=steps)
    assert sum(p.numel() for p in gen.parameters()) == sum(
        p.numel() for p in teacher.model.parameters()
    )  # the UNet copy only: VAE and text encoder are shared, frozen
    _nudge(gen.parameters(), 0.01)
    path = export_latent_student(gen, teacher, tmp_path, steps=steps, prompt=PROMPTS[0])
    assert path.name == "pipeline" and (path / "README.md").is_file()
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    torch.testing.assert_close(_pipeline_latents(pipe, steps), _student(gen), atol=2e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 2])
def test_lora_student_loads_into_the_teacher_pipeline(sd_folder, tmp_path, steps):
    from diffusers import DiffusionPipeline, LCMScheduler

    teacher = _teacher(sd_folder)
    add_lora(teacher.model, "student", rank=4, alpha=6.0)  # alpha != rank: metadata matters
    view = AdapterView(teacher, "student")
    _nudge(view.lora, 0.05)
    gen = DiffusersGenerator(teacher, steps=steps, denoiser=view)
    path = export_latent_student(gen, teacher, tmp_path, steps=steps, prompt=PROMPTS[0])
    assert path.name == "lora"
    with safe_open(path / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("unet.") and "base_model" not in k for k in keys)
    pipe = DiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    pipe.load_lora_weights(path)
    pipe.scheduler = LCMScheduler.from_pretrained(path / "scheduler")
    torch.testing.assert_close(_pipeline_latents(pipe, steps), _student(gen), atol=2e-5, rtol=0)


def _tiny_safety_checker():
    """A random ``StableDiffusionSafetyChecker`` (CLIP vision width 16, 32×32 crops) and its
    image processor, saved with the pipeline as SD 1.x folders carry them."""
    import transformers
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    torch.manual_seed(7)
    small = {"hidden_size": 16, "intermediate_size": 37, "num_hidden_layers": 1}
    config = transformers.CLIPConfig(
        text_config={**small, "num_attention_heads": 2, "vocab_size": 514},
        vision_config={**small, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    size = {"shortest_edge": 32}
    processor = transformers.CLIPImageProcessor(size=size, crop_size={"height": 32, "width": 32})
    return StableDiffusionSafetyChecker(config).eval(), processor


def test_a_full_student_keeps_the_teachers_safety_checker(sd_folder, tmp_path):
    """A teacher folder with a safety checker exports a pipeline that runs the same checker
    (its weights, ``requires_safety_checker``); it used to be dropped without a word. Without
    one the export's entries stay null."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    base = DiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    checker, processor = _tiny_safety_checker()
    parts = {**base.components, "safety_checker": checker, "feature_extractor": processor}
    StableDiffusionPipeline(**parts, requires_safety_checker=True).save_pretrained(tmp_path / "t")
    for folder, checked in ((tmp_path / "t", True), (sd_folder, False)):
        teacher = _teacher(folder)
        gen = DiffusersGenerator(teacher, steps=1)
        path = export_latent_student(gen, teacher, tmp_path / folder.name, steps=1, prompt="a 3")
        pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
        assert pipe.config.requires_safety_checker is checked
        assert ("safety checker is kept" in (path / "README.md").read_text()) is checked
        if not checked:
            assert pipe.safety_checker is None and pipe.feature_extractor is None
            continue
        want = checker.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in pipe.safety_checker.state_dict().items())
        pipe.set_progress_bar_config(disable=True)
        out = pipe(PROMPTS, num_inference_steps=1, guidance_scale=1.0, output_type="np")
        assert out.nsfw_content_detected is not None  # the stock pipeline ran the checker


def test_a_second_adapter_on_one_base_adds_no_peft_warning(sd_folder):
    """Student and critic adapters on one frozen base are the design (SwiftBrush): PEFT's
    "Already found a `peft_config`" warning said otherwise on every LoRA run's stderr."""
    import warnings

    teacher = _teacher(sd_folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_lora(teacher.model, "student", rank=4)
        add_lora(teacher.model, "critic", rank=4)
    assert not [w for w in caught if "peft_config" in str(w.message)]
    assert set(teacher.model.peft_config) == {"student", "critic"}
