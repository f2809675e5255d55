"""The SD3 latent teacher (``teachers.diffusers_sd3``) against diffusers' own
``StableDiffusion3Pipeline``: a tiny pipeline with random weights (CLIP-L and CLIP-G of
different widths and projections, a T5 with an offline Unigram tokenizer, or ``text_encoder_3 =
None``) is saved by diffusers and loaded by ``load_latent_teacher``.

(a) prompt and pooled embeddings equal ``pipe.encode_prompt``'s; (b) ``denoise`` equals
``z - s·v`` from the transformer called as the pipeline calls it; (c) ``samplers.ddim`` on
``pipeline_times`` equals the pipeline's Euler loop (``output_type="latent"``) with and without
CFG and a negative prompt, and the decoded images equal the pipeline's; (d) the static shift
gives ``set_timesteps(n).sigmas``; (e) damaged folders are one ``TeacherFolderError`` line.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

from folder_checks import assert_damage_refused  # noqa: E402
from scoredistill.parametrization import NULL_LABEL, guided  # noqa: E402
from scoredistill.samplers import ddim  # noqa: E402
from scoredistill.teachers.diffusers_latent import TextCond, load_latent_teacher  # noqa: E402
from scoredistill.teachers.diffusers_schedules import ShiftedFlowSchedule  # noqa: E402
from scoredistill.teachers.diffusers_sd3 import SD3TextEncoder, pipeline_times  # noqa: E402

PROMPTS = ["a photo of a cat", "two dogs"]
SHIFT = 3.0  # SD3's scheduler shift


def _clip_tokenizer(length: int):
    """Char-level CLIP vocabulary (reference note §3, recipe 1), no merges: offline."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    symbols = sorted(ByteLevel.alphabet())
    vocab.update((s, i + 2) for i, s in enumerate(symbols))
    vocab.update((s + "</w>", i + 2 + len(symbols)) for i, s in enumerate(symbols))
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=length)


def _clip(seed: int, width: int, projection: int):
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(
        vocab_size=514, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, projection_dim=projection,
    )  # fmt: skip
    return transformers.CLIPTextModelWithProjection(config).eval()


def _t5():
    """Unigram T5 tokenizer (note §3, recipe 3) and a one-layer encoder of width 32."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    tokenizer = transformers.T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=16)
    torch.manual_seed(3)
    config = transformers.T5Config(
        vocab_size=len(pieces), d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )  # fmt: skip
    return transformers.T5EncoderModel(config).eval(), tokenizer


def _pipe(t5: bool) -> StableDiffusion3Pipeline:
    torch.manual_seed(4)  # the tiny SD3 of note §2.2 at 4×4 latents
    transformer = SD3Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
        caption_projection_dim=16, pooled_projection_dim=24, pos_embed_max_size=8,
    ).eval()  # fmt: skip
    torch.manual_seed(5)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=1.5, shift_factor=0.1,
    ).eval()  # fmt: skip
    encoder_3, tokenizer_3 = _t5() if t5 else (None, None)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT),
        vae=vae, text_encoder=_clip(1, 16, 10), tokenizer=_clip_tokenizer(16),
        text_encoder_2=_clip(2, 8, 14), tokenizer_2=_clip_tokenizer(12),  # the pipeline pads
        text_encoder_3=encoder_3, tokenizer_3=tokenizer_3,  # both CLIPs to tokenizer's 16
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=[True, False], ids=["t5", "no-t5"])
def sd3(request, tmp_path_factory):
    """``(pipeline, its folder, the teacher loaded from it)``."""
    pipe = _pipe(request.param)
    folder = tmp_path_factory.mktemp("sd3") / "pipe"
    pipe.save_pretrained(folder)
    teacher = load_latent_teacher(folder)
    text = teacher.text_encoder
    assert isinstance(text, SD3TextEncoder) and text.has_t5 == request.param
    return pipe, folder, teacher


def test_prompt_embeddings_equal_encode_prompt(sd3):
    pipe, _, teacher = sd3
    cond = teacher.encode_prompts(PROMPTS, negative_prompt="blurry")
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, None, None, negative_prompt="blurry")
    assert cond.embeds.shape == (2, 16 + 256, 32) and cond.pooled.shape == (2, 10 + 14)
    # the same float32 operations on different batch compositions: a few ulps
    for ours, ref in [(cond.embeds, pe), (cond.pooled, pooled), (cond.null, npe[:1]),
                      (cond.null_pooled, npooled[:1])]:  # fmt: skip
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    calls = teacher.text_encoder_calls
    again = teacher.encode_prompts(PROMPTS[::-1], negative_prompt="blurry")  # cached: no forward
    assert teacher.text_encoder_calls == calls and torch.equal(again.pooled[1], cond.pooled[0])


def test_x0_is_z_minus_s_v_of_the_transformer(sd3):
    pipe, _, teacher = sd3
    cond = teacher.encode_prompts(PROMPTS)
    rng = torch.Generator().manual_seed(0)
    for t in (1.0, 0.8, 0.35, 0.01):  # t = 1: pure noise, s = 1 (the pipeline's first step)
        z_t = torch.randn(2, 4, 4, 4, generator=rng)
        s = float(ShiftedFlowSchedule(SHIFT).alpha_sigma(torch.tensor(t, dtype=torch.float64))[1])
        with torch.no_grad():
            d = teacher.denoise(z_t.flatten(1), torch.full((2,), t), cond).reshape(z_t.shape)
            v = pipe.transformer(hidden_states=z_t, timestep=torch.full((2,), s * 1000),
                                 encoder_hidden_states=cond.embeds,
                                 pooled_projections=cond.pooled, return_dict=False)[0]  # fmt: skip
        torch.testing.assert_close(d, z_t - s * v, rtol=0, atol=1e-5)  # float32, |v| ~ 1


def test_prompt_ids_and_null_label_are_the_text_rows(sd3):
    _, _, teacher = sd3
    table = teacher.set_prompt_labels(PROMPTS, negative_prompt="blurry")
    rng = torch.Generator().manual_seed(1)
    z_t, t = torch.randn(3, teacher.dim, generator=rng), torch.tensor([0.9, 0.5, 0.2])
    text = TextCond.cat([table[1], table.null_like()[0], table[0]])
    with torch.no_grad():
        by_ids = guided(teacher.denoise, 2.0)(z_t, t, torch.tensor([1, NULL_LABEL, 0]))
        by_text = guided(teacher.denoise, 2.0)(z_t, t, text)
    torch.testing.assert_close(by_ids, by_text, rtol=0, atol=1e-6)
    dropped = table.with_null_rows(torch.tensor([True, False]))
    assert torch.equal(dropped.pooled[0], table.null_pooled[0])
    assert torch.equal(dropped.pooled[1], table.pooled[1])


@pytest.mark.parametrize(("g", "negative"), [(1.0, ""), (4.5, ""), (4.5, "blurry")])
def test_euler_sample_equals_the_pipeline(sd3, g, negative):
    pipe, _, teacher = sd3
    teacher.set_prompt_labels(PROMPTS, negative_prompt=negative)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    ts = pipeline_times(teacher.scheduler, 4)
    denoise = guided(teacher.denoise, g) if g != 1 else teacher.denoise
    with torch.no_grad():  # ddim ends with D(x, ts[-1]): the pipeline's step to sigma = 0
        ours = ddim(denoise, teacher.schedule, z.flatten(1), ts, torch.arange(2))
        ref = pipe(PROMPTS, negative_prompt=negative or None, num_inference_steps=4,
                   guidance_scale=g, latents=z, output_type="latent", height=8, width=8).images  # fmt: skip
    # float32 networks; the times in float64 here, float32 in diffusers: measured <= 2e-6 at
    # |x| ~ 3 (both variants, all three cases), so 2e-5 leaves a 10x margin
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=0, atol=2e-5)
    if g == 1.0:  # decode with scaling_factor and shift_factor: the pipeline's images
        with torch.no_grad():
            img = pipe(PROMPTS, num_inference_steps=4, guidance_scale=g, latents=z,
                       output_type="pt", height=8, width=8).images  # fmt: skip
            torch.testing.assert_close((teacher.decode(ours) + 1) / 2, img, rtol=0, atol=2e-5)
            x = 2 * img - 1
            want = (pipe.vae.encode(x).latent_dist.mean - 0.1) * 1.5
        torch.testing.assert_close(teacher.encode(x), want.flatten(1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, SHIFT])
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_shift_gives_the_schedulers_set_timesteps_sigmas(shift, steps):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    _, s = ShiftedFlowSchedule(shift).alpha_sigma(pipeline_times(scheduler, steps))
    torch.testing.assert_close(s, scheduler.sigmas[:-1].double(), rtol=1e-6, atol=0)  # float32
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        pipeline_times(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), steps)


def test_teacher_schedule_carries_the_folders_shift(sd3):
    _, _, teacher = sd3
    assert isinstance(teacher.schedule, ShiftedFlowSchedule) and teacher.schedule.shift == SHIFT
    s = teacher.scheduler.sigmas.double()  # the training table: shift(k / 1000), k = 1000 … 1
    _, mine = teacher.schedule.alpha_sigma(torch.arange(1000, 0, -1, dtype=torch.float64) / 1000)
    torch.testing.assert_close(mine, s, rtol=1e-6, atol=0)


# --- folders -------------------------------------------------------------------------------


def _edit(path, **updates):
    cfg = json.loads(path.read_text())
    cfg.update(updates)
    path.write_text(json.dumps(cfg))


def _flux_index(d):
    _edit(d / "model_index.json", _class_name="FluxPipeline")
    index = json.loads((d / "model_index.json").read_text())
    index.pop("text_encoder_3"), index.pop("tokenizer_3")
    (d / "model_index.json").write_text(json.dumps(index))


DAMAGE = {  # name: (change, a regex the message must match); both folders unless marked
    "no transformer folder": (
        lambda d: shutil.rmtree(d / "transformer"),
        r"pipe/transformer: no such folder.*'transformer'",
    ),
    "no tokenizer_2 folder": (
        lambda d: shutil.rmtree(d / "tokenizer_2"),
        r"pipe/tokenizer_2: no such folder",
    ),
    "flux transformer": (
        lambda d: _edit(d / "transformer" / "config.json", _class_name="FluxTransformer2DModel"),
        r"transformer/config.json: _class_name 'FluxTransformer2DModel' is not supported yet; "
        r"valid: SD3Transformer2DModel",
    ),
    "flux pipeline": (
        _flux_index,
        r"transformer/config.json: _class_name 'SD3Transformer2DModel' is not supported; "
        r"valid: FluxTransformer2DModel",  # a FluxPipeline index loads as Flux (diffusers_flux)
    ),
    "dynamic shift": (
        lambda d: _edit(d / "scheduler" / "scheduler_config.json", use_dynamic_shifting=True),
        r"scheduler_config.json: use_dynamic_shifting .* not supported yet",
    ),
    "ddim scheduler": (
        lambda d: _edit(d / "scheduler" / "scheduler_config.json", _class_name="DDIMScheduler"),
        r"scheduler_config.json: _class_name 'DDIMScheduler'; valid: FlowMatchEuler",
    ),
    "latent channels": (
        lambda d: _edit(d / "vae" / "config.json", latent_channels=16),
        r"vae/config.json: latent_channels=16 but transformer/config.json has in_channels=4",
    ),
    "pooled width": (
        lambda d: _edit(d / "transformer" / "config.json", pooled_projection_dim=20),
        r"transformer/config.json: pooled_projection_dim=20 but the CLIP projection_dims sum to 24",
    ),
    "joint below clip": (
        lambda d: _edit(d / "transformer" / "config.json", joint_attention_dim=16),
        r"transformer/config.json: joint_attention_dim=16 (is below|but text_encoder_3 has)",
    ),
    "half t5": (
        lambda d: _edit(
            d / "model_index.json",
            tokenizer_3=[None, None],
            text_encoder_3=["transformers", "T5EncoderModel"],
        ),
        r"model_index.json: text_encoder_3 and tokenizer_3 must both be \[null, null\]",
    ),
    "no weights": (
        lambda d: [p.unlink() for p in (d / "transformer").glob("*.safetensors")],
        r"pipe/transformer: cannot load SD3Transformer2DModel",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_folders_name_the_file_and_key(sd3, tmp_path, name):
    assert_damage_refused(sd3[1], tmp_path, *DAMAGE[name])


# --- end to end: the optimize-sd and distill-sd families on an SD3 folder ------------------


def _cli(family, preset, folder, tmp_path, *extra):
    from scoredistill.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return main([family, "--preset", preset, "--teacher", str(folder), "--prompts", str(prompts),
                 "--quick", "--out", str(tmp_path / "run"), *extra])  # fmt: skip


@pytest.mark.parametrize("sd3", [True], indirect=True, ids=["t5"])
def test_sds_optimizes_latent_particles_under_sd3(sd3, tmp_path):
    import numpy as np

    assert _cli("optimize", "sds-sd", sd3[1], tmp_path) == 0
    out = tmp_path / "run"
    data = np.load(out / "samples.npz")  # --quick: 16 particles, prompt i mod 2
    assert data["latents"].shape == (16, 64) and data["x"].shape == (16, 3 * 8 * 8)
    assert np.isfinite(data["latents"]).all() and np.abs(data["x"]).max() <= 1
    assert data["labels"].tolist() == [i % 2 for i in range(16)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["guidance"] == 101.0 and metrics["n"] == 16  # no digits scorer here
    assert (out / "report.md").is_file() and (out / "samples.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("sd3", [True], indirect=True, ids=["t5"])
def test_sid_lsg_distills_an_sd3_teacher_without_export(sd3, tmp_path):
    import numpy as np

    sets = ("--set", "export=false", "--set", "student.init_timestep=-1")
    assert _cli("distill", "sid-lsg-sd", sd3[1], tmp_path, *sets) == 0
    out = tmp_path / "run"
    data = np.load(out / "samples.npz")
    assert data["latents"].shape[1] == 64 and np.isfinite(data["latents"]).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"] == 1 and metrics["guidance"] == 2.0
    assert not (out / "pipeline").exists() and (out / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("sd3", [True], indirect=True, ids=["t5"])
def test_vsd_trains_a_lora_critic_on_the_sd3_transformer(sd3, tmp_path):
    import numpy as np

    assert _cli("optimize", "vsd-sd", sd3[1], tmp_path) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["trainable_params"]["critic"] > 0  # adapters on the transformer's attention
    assert np.isfinite(np.load(tmp_path / "run" / "samples.npz")["latents"]).all()


class _PlusCamera(torch.nn.Module):
    """The transformer's ``time_text_embed`` plus a fixed ``(B, width)`` term, written here."""

    def __init__(self, embed, extra) -> None:
        super().__init__()
        self.embed, self.extra = embed, extra

    def forward(self, timestep, pooled_projection):
        return self.embed(timestep, pooled_projection) + self.extra


@pytest.mark.parametrize("sd3", [True], indirect=True, ids=["t5"])
def test_camera_critic_adds_the_camera_to_the_transformers_time_embedding(sd3):
    """ESD / 3-D VSD's camera critic on SD3: ``E(camera)`` joins ``time_text_embed``'s output
    (what the AdaLN layers read) while the critic runs, and the teacher is untouched."""
    from pipeline_helpers import camera_critic
    from scoredistill.sources.camera_lora import PromptCamera
    from scoredistill.teachers.mlp import azimuth_features

    teacher = load_latent_teacher(sd3[1])  # its own copy: adapters and a hook go on it
    teacher.set_prompt_labels(PROMPTS)
    critic = camera_critic(teacher)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, teacher.dim, generator=g), torch.tensor([0.3, 0.5, 0.8])
    pc = PromptCamera(torch.tensor([0, 1, 0]), torch.tensor([0.0, 120.0, 240.0]))
    with torch.no_grad():
        before = teacher.denoise(x, t, pc.prompts)
        ours = critic.denoise(x, t, pc)
        assert torch.equal(teacher.denoise(x, t, pc.prompts), before)  # critic idle: no camera
        assert not torch.allclose(ours, before, atol=1e-4)
        emb = critic.embed(azimuth_features(pc.azimuth, 3, torch.zeros(())))
        net = teacher.model
        real = net.time_text_embed
        net.time_text_embed = _PlusCamera(real, emb)
        critic.remove()  # the reference is the plain network with the sum written in
        try:
            ref = teacher.denoise(x, t, pc.prompts)  # LoRA B = 0: the adapter adds nothing
        finally:
            net.time_text_embed = real
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
