"""The SDXL latent teacher (``teachers.diffusers_sdxl``) against diffusers' own
``StableDiffusionXLPipeline``: a tiny pipeline with random weights (a ``CLIPTextModel`` and a
``CLIPTextModelWithProjection`` of different widths, offline char-level tokenizers, the SDXL-like
UNet of reference note §2.2, SDXL's ``EulerDiscreteScheduler``) is saved by diffusers and loaded
by ``load_latent_teacher``.

(a) prompt and pooled embeddings equal ``pipe.encode_prompt``'s, and the null row is its
negative embedding: zeros for the empty prompt under ``force_zeros_for_empty_prompt``, the
encoded empty prompt without it, the encoded negative prompt when one is given; (b) ``denoise``
equals the x0 of the UNet called with the pipeline's ``added_cond_kwargs`` (time ids from
``pipe._get_add_time_ids``); (c) ``samplers.ddim`` on the trailing grid equals the pipeline's
DDIM loop (``output_type="latent"``) with and without CFG and a negative prompt; (d) damaged
folders are one ``TeacherFolderError`` line naming the file and key.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from folder_checks import assert_damage_refused  # noqa: E402
from scoredistill.parametrization import NULL_LABEL, guided  # noqa: E402
from scoredistill.samplers import ddim  # noqa: E402
from scoredistill.teachers.diffusers_latent import TextCond, load_latent_teacher  # noqa: E402
from scoredistill.teachers.diffusers_sdxl import SDXLTextEncoder  # noqa: E402
from test_sd3_teacher import _clip, _clip_tokenizer  # noqa: E402

PROMPTS = ["a photo of a cat", "two dogs"]
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SIZE = 8  # pixels: unet sample_size 4 × the VAE's factor 2


def _clip_l(seed: int, width: int):
    """A ``CLIPTextModel`` (no projection: SDXL's first encoder) as ``test_sd3_teacher._clip``."""
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(
        vocab_size=514, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )  # fmt: skip
    return transformers.CLIPTextModel(config).eval()


def _pipe(force_zeros: bool = True) -> StableDiffusionXLPipeline:
    torch.manual_seed(4)  # the SDXL-like UNet of note §2.2 at 4×4 latents; 16 + 8 text widths
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=24,
        attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 12,
        use_linear_projection=True, transformer_layers_per_block=(1, 1),
    ).eval()  # fmt: skip
    torch.manual_seed(5)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.13025,
    ).eval()  # fmt: skip
    sched = EulerDiscreteScheduler(**SD, timestep_spacing="leading", steps_offset=1)  # SDXL's
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=_clip_l(1, 16), text_encoder_2=_clip(2, 8, 12),
        tokenizer=_clip_tokenizer(16), tokenizer_2=_clip_tokenizer(16), unet=unet,
        scheduler=sched, force_zeros_for_empty_prompt=force_zeros, add_watermarker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """``(pipeline, its folder, the teacher loaded from it)``."""
    pipe = _pipe()
    folder = tmp_path_factory.mktemp("sdxl") / "pipe"
    pipe.save_pretrained(folder)
    teacher = load_latent_teacher(folder)
    assert isinstance(teacher.text_encoder, SDXLTextEncoder)
    return pipe, folder, teacher


def _encode(pipe, negative):
    with torch.no_grad():
        return pipe.encode_prompt(PROMPTS, negative_prompt=negative)


def test_prompt_embeddings_and_null_equal_encode_prompt(sdxl, tmp_path):
    pipe, folder, teacher = sdxl
    assert pipe.config.force_zeros_for_empty_prompt  # StableDiffusionXLPipeline's default
    assert teacher.text_encoder.force_zeros_for_empty_prompt
    pe, npe, pooled, npooled = _encode(pipe, None)  # no negative prompt: zeros
    cond = teacher.encode_prompts(PROMPTS)
    assert cond.embeds.shape == (2, 16, 16 + 8) and cond.pooled.shape == (2, 12)
    # the same float32 operations on different batch compositions: a few ulps
    for ours, ref in [(cond.embeds, pe), (cond.pooled, pooled), (cond.null, npe[:1]),
                      (cond.null_pooled, npooled[:1])]:  # fmt: skip
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert not cond.null.any() and not cond.null_pooled.any()
    _, npe, _, npooled = _encode(pipe, "blurry")  # a negative prompt is encoded
    cond = teacher.encode_prompts(PROMPTS, negative_prompt="blurry")
    torch.testing.assert_close(cond.null, npe[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(cond.null_pooled, npooled[:1], rtol=0, atol=1e-6)
    calls = teacher.text_encoder_calls
    again = teacher.encode_prompts(PROMPTS[::-1], negative_prompt="blurry")  # cached
    assert teacher.text_encoder_calls == calls and torch.equal(again.pooled[1], cond.pooled[0])
    shutil.copytree(folder, tmp_path / "pipe")  # force_zeros_for_empty_prompt off: "" encoded
    _edit(tmp_path / "pipe" / "model_index.json", force_zeros_for_empty_prompt=False)
    other = load_latent_teacher(tmp_path / "pipe")
    _, npe, _, npooled = _encode(StableDiffusionXLPipeline.from_pretrained(tmp_path / "pipe"), None)
    cond = other.encode_prompts(PROMPTS)
    torch.testing.assert_close(cond.null, npe[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(cond.null_pooled, npooled[:1], rtol=0, atol=1e-6)
    assert cond.null.abs().max() > 0.1


def test_x0_of_the_unet_with_the_pipelines_added_conditions(sdxl):
    pipe, _, teacher = sdxl
    cond = teacher.encode_prompts(PROMPTS)
    ids = pipe._get_add_time_ids((SIZE, SIZE), (0, 0), (SIZE, SIZE), torch.float32, 12)
    added = {"text_embeds": cond.pooled, "time_ids": ids.repeat(2, 1)}
    assert ids.tolist() == [[8, 8, 0, 0, 8, 8]]
    abar = pipe.scheduler.alphas_cumprod.double()
    rng = torch.Generator().manual_seed(0)
    for k in (999, 500, 21):  # on the table: t = k / 999 is the native time
        z_t = torch.randn(2, 4, 4, 4, generator=rng)
        with torch.no_grad():
            d = teacher.denoise(z_t.flatten(1), torch.full((2,), k / 999), cond)
            eps = pipe.unet(z_t, torch.full((2,), k), encoder_hidden_states=cond.embeds,
                            added_cond_kwargs=added, return_dict=False)[0]  # fmt: skip
        x0 = (z_t - (1 - abar[k]).sqrt().float() * eps) / abar[k].sqrt().float()
        # float32 network and formula; |x0| grows to |z_t| / alpha_999 ~ 15, so 1e-4 absolute
        torch.testing.assert_close(d.reshape(z_t.shape), x0, rtol=1e-4, atol=1e-4)


def test_prompt_ids_and_null_label_are_the_text_rows(sdxl):
    _, _, teacher = sdxl
    table = teacher.set_prompt_labels(PROMPTS)
    rng = torch.Generator().manual_seed(1)
    z_t, t = torch.randn(3, teacher.dim, generator=rng), torch.tensor([0.9, 0.5, 0.2])
    text = TextCond.cat([table[1], table.null_like()[0], table[0]])
    with torch.no_grad():
        by_ids = guided(teacher.denoise, 2.0)(z_t, t, torch.tensor([1, NULL_LABEL, 0]))
        by_text = guided(teacher.denoise, 2.0)(z_t, t, text)
        by_none = teacher.denoise(z_t, t, None)  # cond None: the null row (zeros here)
        by_null = teacher.denoise(z_t, t, torch.full((3,), NULL_LABEL))
    torch.testing.assert_close(by_ids, by_text, rtol=0, atol=1e-6)
    torch.testing.assert_close(by_none, by_null, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("g", "negative"), [(1.0, None), (5.0, None), (5.0, "blurry")])
def test_ddim_sample_equals_the_pipeline(sdxl, g, negative):
    pipe, _, teacher = sdxl
    teacher.set_prompt_labels(PROMPTS, negative_prompt=negative or "")
    ddim_pipe = StableDiffusionXLPipeline(**{**pipe.components, "scheduler": DDIMScheduler(
        **SD, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")})  # fmt: skip
    ddim_pipe.set_progress_bar_config(disable=True)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    # trailing, 4 steps: each step lands on the next timestep (prev = k - 1000 // 4)
    ts = torch.tensor([999, 749, 499, 249], dtype=torch.float64) / 999
    denoise = guided(teacher.denoise, g) if g != 1 else teacher.denoise
    with torch.no_grad():  # the last DDIM step goes to alpha = 1: D(x, ts[-1])
        ours = ddim(denoise, teacher.schedule, z.flatten(1), ts, torch.arange(2))
        ref = ddim_pipe(PROMPTS, negative_prompt=negative, num_inference_steps=4,
                        guidance_scale=g, latents=z, output_type="latent").images  # fmt: skip
    assert ddim_pipe.scheduler.timesteps.tolist() == [999, 749, 499, 249]
    # float32 networks and DDIM arithmetic against float64 times; CFG 5 grows |x| to ~25:
    # measured <= 9e-7 relative with an earlier transformers 5.x; with 5.25 (embeddings equal to 1e-6,
    # test above) up to 2.6e-5 absolute on 4 of 128 entries near zero, ~1e-6 of |x|'s scale:
    # 1e-5 relative plus 1e-4 absolute (4e-6 of the scale)
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=1e-5, atol=1e-4)


# Playground v2.5's VAE: per-channel latent statistics, read by StableDiffusionXLPipeline only
STATS = {"latents_mean": [0.3, -0.2, 0.1, 0.5], "latents_std": [0.8, 1.3, 0.6, 1.1]}


def test_a_vae_with_latent_statistics_maps_latents_as_the_pipeline(tmp_path):
    """``__call__`` decodes ``z · std / scaling_factor + mean`` per channel and the img2img
    pipeline's ``prepare_latents`` encodes ``(E(x) − mean) · scaling_factor / std``: the teacher's
    ``decode`` / ``encode`` equal both (a folder with the statistics was refused before)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = _pipe()
    pipe.vae.register_to_config(**STATS)
    pipe.save_pretrained(tmp_path / "pipe")
    teacher = load_latent_teacher(tmp_path / "pipe")
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    call = {"num_inference_steps": 2, "guidance_scale": 1.0}
    with torch.no_grad():
        lat = pipe(PROMPTS, latents=z, output_type="latent", **call).images
        img = pipe(PROMPTS, latents=z, output_type="pt", **call).images  # (2, 3, 8, 8) in [0, 1]
        ours = (teacher.decode(lat.flatten(1)) + 1) / 2
        plain = (pipe.vae.decode(lat / 0.13025).sample.clamp(-1, 1) + 1) / 2  # ignoring them
    torch.testing.assert_close(ours, img, atol=1e-5, rtol=0)
    assert (plain - img).abs().max() > 0.05  # the statistics matter on this VAE
    x = ours * 2 - 1
    img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    with torch.no_grad():
        want = img2img.prepare_latents(x, None, 2, 1, torch.float32, "cpu",
                                       generator=torch.Generator().manual_seed(7), add_noise=False)  # fmt: skip
        got = teacher.encode(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, want.flatten(1), atol=1e-5, rtol=1e-5)


# --- folders -------------------------------------------------------------------------------


def _edit(path, **updates):
    cfg = json.loads(path.read_text())
    cfg.update(updates)
    path.write_text(json.dumps(cfg))


DAMAGE = {  # name: (change, a regex the message must match)
    "projection width": (
        lambda d: _edit(d / "unet" / "config.json", projection_class_embeddings_input_dim=56),
        r"unet/config.json: projection_class_embeddings_input_dim=56 but 6 \* "
        r"addition_time_embed_dim \(8\) \+ text_encoder_2 projection_dim \(12\) = 60",
    ),
    "cross attention width": (
        lambda d: _edit(d / "unet" / "config.json", cross_attention_dim=32),
        r"unet/config.json: cross_attention_dim=32 but the text encoders' hidden sizes sum to "
        r"24 \(16 \+ 8\)",
    ),
    "no added conditions": (
        lambda d: _edit(d / "unet" / "config.json", addition_embed_type=None),
        r"unet/config.json: addition_embed_type=None; valid in an SDXL folder: 'text_time'",
    ),
    "refiner layout": (
        lambda d: _edit(d / "model_index.json", text_encoder=[None, None], tokenizer=[None, None]),
        r"model_index.json: text_encoder is null \(an SDXL refiner layout\)",
    ),
    "aesthetic score": (
        lambda d: _edit(d / "model_index.json", requires_aesthetics_score=True),
        r"model_index.json: requires_aesthetics_score=true .* not supported yet",
    ),
    "latent statistics of 3 channels": (
        lambda d: _edit(d / "vae" / "config.json", latents_mean=[0.0] * 3, latents_std=[1.0] * 3),
        r"vae/config.json: latents_mean has 3 values .* reads exactly 4",
    ),
    "latents_std not positive": (
        lambda d: _edit(
            d / "vae" / "config.json", latents_mean=[0.0] * 4, latents_std=[1, 0, 1, 1]
        ),
        r"vae/config.json: latents_std=\[1, 0, 1, 1\] must be positive",
    ),
    "guidance-embedding unet": (  # SDXL-LCM: the pipeline passes timestep_cond (sweep 4)
        lambda d: _edit(d / "unet" / "config.json", time_cond_proj_dim=32),
        r"unet/config.json: time_cond_proj_dim=32: a guidance-embedding UNet .*valid: null",
    ),
    "no tokenizer_2 folder": (
        lambda d: shutil.rmtree(d / "tokenizer_2"),
        r"pipe/tokenizer_2: no such folder",
    ),
    "latent channels": (
        lambda d: _edit(d / "vae" / "config.json", latent_channels=8),
        r"vae/config.json: latent_channels=8 but unet/config.json has in_channels=4",
    ),
    "no weights": (
        lambda d: [p.unlink() for p in (d / "unet").glob("*.safetensors")],
        r"pipe/unet: cannot load UNet2DConditionModel",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_folders_name_the_file_and_key(sdxl, tmp_path, name):
    assert_damage_refused(sdxl[1], tmp_path, *DAMAGE[name])
