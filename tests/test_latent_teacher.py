"""The latent text-to-image teacher adapter against diffusers itself and against hand formulas.

(a) x0: the adapter's ``denoise`` equals ``pred_original_sample`` of diffusers' own
    ``DDPMScheduler.step`` / ``DDIMScheduler.step`` for the UNet output at the same timestep
    (computed here by calling the UNet directly); (b) the VAE round trip and the latent scaling;
(c) the prompt cache; (d) guidance on text conditions and on prompt ids; (e) every damaged
folder is one ``TeacherFolderError`` line naming the file or key.

The text encoder and tokenizer here are stand-ins written in this file (transformers is not a
dependency of the library); ``test_sd_teacher.py`` runs the real CLIP path where it is installed.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from torch import nn

from scoredistill.parametrization import NULL_LABEL, cfg_combine, guided
from scoredistill.teachers.base import Teacher
from scoredistill.teachers.diffusers import TeacherFolderError
from scoredistill.teachers.diffusers_latent import (
    LatentDiffusersTeacher,
    TextCond,
    load_latent_teacher,
)

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
WIDTH, LENGTH = 16, 8  # text embedding width = the UNet's cross_attention_dim; tokens


class CharTokenizer:
    """The slice of a transformers tokenizer that ``encode_text`` uses: bytes + bos/eos."""

    model_max_length = LENGTH

    def __call__(
        self, prompts, padding=False, max_length=None, truncation=False, return_tensors=None
    ):
        if not truncation:  # the untruncated ids (text_cond.warn_truncated counts them)
            return SimpleNamespace(input_ids=[[256, *p.encode(), 257] for p in prompts])
        assert (padding, return_tensors) == ("max_length", "pt")
        rows = [([256, *p.encode()][: max_length - 1] + [257] * max_length)[:max_length]
                for p in prompts]  # fmt: skip
        ids = torch.tensor(rows)
        return SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids))


class CausalMeanEncoder(nn.Module):
    """Embeddings averaged over the prefix: every token sees the prompt before it (as CLIP)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(258, WIDTH)
        self.config = SimpleNamespace(hidden_size=WIDTH, use_attention_mask=False)
        self.calls = 0

    def forward(self, ids, attention_mask=None):
        self.calls += 1
        h = self.embed(ids).cumsum(1) / torch.arange(1, ids.shape[1] + 1)[None, :, None]
        return (h,)


def _unet(in_channels: int = 4) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=4, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH, attention_head_dim=8,
    ).eval()  # fmt: skip


def _vae(latent_channels: int = 4, **extra) -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=latent_channels,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=0.7, **extra,
    ).eval()  # fmt: skip


def _teacher(scheduler=None) -> LatentDiffusersTeacher:
    scheduler = scheduler or DDPMScheduler(**SD, clip_sample=False)
    return LatentDiffusersTeacher(_unet(), _vae(), scheduler, CausalMeanEncoder(), CharTokenizer())


@pytest.fixture(scope="module")
def teacher() -> LatentDiffusersTeacher:
    return _teacher()


def test_is_a_teacher_in_latent_space(teacher):
    assert isinstance(teacher, Teacher)
    assert (teacher.shape, teacher.dim, teacher.image_shape) == ((4, 4, 4), 64, (1, 8, 8))
    assert teacher.num_classes == 0 and not teacher.training


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_x0_equals_diffusers_pred_original_sample(kind):
    sched = (DDPMScheduler if kind == "ddpm" else DDIMScheduler)(**SD, clip_sample=False)
    if kind == "ddim":
        sched.set_timesteps(50)  # step() needs a grid; pred_original_sample does not use it
    teacher = _teacher(sched)
    cond = teacher.encode_prompts(["a handwritten 3", "a bold handwritten 7", ""])
    rng = torch.Generator().manual_seed(0)
    for k in (0, 21, 500, 981, 999):  # on the table: t = k / 999 is the native time
        z_t = torch.randn(3, 4, 4, 4, generator=rng)
        t = torch.full((3,), k / 999, dtype=torch.float64)
        with torch.no_grad():
            d = teacher.denoise(z_t.flatten(1), t, cond).reshape(z_t.shape)
            eps = teacher.model(z_t, torch.full((3,), float(k)), cond.embeds).sample
        ref = sched.step(eps, k, z_t, generator=rng).pred_original_sample
        # float32 network and formula; |x0| grows to |z_t| / alpha_999 ~ 15, so 1e-4 absolute
        torch.testing.assert_close(d, ref, rtol=1e-4, atol=1e-4)


def test_encode_decode_shape_range_scaling_and_gradient(teacher):
    rng = torch.Generator().manual_seed(0)
    x = (2 * torch.rand(5, 1, 8, 8, generator=rng) - 1).requires_grad_(True)
    z = teacher.encode(x)
    assert z.shape == (5, 64) and z.dtype == torch.float32
    with torch.no_grad():  # SD's scaling: z = E(x).mean * scaling_factor (note §4)
        ref = teacher.vae.encode(x).latent_dist.mean * 0.7
    torch.testing.assert_close(z, ref.reshape(5, -1))
    z.sum().backward()  # SDS through the encoder (Diff-Protect) needs d z / d x
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    assert all(p.grad is None for p in teacher.vae.parameters())
    img = teacher.decode(z.detach())
    assert img.shape == (5, 1, 8, 8) and float(img.min()) >= -1 and float(img.max()) <= 1
    assert teacher.decode(z.detach().reshape(5, 4, 4, 4)).shape == (5, 1, 8, 8)
    with torch.no_grad():
        raw = teacher.vae.decode(z.detach().reshape(5, 4, 4, 4) / 0.7).sample.clamp(-1, 1)
    torch.testing.assert_close(img, raw)
    z2 = teacher.encode(x.detach(), generator=torch.Generator().manual_seed(1))
    assert z2.shape == (5, 64) and not torch.equal(z2, z.detach())  # a posterior sample


@pytest.mark.parametrize("form", ["sd", "shift"])
def test_a_vae_shift_factor_is_used_only_where_the_pipeline_uses_it(form):
    """StableDiffusionPipeline decodes ``z / scaling_factor`` and ignores a VAE's
    ``shift_factor``; SD3 and Flux decode ``z / scaling_factor + shift_factor``."""
    vae = _vae(shift_factor=0.3)
    teacher = LatentDiffusersTeacher(
        _unet(), vae, DDPMScheduler(**SD), CausalMeanEncoder(), CharTokenizer(), latent_form=form
    )
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    shift = 0.3 if form == "shift" else 0.0
    with torch.no_grad():
        want = vae.decode(z / 0.7 + shift).sample.clamp(-1, 1)
        torch.testing.assert_close(teacher.decode(z), want)
        x = want.clone()
        ref = (vae.encode(x).latent_dist.mean - shift) * 0.7
        torch.testing.assert_close(teacher.encode(x), ref.reshape(2, -1))


def test_prompts_longer_than_the_tokenizer_are_named_in_one_warning():
    from scoredistill.teachers.text_cond import warn_truncated

    tok = CharTokenizer()  # 8 tokens: bos + 6 bytes + eos fit, 7 bytes do not
    with pytest.warns(UserWarning, match=r"2 of 3 prompts exceed the text encoder's 8 tokens"):
        assert warn_truncated(tok, ["abcdef", "abcdefg", "a handwritten 3"]) == [
            "abcdefg",
            "a handwritten 3",
        ]


def test_prompt_cache_returns_identical_tensors_without_recomputing():
    teacher = _teacher()
    first = teacher.encode_prompts(["a handwritten 1", "a handwritten 2"])
    calls = teacher.text_encoder.calls
    assert calls == 1 and teacher.text_encoder_calls == 1  # the prompts and "" in one batch
    again = teacher.encode_prompts(["a handwritten 2", "a handwritten 1", "a handwritten 2"])
    assert teacher.text_encoder.calls == calls  # nothing new: no forward
    assert torch.equal(again.embeds[0], first.embeds[1])
    assert torch.equal(again.embeds[1], first.embeds[0]) and torch.equal(again.null, first.null)
    direct = teacher.text_encoder(CharTokenizer()(["a handwritten 2"], "max_length", LENGTH,
                                                  True, "pt").input_ids)[0]  # fmt: skip
    torch.testing.assert_close(again.embeds[0], direct[0])
    assert again.prompts == ("a handwritten 2", "a handwritten 1", "a handwritten 2")
    calls = teacher.text_encoder.calls
    teacher.encode_prompts(["a handwritten 9", "a handwritten 1"])
    assert teacher.text_encoder.calls == calls + 1 and teacher.text_encoder_calls == 2


@pytest.mark.parametrize("bad", [[], "a handwritten 3", ["a", 3]])
def test_bad_prompt_lists_are_refused(teacher, bad):
    with pytest.raises(ValueError, match="prompts must be"):
        teacher.encode_prompts(bad)


def test_guidance_on_text_conditions():
    teacher = _teacher().double()  # float64: one batched call and two calls agree to ~1e-12
    rng = torch.Generator().manual_seed(0)
    z_t = torch.randn(3, 64, generator=rng, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    cond = teacher.encode_prompts(["a handwritten 3", "a thin handwritten 5", "a handwritten 0"])
    with torch.no_grad():
        plain = teacher.denoise(z_t, t, cond)
        torch.testing.assert_close(guided(teacher.denoise, 1.0)(z_t, t, cond), plain)
        uncond = teacher.denoise(z_t, t, None)  # None: the empty prompt
        torch.testing.assert_close(teacher.denoise(z_t, t, cond.null_like()), uncond)
        w = torch.tensor([0.0, 3.0, 7.5])  # per-sample scales (SNOOPI)
        torch.testing.assert_close(
            guided(teacher.denoise, w)(z_t, t, cond), cfg_combine(uncond, plain, w)
        )
        negative = teacher.encode_prompts(list(cond.prompts), negative_prompt="a handwritten 8")
        assert not torch.equal(negative.null, cond.null)
        with_neg = guided(teacher.denoise, 3.0)(z_t, t, negative)
        neg = teacher.denoise(z_t, t, negative.null_like())
        torch.testing.assert_close(with_neg, cfg_combine(neg, plain, 3.0))


def test_prompt_ids_work_as_labels():
    teacher = _teacher()
    prompts = ["a handwritten 3", "a bold handwritten 5"]
    table = teacher.set_prompt_labels(prompts)
    assert teacher.num_classes == 2 and table.prompts == tuple(prompts)
    rng = torch.Generator().manual_seed(0)
    z_t, t = torch.randn(3, 64, generator=rng), torch.tensor([0.3, 0.6, 0.8])
    ids = torch.tensor([1, NULL_LABEL, 0])
    text = TextCond.cat([table[1], table.null_like()[0], table[0]])
    with torch.no_grad():
        torch.testing.assert_close(teacher.denoise(z_t, t, ids), teacher.denoise(z_t, t, text))
        by_ids, by_text = (guided(teacher.denoise, 2.0)(z_t, t, c) for c in (ids, text))
    torch.testing.assert_close(by_ids, by_text)
    with pytest.raises(ValueError, match=r"prompt ids must lie in \[-1, 1\]"):
        teacher.denoise(z_t, t, torch.tensor([0, 2, 1]))


def test_text_cond_rows(teacher):
    cond = teacher.encode_prompts(["a", "b", "c"])
    dropped = cond.with_null_rows(torch.tensor([False, True, False]))
    assert torch.equal(dropped.embeds[1], cond.null[0]) and torch.equal(dropped.embeds[0::2],
                                                                        cond.embeds[0::2])  # fmt: skip
    assert cond[1].prompts == ("b",) and cond[1:].prompts == ("b", "c") and len(cond[[0, 2]]) == 2
    both = TextCond.cat([cond, cond.null_like()])
    assert len(both) == 6 and both.prompts == () and torch.equal(both.embeds[4], cond.null[0])
    other = teacher.encode_prompts(["a"], negative_prompt="z")
    with pytest.raises(ValueError, match="different null embeddings"):
        TextCond.cat([cond, other])


def test_bad_conditions_are_refused(teacher):
    z_t, t = torch.zeros(2, 64), torch.tensor([0.5, 0.5])
    cond = teacher.encode_prompts(["a", "b", "c"])
    with pytest.raises(ValueError, match="TextCond has 3 rows for a batch of 2"):
        teacher.denoise(z_t, t, cond)
    with pytest.raises(ValueError, match="set_prompt_labels"):
        teacher.denoise(z_t, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="cond must be a TextCond"):
        teacher.denoise(z_t, t, torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"null \(1, L, E\)"):
        TextCond(torch.zeros(2, 3, 4), torch.zeros(1, 3, 5))


def test_mismatched_components_are_refused():
    with pytest.raises(ValueError, match="latent_channels=3, unet in_channels=4"):
        LatentDiffusersTeacher(_unet(), _vae(3), DDPMScheduler(), CausalMeanEncoder(),
                               CharTokenizer())  # fmt: skip


# --- folders -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A StableDiffusionPipeline-layout folder; text parts are placeholders (no transformers)."""
    root = tmp_path_factory.mktemp("sd") / "pipe"
    _unet().save_pretrained(root / "unet")
    _vae().save_pretrained(root / "vae")
    DDIMScheduler(**SD, clip_sample=False).save_pretrained(root / "scheduler")
    for part, name in (("text_encoder", "config.json"), ("tokenizer", "tokenizer_config.json")):
        (root / part).mkdir()
        (root / part / name).write_text("{}")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def _damaged(folder, tmp_path, change):
    dst = tmp_path / "pipe"
    shutil.copytree(folder, dst)
    change(dst)
    return dst


def _edit_json(path, **updates):
    cfg = json.loads(path.read_text())
    cfg.update(updates)
    path.write_text(json.dumps(cfg))


def _pixel_unet(dst):
    shutil.rmtree(dst / "unet")
    UNet2DModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2).save_pretrained(dst / "unet")  # fmt: skip


PIXEL_INDEX = {  # what DDPMPipeline.save_pretrained writes
    "_class_name": "DDPMPipeline",
    "unet": ["diffusers", "UNet2DModel"],
    "scheduler": ["diffusers", "DDPMScheduler"],
}
KANDINSKY_INDEX = {
    "_class_name": "KandinskyV22Pipeline",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "movq": ["diffusers", "VQModel"],
}
DAMAGE = {  # name: (change, a regex the message must match)
    "no vae folder": (lambda d: shutil.rmtree(d / "vae"), r"pipe/vae: no such folder.*'vae'"),
    "no tokenizer folder": (
        lambda d: shutil.rmtree(d / "tokenizer"),
        r"pipe/tokenizer: no such folder.*'tokenizer'",
    ),
    "no vae key": (
        lambda d: _edit_json(d / "model_index.json", vae=None),
        r"model_index.json: key 'vae' is None; valid: \['diffusers', CLASS\]",
    ),
    "text encoder from diffusers": (
        lambda d: _edit_json(d / "model_index.json", text_encoder=["diffusers", "UNet2DModel"]),
        r"key 'text_encoder' .* valid: \['transformers', CLASS\]",
    ),
    "latent channels": (
        lambda d: _edit_json(d / "vae" / "config.json", latent_channels=3),
        r"vae/config.json: latent_channels=3 but unet/config.json has in_channels=4",
    ),
    "pixel unet": (_pixel_unet, r"unet/config.json: UNet2DModel takes no encoder_hidden_states"),
    "pixel pipeline": (
        lambda d: (d / "model_index.json").write_text(json.dumps(PIXEL_INDEX)),
        r"model_index.json: is a pixel-space pipeline .* --preset dmd2-unet --teacher DIR",
    ),
    "pooled text encoder": (
        lambda d: _edit_json(
            d / "text_encoder" / "config.json", architectures=["CLIPTextModelWithProjection"]
        ),
        r"text_encoder/config.json: CLIPTextModelWithProjection returns one pooled embedding",
    ),
    "sdxl unet": (
        lambda d: _edit_json(d / "unet" / "config.json", addition_embed_type="text_time"),
        r"unet/config.json: addition_embed_type 'text_time' needs added_cond_kwargs",
    ),
    "no unet config": (
        lambda d: (d / "unet" / "config.json").unlink(),
        r"unet/config.json: not found",
    ),
    "transformer pipeline": (
        lambda d: (d / "model_index.json").write_text(json.dumps({"transformer": ["d", "X"]})),
        r"transformer pipeline other than SD3/Flux is not supported yet.*valid: "
        r"StableDiffusion3Pipeline, FluxPipeline",
    ),
    "guidance-embedding unet": (  # LCM-distilled: the pipeline passes timestep_cond (sweep 4)
        lambda d: _edit_json(d / "unet" / "config.json", time_cond_proj_dim=32),
        r"unet/config.json: time_cond_proj_dim=32: a guidance-embedding UNet .*valid: null",
    ),
    "kandinsky layout": (  # a UNet and an autoencoder named movq: not a pixel pipeline
        lambda d: (d / "model_index.json").write_text(json.dumps(KANDINSKY_INDEX)),
        r"model_index.json: _class_name 'KandinskyV22Pipeline' \(components unet, scheduler, "
        r"movq\) is not supported; valid: StableDiffusionPipeline, StableDiffusionXLPipeline",
    ),
    "bad scheduler": (
        lambda d: _edit_json(d / "scheduler" / "scheduler_config.json", prediction_type="flux"),
        r"scheduler_config.json: prediction_type 'flux' is not supported",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_folders_name_the_file_and_key(folder, tmp_path, name):
    change, pattern = DAMAGE[name]
    with pytest.raises(TeacherFolderError, match=pattern) as err:
        load_latent_teacher(_damaged(folder, tmp_path, change))
    assert "\n" not in str(err.value)


def test_missing_folder_and_missing_index(tmp_path):
    with pytest.raises(TeacherFolderError, match="no such folder"):
        load_latent_teacher(tmp_path / "absent")
    with pytest.raises(TeacherFolderError, match=r"model_index\.json: not found"):
        load_latent_teacher(tmp_path)


def test_without_transformers_the_message_says_so(folder):
    pytest.importorskip("diffusers")
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(TeacherFolderError, match="need the transformers package"):
            load_latent_teacher(folder)
    else:  # the placeholders are no CLIP folders: loading them must fail naming the folder
        with pytest.raises(TeacherFolderError, match="text_encoder: cannot load CLIPTextModel"):
            load_latent_teacher(folder)
