"""diffusers' ``clip_skip`` on latent teachers (``teachers.diffusers_clip_skip``).

Tiny pipelines with random weights (SD 1.5 layout from ``test_sd_resolution``, SDXL from
``test_sdxl_teacher``, SD3 from ``test_sd3_teacher``, Flux from ``flux_helpers``) whose CLIP
encoders are rebuilt four layers deep (the builders' two layers leave ``hidden_states[-4]``
out of range on SDXL/SD3), saved by diffusers: (a) the teacher's prompt embeddings at
``clip_skip = k`` equal the pipeline's own ``encode_prompt(..., clip_skip=k)``, its null row
the pipeline's unskipped ``negative_prompt_embeds``, and they differ from ``k = 0``; (b) a
guided DDIM loop at ``clip_skip = 1`` equals ``pipe(..., clip_skip=1)`` on SD 1.5; (c) Flux
and a ``k`` past the encoder's depth are one ``ConfigError`` naming ``clip_skip``, also through
the CLI; (d) an exported student's README says to generate with ``clip_skip=k``, and the
exported pipeline called so reproduces the student.

diffusers 0.42's SD 1.5 ``clip_skip`` reads ``text_encoder.text_model.final_layer_norm``, which
the installed transformers (>= 5.6) flattened to ``text_encoder.final_layer_norm``, so the stock
call raises ``AttributeError`` (huggingface/diffusers#14124). ``_alias`` gives a pipeline's
encoder the old path to the same module, the workaround the exported README prints, so the
pipeline's own ``encode_prompt`` and ``__call__`` are the reference.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    DiffusionPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
)

from flux_helpers import flux_pipe  # noqa: E402
from pipeline_helpers import save_pipelines  # noqa: E402
from scoredistill.config import ConfigError  # noqa: E402
from scoredistill.export_latent import export_latent_student  # noqa: E402
from scoredistill.parametrization import guided  # noqa: E402
from scoredistill.samplers import ddim  # noqa: E402
from scoredistill.sources.diffusers import DiffusersGenerator  # noqa: E402
from scoredistill.teachers.diffusers_latent import load_latent_teacher  # noqa: E402
from test_sd3_teacher import _pipe as sd3_pipe  # noqa: E402
from test_sd_resolution import TRAILING, _cli, _pipeline_latents, _sd_pipe, _student  # noqa: E402
from test_sdxl_teacher import _pipe as sdxl_pipe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a photo of a cat", "two dogs"]
DEPTH = 4  # CLIP layers: SD indexes up to k = 4, SDXL / SD3 up to k = 3 (diffusers_clip_skip)
# the same float32 operations on different batch compositions: a few ulps (test_sdxl_teacher)
ATOL = 1e-6


def _deeper(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model``'s class and config with ``DEPTH`` layers, seeded random weights."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = DEPTH
    torch.manual_seed(seed)
    return type(model)(config).eval()


def _alias(pipe):
    """``pipe`` with ``text_encoder.text_model.final_layer_norm`` (module docstring)."""
    enc = pipe.text_encoder
    if not hasattr(enc, "text_model"):
        enc.text_model = types.SimpleNamespace(final_layer_norm=enc.final_layer_norm)
    return pipe


def _sd():
    pipe = _sd_pipe()
    pipe.register_modules(text_encoder=_deeper(pipe.text_encoder, 11))
    return _alias(pipe)


def _sdxl():
    pipe = sdxl_pipe()
    deep = {"text_encoder": _deeper(pipe.text_encoder, 12),
            "text_encoder_2": _deeper(pipe.text_encoder_2, 13)}  # fmt: skip
    out = StableDiffusionXLPipeline(**{**pipe.components, **deep}, add_watermarker=False)
    out.set_progress_bar_config(disable=True)
    return out


def _sd3():
    pipe = sd3_pipe(t5=True)
    deep = {"text_encoder": _deeper(pipe.text_encoder, 14),
            "text_encoder_2": _deeper(pipe.text_encoder_2, 15)}  # fmt: skip
    out = StableDiffusion3Pipeline(**{**pipe.components, **deep})
    out.set_progress_bar_config(disable=True)
    return out


BUILDERS = {"sd": _sd, "sdxl": _sdxl, "sd3": _sd3}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{family: (pipeline, its folder)}``, built once."""
    return save_pipelines(tmp_path_factory, BUILDERS)


def _reference(name: str, pipe, k: int | None) -> tuple[torch.Tensor, ...]:
    """``(prompt_embeds, negative_prompt_embeds[, pooled, negative_pooled])`` of the pipeline's
    own ``encode_prompt(PROMPTS, negative_prompt="blurry", clip_skip=k)``."""
    with torch.no_grad():
        if name == "sd":  # its negative prompt: a list like the prompts
            neg = ["blurry"] * 2
            return pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=neg, clip_skip=k)
        if name == "sdxl":
            return pipe.encode_prompt(PROMPTS, negative_prompt="blurry", clip_skip=k)
        return pipe.encode_prompt(PROMPTS, None, None, negative_prompt="blurry", clip_skip=k)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_prompt_embeddings_equal_encode_prompt_with_clip_skip(folders, name):
    pipe, folder = folders[name]
    base = load_latent_teacher(folder).encode_prompts(PROMPTS, negative_prompt="blurry")
    most = DEPTH if name == "sd" else DEPTH - 1  # the deepest index the pipeline can take
    for k in (1, 2, most):
        teacher = load_latent_teacher(folder, clip_skip=k)
        assert teacher.clip_skip == k
        cond = teacher.encode_prompts(PROMPTS, negative_prompt="blurry")
        ref = _reference(name, pipe, k)
        torch.testing.assert_close(cond.embeds, ref[0], rtol=0, atol=ATOL)
        # the pipelines encode the negative prompt with clip_skip=None
        torch.testing.assert_close(cond.null, ref[1][:1], rtol=0, atol=ATOL)
        torch.testing.assert_close(cond.null, base.null, rtol=0, atol=ATOL)
        if name != "sd":  # pooled text_embeds whatever clip_skip
            torch.testing.assert_close(cond.pooled, ref[2], rtol=0, atol=ATOL)
            torch.testing.assert_close(cond.null_pooled, ref[3][:1], rtol=0, atol=ATOL)
        assert (cond.embeds - base.embeds).abs().max() > 1e-2  # the test can fail
        calls = teacher.text_encoder_calls  # cached per (text, skip): no further forward
        teacher.encode_prompts(PROMPTS[::-1], negative_prompt="blurry")
        assert teacher.text_encoder_calls == calls


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_guided_ddim_at_clip_skip_1_equals_the_pipeline(folders, negative):
    pipe, folder = folders["sd"]
    teacher = load_latent_teacher(folder, clip_skip=1)
    teacher.set_prompt_labels(PROMPTS, negative_prompt=negative or "")
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    neg = None if negative is None else [negative] * 2  # SD: a list like the prompts
    with torch.no_grad():  # trailing DDIM, 4 steps (test_sd_resolution); CFG 5
        ours = ddim(guided(teacher.denoise, 5.0), teacher.schedule, z.flatten(1), TRAILING,
                    torch.arange(2))  # fmt: skip
        ref = pipe(PROMPTS, negative_prompt=neg, num_inference_steps=4, guidance_scale=5.0,
                   latents=z, clip_skip=1, output_type="latent").images  # fmt: skip
        off = pipe(PROMPTS, negative_prompt=neg, num_inference_steps=4, guidance_scale=5.0,
                   latents=z, output_type="latent").images  # fmt: skip
    # float32 networks and DDIM arithmetic against float64 times, as test_sd_resolution
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)
    assert (ref - off).abs().max() > 1e-3  # clip_skip changes the pipeline's answer


def test_flux_and_too_deep_skips_are_refused(folders, tmp_path):
    flux_pipe().save_pretrained(tmp_path / "flux")
    with pytest.raises(ConfigError, match=r"'clip_skip': 1.*FluxPipeline.*valid: 0"):
        load_latent_teacher(tmp_path / "flux", clip_skip=1)
    assert load_latent_teacher(tmp_path / "flux").clip_skip == 0
    for name, most in [("sd", DEPTH), ("sdxl", DEPTH - 1), ("sd3", DEPTH - 1)]:
        with pytest.raises(ConfigError, match=rf"'clip_skip': {most + 1} .* 0 to {most}$") as e:
            load_latent_teacher(folders[name][1], clip_skip=most + 1)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"'clip_skip': -1 must be >= 0"):
        load_latent_teacher(folders["sd"][1], clip_skip=-1)


@pytest.mark.parametrize(("value", "needle"), [("-1", ">= 0"), ("9", "0 to 4")])
def test_cli_refuses_a_bad_clip_skip_in_one_line(folders, prompts, tmp_path, capsys, value, needle):
    assert _cli(folders["sd"][1], prompts, tmp_path / "o", f"clip_skip={value}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if not ln.startswith("Loading weights")]  # transformers' progress
    assert len(err) == 1 and "clip_skip" in err[0] and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_exported_readme_names_clip_skip_and_the_pipeline_follows_it(folders, tmp_path):
    for k in (0, 2):
        teacher = load_latent_teacher(folders["sd"][1], clip_skip=k)
        teacher.set_prompt_labels(PROMPTS)
        gen = DiffusersGenerator(teacher, steps=1)
        path = export_latent_student(gen, teacher, tmp_path / str(k), steps=1, prompt=PROMPTS[0])
        readme = (path / "README.md").read_text()
        assert ("generate with `clip_skip=2`" in readme) == (k == 2)
        assert ("clip_skip" in readme) == (k == 2)
    assert "types.SimpleNamespace(final_layer_norm=" in readme  # the _alias workaround
    pipe = _alias(DiffusionPipeline.from_pretrained(path, local_files_only=True))
    pipe.set_progress_bar_config(disable=True)
    student = _student(gen)
    torch.testing.assert_close(_pipeline_latents(pipe, clip_skip=2), student, rtol=0, atol=2e-5)
    assert (_pipeline_latents(pipe) - student).abs().max() > 1e-3  # without it: another answer
