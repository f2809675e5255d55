"""A training ``resolution`` other than the teacher folder's own size (``teachers.diffusers_size``).

Tiny pipelines with random weights (SD 1.5 layout built here; SDXL, SD3 and Flux from their
teacher tests), saved by diffusers, whose own size is 8 px (latents 4×4), loaded at 16 px:
(a) the latent is ``(C, 16/f, 16/f)`` and the teacher's sampler equals the pipeline's own loop
called with ``height = width = 16`` (DDIM on SD / SDXL, so SDXL's time ids are
``_get_add_time_ids`` at 16; Euler on SD3 and Flux, Flux's ``mu`` ``calculate_shift`` of 16
tokens); (b) sizes the pipeline refuses are one ``ConfigError`` naming ``resolution``, before
any weights load, and the CLI exits 2 with that line; (c) ``resolution = 0`` keeps the folder's
size; (d) an exported full student generates at the trained size by default, a LoRA's README
says which ``height``/``width`` to pass, and both reproduce the student's latents.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # noqa: E402

from flux_helpers import T5_LENGTH, clip_text_model, flux_pipe  # noqa: E402
from scoredistill.cli import main  # noqa: E402
from scoredistill.config import ConfigError  # noqa: E402
from scoredistill.export_latent import export_latent_student  # noqa: E402
from scoredistill.parametrization import guided  # noqa: E402
from scoredistill.samplers import ddim  # noqa: E402
from scoredistill.sources.diffusers import DiffusersGenerator  # noqa: E402
from scoredistill.sources.lora import AdapterView, add_lora  # noqa: E402
from scoredistill.teachers.diffusers_flux import pack, pipeline_times, unpack  # noqa: E402
from scoredistill.teachers.diffusers_latent import load_latent_teacher  # noqa: E402
from scoredistill.teachers.diffusers_sd3 import pipeline_times as sd3_times  # noqa: E402
from scoredistill.teachers.diffusers_size import ResolutionError  # noqa: E402
from test_sd3_teacher import _clip_tokenizer  # noqa: E402
from test_sd3_teacher import _pipe as sd3_pipe  # noqa: E402
from test_sdxl_teacher import _pipe as sdxl_pipe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a photo of a cat", "two dogs"]
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
OWN, RES, LATENT = 8, 16, 8  # the folders' own size (px), the training size, its latent side
TRAILING = torch.tensor([999, 749, 499, 249], dtype=torch.float64) / 999  # DDIM, 4 steps


def _ddim_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        **SD, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing"
    )


def _sd_pipe() -> StableDiffusionPipeline:
    """A tiny ``StableDiffusionPipeline``: 4×4-latent UNet, a 2× VAE of size 8, CLIP of width 16."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        layers_per_block=1, norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D",
        "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8,
    ).eval()  # fmt: skip
    torch.manual_seed(5)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.18215, sample_size=OWN,
    ).eval()  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=clip_text_model(), tokenizer=_clip_tokenizer(16), unet=unet,
        scheduler=_ddim_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """``(pipeline, its folder)`` of the SD 1.5 layout."""
    pipe = _sd_pipe()
    folder = tmp_path_factory.mktemp("sd") / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


def _save(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def _latents(seed: int = 2) -> torch.Tensor:
    return torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("g", [1.0, 5.0])
def test_sd_ddim_at_16px_equals_the_pipeline(sd, g):
    pipe, folder = sd
    teacher = load_latent_teacher(folder, resolution=RES)
    assert teacher.shape == (4, LATENT, LATENT) and teacher.image_shape == (3, RES, RES)
    teacher.set_prompt_labels(PROMPTS)
    z = _latents()
    denoise = guided(teacher.denoise, g) if g != 1 else teacher.denoise
    with torch.no_grad():  # the last DDIM step goes to alpha = 1: D(x, ts[-1])
        ours = ddim(denoise, teacher.schedule, z.flatten(1), TRAILING, torch.arange(2))
        ref = pipe(PROMPTS, num_inference_steps=4, guidance_scale=g, latents=z, height=RES,
                   width=RES, output_type="latent").images  # fmt: skip
    # float32 networks and DDIM arithmetic against float64 times, as test_sdxl_teacher
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)


def test_sdxl_ddim_at_16px_uses_the_pipelines_time_ids(tmp_path):
    pipe = sdxl_pipe()
    teacher = load_latent_teacher(_save(pipe, tmp_path), resolution=RES)
    assert teacher.shape == (4, LATENT, LATENT) and teacher.image_shape == (3, RES, RES)
    teacher.set_prompt_labels(PROMPTS)
    cond = teacher.encode_prompts(PROMPTS)
    ids = pipe._get_add_time_ids((RES, RES), (0, 0), (RES, RES), torch.float32, 12)
    assert ids.tolist() == [[16, 16, 0, 0, 16, 16]]
    kwargs = teacher.network_condition(cond, 2, torch.device("cpu"))["added_cond_kwargs"]
    assert torch.equal(kwargs["time_ids"], ids.repeat(2, 1))
    ddim_pipe = StableDiffusionXLPipeline(**{**pipe.components, "scheduler": _ddim_scheduler()})
    ddim_pipe.set_progress_bar_config(disable=True)
    z = _latents()
    with torch.no_grad():
        ours = ddim(guided(teacher.denoise, 5.0), teacher.schedule, z.flatten(1), TRAILING,
                    torch.arange(2))  # fmt: skip
        ref = ddim_pipe(PROMPTS, num_inference_steps=4, guidance_scale=5.0, latents=z,
                        height=RES, width=RES, output_type="latent").images  # fmt: skip
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)


def test_sd3_euler_at_16px_equals_the_pipeline(tmp_path):
    pipe = sd3_pipe(False)
    folder = _save(pipe, tmp_path)
    teacher = load_latent_teacher(folder, resolution=RES)
    assert teacher.shape == (4, LATENT, LATENT) and teacher.image_shape == (3, RES, RES)
    teacher.set_prompt_labels(PROMPTS)
    z = _latents()
    with torch.no_grad():
        ours = ddim(teacher.denoise, teacher.schedule, z.flatten(1), sd3_times(teacher.scheduler, 4),
                    torch.arange(2))  # fmt: skip
        ref = pipe(PROMPTS, num_inference_steps=4, guidance_scale=1.0, latents=z,
                   output_type="latent", height=RES, width=RES).images  # fmt: skip
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=0, atol=2e-5)  # as test_sd3
    # f = 2, patch_size 2, pos_embed_max_size 8: multiples of 4 up to 8 · 2 · 2 = 32 px
    for bad, why in [(18, "not a positive multiple of 4"), (36, "larger than .* = 32")]:
        with pytest.raises(ResolutionError, match=rf"config key 'resolution': {bad} is {why}"):
            load_latent_teacher(folder, resolution=bad)


def test_flux_euler_at_16px_uses_the_pipelines_mu(tmp_path):
    pipe = flux_pipe(True)
    teacher = load_latent_teacher(_save(pipe, tmp_path), resolution=RES)
    mu = calculate_shift((LATENT // 2) ** 2, 256, 4096, 0.5, 1.15)  # 16 packed tokens
    assert teacher.shape == (4, LATENT, LATENT) and teacher.image_shape == (3, RES, RES)
    assert teacher.model.mu == pytest.approx(mu, rel=1e-12)
    assert teacher.schedule.shift == pytest.approx(math.exp(mu), rel=1e-12)
    teacher.set_prompt_labels(PROMPTS)
    z = _latents()
    with torch.no_grad():
        ours = ddim(teacher.denoise, teacher.schedule, z.flatten(1), pipeline_times(4),
                    torch.arange(2))  # fmt: skip
        out = pipe(PROMPTS, num_inference_steps=4, latents=pack(z), output_type="latent",
                   height=RES, width=RES, max_sequence_length=T5_LENGTH).images  # fmt: skip
    ref = unpack(out, LATENT, LATENT)
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=0, atol=2e-5)  # as test_flux
    with pytest.raises(ResolutionError, match=r"'resolution': 18 .* multiple of 4 .* 2x2 packing"):
        load_latent_teacher(tmp_path / "pipe", resolution=18)
    own = load_latent_teacher(tmp_path / "pipe")  # 0: the VAE's 8 px, 4 tokens
    assert own.shape == (4, 4, 4) and own.image_shape == (3, OWN, OWN)
    assert own.model.mu == pytest.approx(calculate_shift(4, 256, 4096, 0.5, 1.15), rel=1e-12)


def test_zero_keeps_the_folder_size_and_bad_sizes_fail_before_weights(sd, tmp_path):
    _, folder = sd
    own = load_latent_teacher(folder, resolution=0)
    assert own.shape == (4, 4, 4) and own.image_shape == (3, OWN, OWN)
    shutil.copytree(folder, tmp_path / "pipe")  # no UNet weights: any load would fail
    for p in (tmp_path / "pipe" / "unet").glob("*.safetensors"):
        p.unlink()
    # f = 2 but StableDiffusionPipeline.check_inputs asks height % 8 == 0
    for bad in (12, -8):
        with pytest.raises(ResolutionError, match=f"'resolution': {bad} is not a positive "
                           "multiple of 8") as err:  # fmt: skip
            load_latent_teacher(tmp_path / "pipe", resolution=bad)
        assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)


def _cli(folder, prompts, out, *sets):
    args = ["distill", "--preset", "dmd2-sd", "--teacher", str(folder), "--prompts", prompts,
            "--out", str(out), "--dry-run"]  # fmt: skip
    return main([*args, *(a for s in sets for a in ("--set", s))])


@pytest.mark.parametrize(("value", "needle"), [("12", "multiple of 8"), ("-16", ">= 0")])
def test_cli_refuses_a_bad_resolution_in_one_line(sd, prompts, tmp_path, capsys, value, needle):
    assert _cli(sd[1], prompts, tmp_path / "o", f"resolution={value}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resolution" in err[0] and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_cli_dry_run_at_a_resolution(sd, prompts, tmp_path, capsys):
    assert _cli(sd[1], prompts, tmp_path / "o", f"resolution={RES}") == 0
    assert json.loads(capsys.readouterr().out)["networks"]["trainable_params"]["student"] > 0


def _student(gen: DiffusersGenerator) -> torch.Tensor:
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return gen(gen.sample_latent(2, rng), torch.arange(2), rng=rng)


def _pipeline_latents(pipe, **size) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    out = pipe(PROMPTS, num_inference_steps=1, guidance_scale=1.0, generator=g,
               output_type="latent", **size).images  # fmt: skip
    return out.flatten(1)


def test_full_student_generates_at_the_trained_size_by_default(sd, tmp_path):
    teacher = load_latent_teacher(sd[1], resolution=RES)
    teacher.set_prompt_labels(PROMPTS)
    gen = DiffusersGenerator(teacher, steps=1)
    path = export_latent_student(gen, teacher, tmp_path, steps=1, prompt=PROMPTS[0])
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.sample_size == LATENT and teacher.model.config.sample_size == 4
    assert "default height and width are 16x16" in (path / "README.md").read_text()
    z = _pipeline_latents(pipe)  # no height/width: unet.sample_size · vae_scale_factor
    assert z.shape == (2, 4 * LATENT * LATENT)
    torch.testing.assert_close(z, _student(gen), rtol=0, atol=2e-5)  # as test_sd_export


def test_lora_readme_passes_the_trained_size(sd, tmp_path):
    teacher = load_latent_teacher(sd[1], resolution=RES)
    teacher.set_prompt_labels(PROMPTS)
    add_lora(teacher.model, "student", rank=4)
    view = AdapterView(teacher, "student")
    with torch.no_grad():  # B = 0 at init: a nudge makes the adapter matter
        for i, p in enumerate(view.lora):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    gen = DiffusersGenerator(teacher, steps=1, denoiser=view)
    path = export_latent_student(gen, teacher, tmp_path, steps=1, prompt=PROMPTS[0])
    text = (path / "README.md").read_text()
    assert "pass `height=16, width=16`" in text
    assert "num_inference_steps=1, height=16, width=16, guidance_scale" in text  # the code too
    pipe = DiffusionPipeline.from_pretrained(sd[1], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(path)
    pipe.scheduler = LCMScheduler.from_pretrained(path / "scheduler")
    z = _pipeline_latents(pipe, height=RES, width=RES)
    torch.testing.assert_close(z, _student(gen), rtol=0, atol=2e-5)


def test_sdxl_and_sd3_lora_readmes_put_the_trained_size_in_the_call():
    """The call a user copies from a LoRA README generates at the trained size (a LoRA cannot
    change the base pipeline's default); ``size`` is ``export_folder.size_kwargs``'s text."""
    from types import SimpleNamespace

    from scoredistill.export_sd3 import readme as sd3_readme
    from scoredistill.export_sdxl import readme as sdxl_readme

    gen, size = SimpleNamespace(nfe=1, timesteps=[999]), "height=16, width=16, "
    call = "num_inference_steps=1, height=16, width=16, guidance_scale"
    lcm = LCMScheduler()
    lcm.set_timesteps(1)
    xl = sdxl_readme(gen, lcm, "a cat", True, None, size)
    assert call in xl and "Micro-conditioning as trained: the height and width above" in xl
    assert "height=" not in sdxl_readme(gen, lcm, "a cat", True, None, "")
    sched = SimpleNamespace(sigmas=torch.tensor([1.0, 0.0]))
    assert call in sd3_readme(gen, sched, "a cat", True, True, size=size)
