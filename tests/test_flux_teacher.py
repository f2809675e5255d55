"""The Flux latent teacher (``teachers.diffusers_flux``) against diffusers' own ``FluxPipeline``:
a tiny pipeline with random weights (``flux_helpers``), with and without the guidance
embedding, is saved by diffusers and loaded by ``load_latent_teacher``.

(a) prompt and pooled embeddings equal ``pipe.encode_prompt``'s; (b) ``denoise`` equals ``z - s·v``
from the transformer called as the pipeline calls it (packed tokens, ``timestep / 1000``,
``guidance``, ids); (c) ``flux_mu`` is ``calculate_shift`` and ``ShiftedFlowSchedule(e^mu)`` gives
``set_timesteps(n, mu=mu)``'s sigmas (the scheduler's grid and the pipeline's ``sigmas=``
grid); (d) ``samplers.ddim`` on ``pipeline_times`` equals the pipeline's Euler loop
(``output_type="latent"``, unpacked), plain and with true CFG on the empty prompt, and the
decoded images equal the pipeline's; (e) damaged folders are one ``TeacherFolderError`` line.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

pytest.importorskip("transformers")
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from flux_helpers import LATENT, PROMPTS, SCHEDULER, SIZE, T5_LENGTH, flux_pipe
from folder_checks import assert_damage_refused
from scoredistill.parametrization import guided
from scoredistill.samplers import ddim
from scoredistill.teachers.diffusers_flux import (
    FluxNetwork,
    FluxTextEncoder,
    flux_mu,
    pack,
    pipeline_times,
    unpack,
)
from scoredistill.teachers.diffusers_latent import load_latent_teacher
from scoredistill.teachers.diffusers_schedules import ShiftedFlowSchedule

MU = calculate_shift((LATENT // 2) ** 2, 256, 4096, 0.5, 1.15)  # the pipeline's, 4 tokens


@pytest.fixture(scope="module", params=[True, False], ids=["guidance-embeds", "plain"])
def flux(request, tmp_path_factory):
    """``(pipeline, its folder, the teacher loaded from it)``."""
    pipe = flux_pipe(request.param)
    folder = tmp_path_factory.mktemp("flux") / "pipe"
    pipe.save_pretrained(folder)
    teacher = load_latent_teacher(folder)
    assert isinstance(teacher.text_encoder, FluxTextEncoder)
    assert isinstance(teacher.model, FluxNetwork)
    assert teacher.model.guidance_embeds == request.param
    return pipe, folder, teacher


def _call(pipe, z, steps, **kwargs):
    """The pipeline's latents for initial latents ``z: (B, C, h, w)``, unpacked."""
    out = pipe(PROMPTS, num_inference_steps=steps, latents=pack(z), output_type="latent",
               height=SIZE, width=SIZE, max_sequence_length=T5_LENGTH, **kwargs).images  # fmt: skip
    return unpack(out, LATENT, LATENT)


def test_prompt_embeddings_equal_encode_prompt(flux):
    pipe, _, teacher = flux
    cond = teacher.encode_prompts(PROMPTS)
    with torch.no_grad():
        pe, pooled, text_ids = pipe.encode_prompt(PROMPTS, None, max_sequence_length=T5_LENGTH)
        npe, npooled, _ = pipe.encode_prompt([""], None, max_sequence_length=T5_LENGTH)
    assert cond.embeds.shape == (2, T5_LENGTH, 32) and cond.pooled.shape == (2, 16)
    assert torch.equal(text_ids, torch.zeros(T5_LENGTH, 3))  # what FluxNetwork passes
    # the same float32 operations on different batch compositions: a few ulps
    for ours, ref in [(cond.embeds, pe), (cond.pooled, pooled), (cond.null, npe),
                      (cond.null_pooled, npooled)]:  # fmt: skip
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_x0_is_z_minus_s_v_of_the_packed_transformer(flux):
    pipe, _, teacher = flux
    cond = teacher.encode_prompts(PROMPTS)
    rng = torch.Generator().manual_seed(0)
    k = math.exp(MU)
    for t in (1.0, 0.8, 0.35, 0.01):
        z_t = torch.randn(2, 4, LATENT, LATENT, generator=rng)
        s = k * t / (1 + (k - 1) * t)  # time_shift(mu, 1, t)
        guidance = torch.full((2,), 3.5) if teacher.model.guidance_embeds else None
        ids = pipe._prepare_latent_image_ids(2, LATENT // 2, LATENT // 2, "cpu", torch.float32)
        with torch.no_grad():
            d = teacher.denoise(z_t.flatten(1), torch.full((2,), t), cond).reshape(z_t.shape)
            v = pipe.transformer(hidden_states=pack(z_t), timestep=torch.full((2,), s),
                                 guidance=guidance, pooled_projections=cond.pooled,
                                 encoder_hidden_states=cond.embeds,
                                 txt_ids=torch.zeros(T5_LENGTH, 3), img_ids=ids,
                                 return_dict=False)[0]  # fmt: skip
        # float32; s·1000/1000 vs s: rounding of the timestep only
        torch.testing.assert_close(d, z_t - s * unpack(v, LATENT, LATENT), rtol=0, atol=1e-5)


def test_pack_and_unpack_are_the_pipelines():
    from diffusers import FluxPipeline

    z = torch.randn(3, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    packed = FluxPipeline._pack_latents(z, 3, 4, 6, 8)
    assert torch.equal(pack(z), packed)
    assert torch.equal(unpack(packed, 6, 8), FluxPipeline._unpack_latents(packed, 12, 16, 2))


@pytest.mark.parametrize("seq_len", [4, 256, 1024, 4096])
def test_mu_is_calculate_shift(seq_len):
    assert flux_mu(SCHEDULER, seq_len) == pytest.approx(
        calculate_shift(seq_len, 256, 4096, 0.5, 1.15), rel=1e-12
    )


@pytest.mark.parametrize("steps", [1, 2, 4, 28])
def test_exp_mu_shift_gives_set_timesteps_sigmas(steps):
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    flow = ShiftedFlowSchedule(math.exp(MU))
    # the pipeline's grid: sigmas = linspace(1, 1/n, n) passed with mu
    scheduler.set_timesteps(steps, sigmas=torch.linspace(1, 1 / steps, steps).tolist(), mu=MU)
    _, s = flow.alpha_sigma(pipeline_times(steps))
    torch.testing.assert_close(s, scheduler.sigmas[:-1].double(), rtol=1e-6, atol=0)  # float32
    # the scheduler's own grid: linspace over its unshifted table, then time_shift(mu)
    scheduler.set_timesteps(steps, mu=MU)
    t = torch.linspace(1.0, 1 / 1000, steps, dtype=torch.float64)
    torch.testing.assert_close(flow.alpha_sigma(t)[1], scheduler.sigmas[:-1].double(),
                               rtol=1e-6, atol=0)  # fmt: skip


def test_teacher_schedule_is_the_shift_at_its_size(flux):
    _, _, teacher = flux
    assert teacher.schedule is teacher.native_schedule
    assert teacher.schedule.shift == pytest.approx(math.exp(MU), rel=1e-12)
    assert teacher.model.mu == pytest.approx(MU, rel=1e-12)
    assert teacher.shape == (4, LATENT, LATENT) and teacher.image_shape == (3, SIZE, SIZE)


@pytest.mark.parametrize("g", [1.0, 3.0])
def test_euler_sample_equals_the_pipeline(flux, g):
    pipe, _, teacher = flux
    teacher.set_prompt_labels(PROMPTS)  # null: the empty prompt, encoded (true CFG's)
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(2))
    ts = pipeline_times(4)
    denoise = guided(teacher.denoise, g) if g != 1 else teacher.denoise
    cfg = {} if g == 1 else {"negative_prompt": "", "true_cfg_scale": g}
    with torch.no_grad():  # ddim ends with D(x, ts[-1]): the pipeline's step to sigma = 0
        ours = ddim(denoise, teacher.schedule, z.flatten(1), ts, torch.arange(2))
        ref = _call(pipe, z, 4, **cfg)
    # float32 networks, times in float64 here and float32 in diffusers: as test_sd3_teacher
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=0, atol=2e-5)
    if g == 1.0:  # decode with scaling_factor and shift_factor: the pipeline's images
        with torch.no_grad():
            img = pipe(PROMPTS, num_inference_steps=4, latents=pack(z), output_type="pt",
                       height=SIZE, width=SIZE, max_sequence_length=T5_LENGTH).images  # fmt: skip
            torch.testing.assert_close((teacher.decode(ours) + 1) / 2, img, rtol=0, atol=2e-5)
            x = 2 * img - 1
            want = (pipe.vae.encode(x).latent_dist.mean - 0.1) * 1.5
        torch.testing.assert_close(teacher.encode(x), want.flatten(1), rtol=0, atol=1e-6)


def test_embedded_guidance_is_the_pipelines_guidance_scale(flux):
    pipe, _, teacher = flux
    teacher.set_prompt_labels(PROMPTS)
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(3))
    teacher.model.guidance = 5.0
    try:
        with torch.no_grad():
            ours = ddim(teacher.denoise, teacher.schedule, z.flatten(1), pipeline_times(2),
                        torch.arange(2))  # fmt: skip
            ref = _call(pipe, z, 2, guidance_scale=5.0)
            default = _call(pipe, z, 2)  # guidance_scale 3.5
    finally:
        teacher.model.guidance = 3.5
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=0, atol=2e-5)
    changed = (ref - default).abs().max() > 1e-4  # ignored without the embedding
    assert changed == teacher.model.guidance_embeds


# --- folders -------------------------------------------------------------------------------


def _edit(path, **updates):
    cfg = json.loads(path.read_text())
    cfg.update(updates)
    path.write_text(json.dumps(cfg))


SCHED = ("scheduler", "scheduler_config.json")
DAMAGE = {  # name: (change, a regex the message must match)
    "linear time shift": (
        lambda d: _edit(d.joinpath(*SCHED), time_shift_type="linear"),
        r"scheduler_config.json: time_shift_type 'linear' is not supported; valid: 'exponential'",
    ),
    "karras sigmas": (
        lambda d: _edit(d.joinpath(*SCHED), use_karras_sigmas=True),
        r"scheduler_config.json: use_karras_sigmas=True: grid not reproduced",
    ),
    "shift terminal": (
        lambda d: _edit(d.joinpath(*SCHED), shift_terminal=0.1),
        r"scheduler_config.json: shift_terminal=0.1: grid not reproduced",
    ),
    "joint width": (
        lambda d: _edit(d / "transformer" / "config.json", joint_attention_dim=24),
        r"transformer/config.json: joint_attention_dim=24 but text_encoder_2 \(T5\) has "
        r"d_model=32",
    ),
    "pooled width": (
        lambda d: _edit(d / "transformer" / "config.json", pooled_projection_dim=20),
        r"transformer/config.json: pooled_projection_dim=20 but text_encoder \(CLIP\) has "
        r"hidden_size=16",
    ),
    "in channels": (
        lambda d: _edit(d / "vae" / "config.json", latent_channels=16),
        r"transformer/config.json: in_channels=16 but vae/config.json has latent_channels=16; "
        r"valid: 4 · latent_channels",
    ),
    "odd size": (
        lambda d: _edit(d / "vae" / "config.json", sample_size=6),
        r"vae/config.json: sample_size=6 .* valid a multiple of 4",
    ),
    "fill pipeline": (
        lambda d: _edit(d / "model_index.json", _class_name="FluxFillPipeline"),
        r"model_index.json: _class_name 'FluxFillPipeline' is not supported; valid: FluxPipeline",
    ),
    "sd3 transformer": (
        lambda d: _edit(d / "transformer" / "config.json", _class_name="SD3Transformer2DModel"),
        r"transformer/config.json: _class_name 'SD3Transformer2DModel' is not supported; "
        r"valid: FluxTransformer2DModel",
    ),
    "no tokenizer_2 folder": (
        lambda d: shutil.rmtree(d / "tokenizer_2"),
        r"pipe/tokenizer_2: no such folder",
    ),
    "no weights": (
        lambda d: [p.unlink() for p in (d / "transformer").glob("*.safetensors")],
        r"pipe/transformer: cannot load FluxTransformer2DModel",
    ),
}


@pytest.mark.parametrize("flux", [True], indirect=True, ids=["guidance-embeds"])
@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_folders_name_the_file_and_key(flux, tmp_path, name):
    assert_damage_refused(flux[1], tmp_path, *DAMAGE[name])
