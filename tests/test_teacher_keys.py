"""Family config keys (``runs.sd_teacher_keys``): SDXL's micro-conditioning and Flux's embedded
guidance, against diffusers' own pipelines.

(a) with ``sdxl.original_size`` / crops / ``target_size`` and their negative forms, DDIM under CFG
and a negative prompt equals ``StableDiffusionXLPipeline.__call__`` given the same six arguments
(and differs from the default call: the ids reach the UNet); with only the conditional ones the
null rows repeat them, as the pipeline does; (b) prompt ids, the null label, ``null_like``,
classifier-free dropout and ``cat`` carry the conditional or the null row's ids; (c) the keys
reach the teacher through ``runs.sd.load_teacher``, and an exported full student called with the
README's arguments redraws the student's latents; (d) ``flux.guidance`` sets the teacher's
embedded guidance and the export's README call; (e) ``max_sequence_length`` gives SD3's and
Flux's ``encode_prompt(..., max_sequence_length=L)`` embeddings and the SD3 README passes it; (f)
bad keys are one ``ConfigError`` naming the key (wrong length, half a negative pair, another
family, no guidance embedding, no T5, a negative under guidance 1), and the CLI exits 2.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

from flux_helpers import flux_pipe
from scoredistill.config import ConfigError
from scoredistill.parametrization import NULL_LABEL, guided
from scoredistill.runs.sd import SDDistillConfig, check_negative_prompt, load_teacher
from scoredistill.runs.sd_teacher_keys import FluxKeys, SDXLKeys, micro_cond
from scoredistill.samplers import ddim
from scoredistill.teachers.diffusers_latent import TextCond, load_latent_teacher
from scoredistill.teachers.diffusers_sdxl_micro import MicroCond
from test_sd3_teacher import _cli
from test_sdxl_teacher import PROMPTS, SD, _pipe

MICRO = {
    "original_size": (16, 12), "crops_coords_top_left": (2, 1), "target_size": (8, 8),
    "negative_original_size": (4, 4), "negative_crops_coords_top_left": (1, 0),
    "negative_target_size": (8, 8),
}  # fmt: skip
POSITIVE = {k: v for k, v in MICRO.items() if not k.startswith("negative_")}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """``(pipeline, its folder, a teacher of its own)``: this module changes ``micro``."""
    pipe = _pipe()
    folder = tmp_path_factory.mktemp("sdxl") / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder, load_latent_teacher(folder)


def _ddim_pipe(pipe) -> StableDiffusionXLPipeline:
    sched = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True,
                          timestep_spacing="trailing")  # fmt: skip
    out = StableDiffusionXLPipeline(**{**pipe.components, "scheduler": sched})
    out.set_progress_bar_config(disable=True)
    return out


@pytest.mark.parametrize("micro", [MICRO, POSITIVE], ids=["with-negative", "conditional-only"])
def test_ddim_with_micro_conditioning_equals_the_pipeline(sdxl, micro):
    pipe, _, teacher = sdxl
    teacher.text_encoder.micro = MicroCond(**micro)
    try:
        teacher.set_prompt_labels(PROMPTS, negative_prompt="blurry")
        ddim_pipe = _ddim_pipe(pipe)
        z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
        ts = torch.tensor([999, 749, 499, 249], dtype=torch.float64) / 999
        with torch.no_grad():
            ours = ddim(guided(teacher.denoise, 5.0), teacher.schedule, z.flatten(1), ts,
                        torch.arange(2))  # fmt: skip
            call = dict(negative_prompt="blurry", num_inference_steps=4, guidance_scale=5.0,
                        output_type="latent")  # fmt: skip
            # one prompt per call: at batch B > 1 diffusers 0.42 pairs the ids with the rows
            # as cat([neg, pos]).repeat(B, 1) = [neg, pos, neg, pos] against embeddings
            # [neg, neg, pos, pos] (module docstring of diffusers_sdxl_micro)
            ref = torch.cat([ddim_pipe(p, latents=z[i : i + 1], **call, **micro).images
                             for i, p in enumerate(PROMPTS)])  # fmt: skip
            default = ddim_pipe(PROMPTS, latents=z, **call).images
            batched = ddim_pipe(PROMPTS, latents=z, **call, **micro).images
    finally:
        teacher.text_encoder.micro = MicroCond()
    # float32 networks and DDIM arithmetic against float64 times, and batch 1 against 2 on
    # the pipeline's side: measured <= 2.8e-5 (|x| ~ 25 under CFG 5), so 1e-4
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)
    assert (ref - default).abs().max() > 1e-2  # the ids reach the UNet
    mispaired = (batched - ref).abs().max()  # the pipeline's batched null rows (see above)
    assert mispaired > 1e-2 if "negative_original_size" in micro else mispaired < 1e-4


def test_rows_carry_the_conditional_or_the_null_ids(sdxl):
    _, _, teacher = sdxl
    teacher.text_encoder.micro = MicroCond(**MICRO)
    try:
        table = teacher.set_prompt_labels(PROMPTS)
    finally:
        teacher.text_encoder.micro = MicroCond()
    cond_row, null_row = [16.0, 12, 2, 1, 8, 8], [4.0, 4, 1, 0, 8, 8]
    assert table.time_ids.tolist() == [cond_row] * 2 and table.null_time_ids.tolist() == [null_row]

    def ids_of(cond):
        kwargs = teacher.network_condition(cond, 3, torch.device("cpu"))["added_cond_kwargs"]
        return kwargs["time_ids"].tolist()

    # the table was built with MICRO: the rows keep it after micro is reset
    assert ids_of(torch.tensor([1, NULL_LABEL, 0])) == [cond_row, null_row, cond_row]
    dropped = table[[0, 1, 0]].with_null_rows(torch.tensor([False, True, True]))
    assert ids_of(dropped) == [cond_row, null_row, null_row]
    assert ids_of(table[[0, 1, 1]].null_like()) == [null_row] * 3
    assert ids_of(TextCond.cat([table[1], table.null_like()[0], table[0]])) == [
        cond_row, null_row, cond_row
    ]  # fmt: skip
    # a TextCond without ids (built by hand) gets micro's conditional row at the pixel size
    bare = TextCond(table.embeds, table.null, (), table.pooled, table.null_pooled)
    assert ids_of(bare[[0, 0, 1]]) == [[8.0, 8, 0, 0, 8, 8]] * 3


def _cfg(folder, tmp_path, **keys) -> SDDistillConfig:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return SDDistillConfig(teacher=str(folder), prompts=str(prompts), **keys)


def test_keys_reach_the_teacher_and_the_exported_student(sdxl, tmp_path):
    from diffusers import DiffusionPipeline

    from scoredistill.export_latent import export_latent_student
    from scoredistill.sources.diffusers import DiffusersGenerator

    _, folder, _ = sdxl
    keys = {k: list(v) for k, v in MICRO.items()}
    teacher = load_teacher(_cfg(folder, tmp_path, sdxl=SDXLKeys(**keys)))
    assert teacher.text_encoder.micro == MicroCond(**MICRO)
    assert teacher.prompt_table.time_ids[0].tolist() == [16.0, 12, 2, 1, 8, 8]
    gen = DiffusersGenerator(teacher, steps=1)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    path = export_latent_student(gen, teacher, tmp_path / "out", steps=1, prompt=PROMPTS[0])
    readme = (path / "README.md").read_text()
    assert "original_size=(16, 12), crops_coords_top_left=(2, 1), target_size=(8, 8)" in readme
    assert "negative_original_size" not in readme  # no CFG at the student's steps
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ids = torch.tensor([0, 1])
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ours = gen(gen.sample_latent(2, rng), ids, rng=rng)
        ref = pipe(PROMPTS, num_inference_steps=1, guidance_scale=1.0, output_type="latent",
                   generator=torch.Generator().manual_seed(0), **POSITIVE).images  # fmt: skip
        default = pipe(PROMPTS, num_inference_steps=1, guidance_scale=1.0, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    torch.testing.assert_close(ours, ref.flatten(1), rtol=1e-5, atol=1e-5)
    assert (ref - default).abs().max() > 1e-3


@pytest.fixture(scope="module", params=[True, False], ids=["guidance-embeds", "plain"])
def flux_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux") / "pipe"
    flux_pipe(request.param).save_pretrained(folder)
    return request.param, folder


def test_flux_guidance_key(flux_folder, tmp_path):
    from scoredistill.export_flux import readme, student_scheduler
    from scoredistill.export_sd3 import student_generator

    embeds, folder = flux_folder
    cfg = _cfg(folder, tmp_path, flux=FluxKeys(guidance=2.0))
    if not embeds:
        with pytest.raises(ConfigError, match=r"'flux.guidance'.*guidance_embeds=false"):
            load_teacher(cfg)
        return
    teacher = load_teacher(cfg)
    assert teacher.model.guidance == 2.0
    assert load_teacher(_cfg(folder, tmp_path)).model.guidance == 3.5  # the pipeline's default
    gen = student_generator(teacher, steps=1)
    text = readme(gen, teacher, student_scheduler(gen, teacher), PROMPTS[0], lora=False)
    assert "guidance_scale=2.0" in text


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"original_size": [8]}, r"'sdxl.original_size' must be \[H, W\]"),
        ({"crops_coords_top_left": [0, 0, 1]}, r"'sdxl.crops_coords_top_left' must be \[top"),
        ({"negative_original_size": [4, 4]}, r"'sdxl.negative_original_size' acts only together"),
        ({"negative_target_size": [4, 4]}, r"'sdxl.negative_target_size' acts only together"),
        ({"negative_crops_coords_top_left": [1, 1]}, r"'sdxl.negative_crops_coords_top_left'"),
    ],
)
def test_bad_micro_keys_name_the_key(keys, match):
    with pytest.raises(ConfigError, match=match):
        micro_cond(SDXLKeys(**keys))


def test_family_keys_on_another_family_are_refused(sdxl, flux_folder, tmp_path):
    _, folder, _ = sdxl
    with pytest.raises(ConfigError, match=r"'flux.guidance'.*not a FluxPipeline"):
        load_teacher(_cfg(folder, tmp_path, flux=FluxKeys(guidance=2.0)))
    sizes = SDXLKeys(original_size=(8, 8))
    with pytest.raises(ConfigError, match=r"'sdxl.original_size'.*not a StableDiffusionXL"):
        load_teacher(_cfg(flux_folder[1], tmp_path, sdxl=sizes))
    negative = _cfg(folder, tmp_path, sdxl=SDXLKeys(negative_original_size=(4, 4)))
    with pytest.raises(ConfigError, match=r"'sdxl.negative_original_size'.*guidance"):
        check_negative_prompt(negative, type("Objective", (), {"guidance": 1.0})())


def test_cli_exits_2_on_a_bad_key(sdxl, tmp_path, capsys):
    _, folder, _ = sdxl
    assert _cli("distill", "dmd2-sd", folder, tmp_path, "--set", "sdxl.target_size=[8]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'sdxl.target_size'" in err[0]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_max_sequence_length_key(family, tmp_path):
    """T5 pads and truncates to the key's length, as ``encode_prompt(max_sequence_length=8)``
    (the tiny tokenizers' own limit is 16, SD3's default 256, so 8 truncates these prompts)."""
    from scoredistill.export_latent import export_latent_student
    from scoredistill.export_sd3 import student_generator
    from test_sd3_teacher import _pipe as sd3_pipe

    pipe = sd3_pipe(True) if family == "sd3" else flux_pipe(True)
    folder = tmp_path / family
    pipe.save_pretrained(folder)
    teacher = load_teacher(_cfg(folder, tmp_path, max_sequence_length=8))
    assert teacher.text_encoder.max_sequence_length == 8
    cond = teacher.encode_prompts(PROMPTS)
    with torch.no_grad():
        if family == "sd3":
            pe, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, max_sequence_length=8)
            default = pipe.encode_prompt(PROMPTS, None, None)[0]
        else:
            pe, pooled, _ = pipe.encode_prompt(PROMPTS, None, max_sequence_length=8)
            default = pipe.encode_prompt(PROMPTS, None)[0]
    assert pe.shape[1] < default.shape[1]  # 77 + 8 against 77 + 256 (SD3); 8 against 16 (Flux)
    torch.testing.assert_close(cond.embeds, pe, rtol=0, atol=1e-6)
    torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=1e-6)
    if family == "sd3":  # Flux READMEs always pass it (test_flux_export)
        gen = student_generator(teacher, steps=1)
        path = export_latent_student(gen, teacher, tmp_path / "out", steps=1, prompt=PROMPTS[0])
        assert "max_sequence_length=8, " in (path / "README.md").read_text()


def test_max_sequence_length_needs_t5(sdxl, tmp_path):
    _, folder, _ = sdxl
    with pytest.raises(ConfigError, match=r"'max_sequence_length'.*no T5"):
        load_teacher(_cfg(folder, tmp_path, max_sequence_length=77))


def test_sd_precision_bf16_runs_on_the_cpu(sd_folder, prompts, tmp_path):
    """``precision=bf16`` (autocast on the run's device; here the CPU) trains and exports, and
    ``benchmarks/gpu_step_time.py`` reads its per-step times (no device memory on a CPU)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_step_time as bench

    args = type("A", (), {"work": tmp_path, "steps": 3, "batch": 2, "warmup": 0})()
    row = bench.time_run(Path(sd_folder), Path(prompts), "dmd2-sd", "bf16", args)
    assert row["exit"] == 0 and row["step_s"] > 0 and row["peak_mib"] is None
    assert (
        json.loads((tmp_path / "dmd2-sd-bf16" / "config.json").read_text())["precision"] == "bf16"
    )
