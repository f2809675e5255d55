"""Different prompts per text encoder (``teachers.diffusers_prompts``, ``runs.sd_prompts``):
diffusers' ``prompt_2`` / ``prompt_3`` and their negatives.

Tiny pipelines with random weights (SD 1.5 layout from ``test_sd_resolution``, SDXL from
``test_sdxl_teacher``, SD3 with and without T5 from ``test_sd3_teacher``, Flux from
``flux_helpers``), saved by diffusers: (a) the teacher's condition and null rows for distinct
per-encoder prompts equal the pipeline's own ``encode_prompt(prompt, prompt_2=, prompt_3=,
negative_prompt_2=, ...)`` and differ from the ``prompt_2=None`` encoding; (b) a guided DDIM
loop on prompt ids equals ``StableDiffusionXLPipeline(..., prompt_2=)``; (c) the cache keys on
the row, so one prompt with two ``prompt_2`` values is two conditions and ``prompt_2 =
prompt`` is no new one; (d) each bad input is one ``ConfigError`` naming the key, before any
weights load, also through the CLI; (e) an exported student's README says to pass
``prompt_2``, and the exported pipeline called so reproduces the student.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402

import scoredistill.teachers.diffusers_latent as latent  # noqa: E402
from flux_helpers import T5_LENGTH, flux_pipe  # noqa: E402
from pipeline_helpers import save_pipelines  # noqa: E402
from scoredistill.config import ConfigError  # noqa: E402
from scoredistill.export_latent import export_latent_student  # noqa: E402
from scoredistill.parametrization import NULL_LABEL, guided  # noqa: E402
from scoredistill.runs.sd import SDDistillConfig  # noqa: E402
from scoredistill.runs.sd_prompts import prompt_streams  # noqa: E402
from scoredistill.samplers import ddim  # noqa: E402
from scoredistill.sources.diffusers import DiffusersGenerator  # noqa: E402
from scoredistill.teachers.diffusers_latent import load_latent_teacher  # noqa: E402
from test_sd3_teacher import _pipe as sd3_pipe  # noqa: E402
from test_sd_resolution import _cli, _sd_pipe  # noqa: E402
from test_sdxl_teacher import SD  # noqa: E402
from test_sdxl_teacher import _pipe as sdxl_pipe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a photo of a cat", "two dogs"]
PROMPTS_2 = ["oil painting", "a sketch in ink"]  # text_encoder_2's (SDXL, SD3: CLIP-G; Flux: T5)
PROMPTS_3 = ["three birds", "a red car"]  # SD3's T5
NEG = {"negative_prompt": "blurry", "negative_prompt_2": "grainy", "negative_prompt_3": "dark"}
# the same float32 operations on different batch compositions: a few ulps (test_sdxl_teacher)
ATOL = 1e-6
BUILDERS = {
    "sd": _sd_pipe,
    "sdxl": sdxl_pipe,
    "sd3": lambda: sd3_pipe(t5=True),
    "sd3-no-t5": lambda: sd3_pipe(t5=False),
    "flux": lambda: flux_pipe(False),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{family: (pipeline, its folder)}``, built once."""
    return save_pipelines(tmp_path_factory, BUILDERS)


def _ours(teacher, name: str, streams: bool):
    """The teacher's ``TextCond`` with (or without) per-encoder prompts and negatives."""
    if not streams:
        return teacher.encode_prompts(PROMPTS, negative_prompt=NEG["negative_prompt"])
    third = {"prompt_3": PROMPTS_3, "negative_prompt_3": NEG["negative_prompt_3"]}
    extra = third if name == "sd3" else {}
    neg = {k: NEG[k] for k in ("negative_prompt", "negative_prompt_2")}
    return teacher.encode_prompts(PROMPTS, prompt_2=PROMPTS_2, **neg, **extra)


def _reference(name: str, pipe) -> tuple[torch.Tensor, ...]:
    """``(embeds, null, pooled, null_pooled)`` of the pipeline's own ``encode_prompt``."""
    with torch.no_grad():
        if name == "sdxl":
            return pipe.encode_prompt(PROMPTS, prompt_2=PROMPTS_2, negative_prompt="blurry",
                                      negative_prompt_2="grainy")  # fmt: skip
        if name == "sd3":
            return pipe.encode_prompt(PROMPTS, PROMPTS_2, PROMPTS_3, **NEG)
        # Flux: __call__'s true-CFG negative is encode_prompt(negative_prompt, negative_prompt_2)
        pe, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS_2, max_sequence_length=T5_LENGTH)
        npe, npooled, _ = pipe.encode_prompt(["blurry"], ["grainy"], max_sequence_length=T5_LENGTH)
        return pe, npe, pooled, npooled


@pytest.mark.parametrize("name", ["sdxl", "sd3", "flux"])
def test_per_encoder_prompts_equal_encode_prompt(folders, name):
    pipe, folder = folders[name]
    teacher = load_latent_teacher(folder)
    cond, base = _ours(teacher, name, True), _ours(teacher, name, False)
    ref = _reference(name, pipe)
    pairs = [(cond.embeds, ref[0]), (cond.null, ref[1][:1]), (cond.pooled, ref[2]),
             (cond.null_pooled, ref[3][:1])]  # fmt: skip
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)
    # the test can fail: prompt_2 (and prompt_3) change the sequence and the null row
    assert (cond.embeds - base.embeds).abs().max() > 1e-2
    assert (cond.null - base.null).abs().max() > 1e-2
    # SDXL / SD3: the pooled embedding reads CLIP-G's prompt_2; Flux's pooled is CLIP's prompt
    moved = (cond.pooled - base.pooled).abs().max()
    assert moved > 1e-2 if name != "flux" else moved == 0


def test_sd3_prompt_2_alone_leaves_t5_on_prompt(folders):
    pipe, folder = folders["sd3"]
    cond = load_latent_teacher(folder).encode_prompts(PROMPTS, prompt_2=PROMPTS_2)
    with torch.no_grad():  # prompt_3=None: T5 reads prompt (``prompt_3 or prompt``)
        pe, npe, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS_2, None)
    torch.testing.assert_close(cond.embeds, pe, rtol=0, atol=ATOL)
    torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=ATOL)
    torch.testing.assert_close(cond.null, npe[:1], rtol=0, atol=ATOL)


def test_sdxl_empty_negative_with_negative_prompt_2_is_encoded(folders):
    """``negative_prompt=""`` + ``negative_prompt_2``: the pipeline's explicit ``""`` (not the
    ``None`` that zeroes the row and drops ``negative_prompt_2``); both empty: zeros."""
    pipe, folder = folders["sdxl"]
    teacher = load_latent_teacher(folder)
    cond = teacher.encode_prompts(PROMPTS, negative_prompt_2="grainy")
    with torch.no_grad():
        _, npe, _, npooled = pipe.encode_prompt(PROMPTS, negative_prompt="",
                                                negative_prompt_2="grainy")  # fmt: skip
    torch.testing.assert_close(cond.null, npe[:1], rtol=0, atol=ATOL)
    torch.testing.assert_close(cond.null_pooled, npooled[:1], rtol=0, atol=ATOL)
    assert cond.null.abs().max() > 1e-2
    zeros = teacher.encode_prompts(PROMPTS, prompt_2=PROMPTS_2)
    assert not zeros.null.any() and not zeros.null_pooled.any()


def test_cache_keys_on_the_row_of_per_encoder_prompts(folders):
    teacher = load_latent_teacher(folders["sdxl"][1])
    same = ["a photo of a cat"] * 2
    cond = teacher.encode_prompts(same, prompt_2=PROMPTS_2)  # one prompt, two prompt_2 values
    assert teacher.text_encoder_calls == 1
    assert (cond.embeds[0] - cond.embeds[1]).abs().max() > 1e-2  # two conditions
    again = teacher.encode_prompts(same, prompt_2=PROMPTS_2[::-1])
    assert teacher.text_encoder_calls == 1  # both rows cached
    assert torch.equal(again.embeds[0], cond.embeds[1])
    assert torch.equal(again.pooled[1], cond.pooled[0])
    plain = teacher.encode_prompts(same[:1])  # prompt_2=None: the row ("a photo of a cat",) * 2
    calls = teacher.text_encoder_calls
    explicit = teacher.encode_prompts(same[:1], prompt_2=same[:1])  # prompt_2 = prompt: no new row
    assert teacher.text_encoder_calls == calls and torch.equal(explicit.embeds, plain.embeds)
    assert not any(torch.equal(plain.embeds[0], e) for e in cond.embeds)


def test_prompt_ids_and_guided_ddim_equal_the_pipeline_with_prompt_2(folders):
    pipe, folder = folders["sdxl"]
    teacher = load_latent_teacher(folder)
    table = teacher.set_prompt_labels(PROMPTS, "blurry", prompt_2=PROMPTS_2,
                                      negative_prompt_2="grainy")  # fmt: skip
    assert teacher.prompt_rows == tuple(zip(PROMPTS, PROMPTS_2, strict=True))
    rows = teacher.network_condition(torch.tensor([1, NULL_LABEL]), 2, torch.device("cpu"))
    torch.testing.assert_close(rows["encoder_hidden_states"][0], table.embeds[1], rtol=0, atol=0)
    torch.testing.assert_close(rows["encoder_hidden_states"][1], table.null[0], rtol=0, atol=0)
    ddim_pipe = StableDiffusionXLPipeline(**{**pipe.components, "scheduler": DDIMScheduler(
        **SD, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")})  # fmt: skip
    ddim_pipe.set_progress_bar_config(disable=True)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    ts = torch.tensor([999, 749, 499, 249], dtype=torch.float64) / 999  # trailing, 4 steps
    kwargs = {"negative_prompt": "blurry", "num_inference_steps": 4, "guidance_scale": 5.0,
              "latents": z, "output_type": "latent"}  # fmt: skip
    with torch.no_grad():
        ours = ddim(guided(teacher.denoise, 5.0), teacher.schedule, z.flatten(1), ts,
                    torch.arange(2))  # fmt: skip
        ref = ddim_pipe(PROMPTS, prompt_2=PROMPTS_2, negative_prompt_2="grainy", **kwargs).images
        off = ddim_pipe(PROMPTS, **kwargs).images
    # float32 networks against float64 times; CFG 5: test_sdxl_teacher's 1e-5
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)
    assert (ref - off).abs().max() > 1e-3  # prompt_2 changes the pipeline's answer


def test_the_teacher_refuses_a_stream_it_has_not_or_of_another_length(folders):
    sdxl, sd = (load_latent_teacher(folders[k][1]) for k in ("sdxl", "sd"))
    with pytest.raises(ValueError, match=r"^prompt_3: .* takes prompt, prompt_2 only"):
        sdxl.encode_prompts(PROMPTS, prompt_3=PROMPTS_3)
    with pytest.raises(ValueError, match=r"^negative_prompt_2: .* takes prompt only"):
        sd.encode_prompts(PROMPTS, negative_prompt_2="grainy")
    with pytest.raises(ValueError, match=r"prompt_2 must be a list as long as prompts \(2\)"):
        sdxl.encode_prompts(PROMPTS, prompt_2=PROMPTS_2[:1])
    with pytest.raises(ValueError, match=r"unknown prompt argument 'prompts_2'"):
        sdxl.encode_prompts(PROMPTS, prompts_2=PROMPTS_2)
    assert sdxl.text_encoder_calls == 0 and sd.text_encoder_calls == 0  # refused before encoding


# --- bad input: one ConfigError naming the key, before any weights load --------------------


def _cfg(folder, prompts: str, **keys) -> SDDistillConfig:
    return SDDistillConfig(teacher=str(folder), prompts=prompts, **keys)


def _file(tmp_path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def no_weights(monkeypatch):
    """Loading any teacher fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded before the prompt checks")

    monkeypatch.setattr(latent, "load_latent_teacher", refuse)


@pytest.mark.parametrize(
    ("name", "key", "needle"),
    [
        ("sd", "prompts_2", "takes prompt only: prompt_2 feeds text_encoder_2"),
        ("sd", "negative_prompt_2", "takes prompt only"),
        ("sdxl", "prompts_3", "(StableDiffusionXLPipeline) takes prompt, prompt_2 only"),
        ("flux", "prompts_3", "(FluxPipeline) takes prompt, prompt_2 only"),
        ("sd3-no-t5", "prompts_3", "prompt_3 feeds text_encoder_3 (SD3: T5)"),
        ("sd3-no-t5", "negative_prompt_3", "takes prompt, prompt_2 only"),
    ],
)
def test_a_key_without_its_encoder_is_refused(folders, tmp_path, no_weights, name, key, needle):
    prompts = _file(tmp_path, "p.txt", PROMPTS)
    value = prompts if key.startswith("prompts") else "blurry"
    folder = folders[name][1]
    with pytest.raises(ConfigError, match=rf"^config key '{key}': .*valid: ''") as err:
        prompt_streams(_cfg(folder, prompts, **{key: value}), folder, prompts, 2)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_prompt_files_name_the_key_and_the_counts(folders, tmp_path, no_weights):
    folder = folders["sd3"][1]
    prompts = _file(tmp_path, "p.txt", PROMPTS)
    cases = {
        str(tmp_path / "missing.txt"): "is not a file",
        _file(tmp_path, "blank.txt", ["", "  "]): "holds no prompt",
        _file(tmp_path, "three.txt", [*PROMPTS_3, "x"]): (
            f"three.txt holds 3 prompts but --prompts {prompts} holds 2; line i is the prompt_3"
        ),
    }
    for path, needle in cases.items():
        with pytest.raises(ConfigError, match=r"^config key 'prompts_3': ") as err:
            prompt_streams(_cfg(folder, prompts, prompts_3=path), folder, prompts, 2)
        assert needle in str(err.value), err.value
    ok = prompt_streams(_cfg(folder, prompts, prompts_3=_file(tmp_path, "t5.txt", PROMPTS_3),
                             negative_prompt_2="grainy"), folder, prompts, 2)  # fmt: skip
    assert ok == {"prompt_3": PROMPTS_3, "negative_prompt_2": "grainy"}
    assert prompt_streams(_cfg(folder, prompts), folder, prompts, 2) == {}


def test_cli_refuses_in_one_line_and_runs_with_prompt_2(folders, prompts, tmp_path, capsys):
    two = _file(tmp_path, "two.txt", PROMPTS_2)
    assert _cli(folders["sd"][1], prompts, tmp_path / "o", f"prompts_2={two}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'prompts_2'" in err[0] and "takes prompt only" in err[0], err
    one = _file(tmp_path, "one.txt", PROMPTS_2[:1])
    assert _cli(folders["sdxl"][1], prompts, tmp_path / "o", f"prompts_2={one}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 1 prompts but --prompts" in err[0], err
    assert _cli(folders["sdxl"][1], prompts, tmp_path / "o", "negative_prompt_2=x",
                "objective.guidance=1") == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'negative_prompt_2': it acts only through guidance" in err[0]
    assert not (tmp_path / "o").exists()
    assert _cli(folders["sdxl"][1], prompts, tmp_path / "o", f"prompts_2={two}") == 0  # dry run


# --- export: the README says to pass prompt_2, and the pipeline so called is the student ---


def test_exported_readme_names_prompt_2_and_the_pipeline_follows_it(folders, tmp_path):
    for streams in (False, True):
        teacher = load_latent_teacher(folders["sdxl"][1])
        teacher.set_prompt_labels(PROMPTS, **({"prompt_2": PROMPTS_2} if streams else {}))
        gen = DiffusersGenerator(teacher, steps=1)
        path = export_latent_student(gen, teacher, tmp_path / str(streams), steps=1,
                                     prompt=PROMPTS[0])  # fmt: skip
        readme = (path / "README.md").read_text()
        assert ("prompt_2" in readme) == streams
    assert f"prompt_2=[{PROMPTS_2[0]!r}] * 4" in readme and "`prompts_2` file" in readme
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ids = torch.tensor([0, 1])
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        student = gen(gen.sample_latent(2, rng), ids, rng=rng)

    def call(**kwargs) -> torch.Tensor:
        out = pipe(PROMPTS, num_inference_steps=1, guidance_scale=1.0, output_type="latent",
                   generator=torch.Generator().manual_seed(0), **kwargs).images  # fmt: skip
        return out.flatten(1)

    # float32 UNet, one LCM step; as test_sdxl_export (2e-5 at |z| ~ 3)
    torch.testing.assert_close(call(prompt_2=PROMPTS_2), student, rtol=0, atol=2e-5)
    assert (call() - student).abs().max() > 1e-3  # without prompt_2: another answer
