"""SD3 students exported for stock diffusers (``export_sd3``), on the tiny SD3 pipeline of
``test_sd3_teacher``.

(a) ``student.init_timestep`` on SD3: index 625 of Stable Diffusion's table, computed here from
its betas, has the log-SNR of the flow level the student starts at (sigma/alpha = 2.50, SiD's
sigma_init); (b) a full student exported as ``OUT/pipeline`` and a LoRA student as ``OUT/lora``
reproduce the student's latents through ``DiffusionPipeline.from_pretrained`` (+
``load_lora_weights`` on the teacher's pipeline) from the same initial noise, for K = 1 and 2,
from the top (s = 1) and from 625, with and without T5; (c) a grid no stock scheduler runs is
refused; (d) end to end (slow): ``distill --quick`` on an SD3 folder exports, and the exported
pipeline redraws the run's own ``samples.npz`` latents; (e) the LoRA adapts both streams of the
joint attention (``train_dreambooth_lora_sd3.py``'s targets): a LoRA on the text stream alone
moves the student, and its exported keys load into the pipeline unchanged and reproduce it;
``student.lora_targets`` replaces the default, and one naming no module is a ``ConfigError``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from safetensors import safe_open

from scoredistill.export_latent import export_latent_student
from scoredistill.export_sd3 import (
    flow_level,
    student_generator,
    student_scheduler,
)
from scoredistill.sources.lora import AdapterView, add_lora
from scoredistill.teachers.diffusers_latent import load_latent_teacher
from test_sd3_teacher import PROMPTS, _cli, _pipe

IDS = torch.tensor([0, 1, 1, 0])
SD_625_LEVEL = 0.7144247854504309  # below: from SD's betas; sigma/alpha = 2.5017


@pytest.fixture(scope="module", params=[True, False], ids=["t5", "no-t5"])
def folder(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("sd3") / "pipe"
    _pipe(request.param).save_pretrained(path)
    return path


def _teacher(folder):
    teacher = load_latent_teacher(folder)
    teacher.set_prompt_labels(PROMPTS)
    return teacher


@pytest.fixture(scope="module")
def teacher(folder):
    """A teacher shared by the tests that leave it unchanged (no adapters added)."""
    return _teacher(folder)


def _load(path, teacher):
    """``DiffusionPipeline.from_pretrained``; a folder without T5 needs the two Nones."""
    from diffusers import DiffusionPipeline

    t5 = {} if teacher.text_encoder.has_t5 else {"text_encoder_3": None, "tokenizer_3": None}
    return DiffusionPipeline.from_pretrained(path, local_files_only=True, **t5)


def _nudge(params, scale: float, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))


def _student(gen) -> torch.Tensor:
    """The library's rollout: ``z`` from a seeded generator, re-noising from the global RNG
    (as the pipeline's ``scheduler.step``, which gets no generator)."""
    z = gen.sample_latent(len(IDS), torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    with torch.no_grad():
        return gen(z, IDS, rng=None)


def _pipeline(pipe, steps: int) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(7)
    out = pipe([PROMPTS[i] for i in IDS.tolist()], num_inference_steps=steps, guidance_scale=1.0,
               generator=torch.Generator().manual_seed(0), output_type="latent").images  # fmt: skip
    return out.flatten(1)


@pytest.mark.parametrize("folder", [True], indirect=True, ids=["t5"])
def test_init_timestep_625_is_the_flow_level_of_sds_log_snr(teacher):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)  # SD's scaled_linear DDPM table, index k = timestep k
    for k in (625, 999, 1):
        snr = abar[k] / (1 - abar[k])  # flow: snr = ((1 - s) / s)²
        assert flow_level(teacher, k) == pytest.approx(float(1 / (1 + snr.sqrt())), rel=1e-9)
    s = flow_level(teacher, 625)
    assert s == pytest.approx(SD_625_LEVEL, rel=1e-12) and s / (1 - s) == pytest.approx(
        2.5, abs=2e-3
    )
    with pytest.raises(ValueError, match=r"init_timestep must lie in \[1, 999\]"):
        flow_level(teacher, 1000)


@pytest.mark.parametrize("folder", [True], indirect=True, ids=["t5"])
def test_student_grid_is_the_exported_schedulers(teacher):
    for steps in (1, 2, 4):
        for init, top in ((None, 1.0), (625, SD_625_LEVEL)):
            gen = student_generator(teacher, steps=steps, init_timestep=init)
            sched = student_scheduler(gen, teacher)
            s = teacher.schedule.alpha_sigma(torch.tensor(gen.ts, dtype=torch.float64))[1]
            assert gen.init_scale == pytest.approx(1.0)  # the pipeline's plain randn latents
            torch.testing.assert_close(s.float(), sched.sigmas[:-1], rtol=1e-6, atol=0)
            assert float(sched.sigmas[0]) == pytest.approx(top, rel=1e-6)
            assert sched.config.stochastic_sampling and float(sched.sigmas[-1]) == 0.0
    one = student_generator(teacher, steps=1, init_timestep=625)
    one.ts = (0.9 * one.ts[0],)  # one step: any level is a stock grid (exponential from it)
    s = teacher.schedule.alpha_sigma(torch.tensor(one.ts, dtype=torch.float64))[1]
    assert float(student_scheduler(one, teacher).sigmas[0]) == pytest.approx(float(s[0]))
    gen.ts = (*gen.ts[:-1], 1.5 * gen.ts[-1])  # a last level no stock grid from 625 has
    with pytest.raises(ValueError, match="differ from FlowMatchEulerDiscreteScheduler"):
        student_scheduler(gen, teacher)


@pytest.mark.parametrize(
    ("folder", "steps", "init"),
    [(True, 1, 625), (False, 2, 625)],
    indirect=["folder"],
    ids=["t5-K1-625", "no-t5-K2-625"],
)
def test_full_student_is_a_stock_sd3_pipeline(folder, teacher, tmp_path, steps, init):
    gen = student_generator(teacher, steps=steps, init_timestep=init)
    _nudge(gen.parameters(), 0.01)
    path = export_latent_student(gen, teacher, tmp_path, steps=steps, prompt=PROMPTS[0])
    readme = (path / "README.md").read_text()
    assert path.name == "pipeline" and "guidance_scale=1.0" in readme
    assert ("text_encoder_3=None" in readme) == (not teacher.text_encoder.has_t5)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert (index["text_encoder_3"] == [None, None]) == (not teacher.text_encoder.has_t5)
    pipe = _load(path, teacher)
    ours = _student(gen)
    torch.testing.assert_close(_pipeline(pipe, steps), ours, atol=1e-4, rtol=0)
    teacher_pipe = _load(folder, teacher)
    teacher_pipe.scheduler = pipe.scheduler  # same grid, the teacher's weights: must differ
    assert (_pipeline(teacher_pipe, steps) - ours).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("folder", "steps", "init"),
    [(True, 2, None), (False, 1, 625)],
    indirect=["folder"],
    ids=["t5-K2-top", "no-t5-K1-625"],
)
def test_lora_student_loads_into_the_teacher_pipeline(folder, tmp_path, steps, init):
    from diffusers import FlowMatchEulerDiscreteScheduler

    teacher = _teacher(folder)
    add_lora(teacher.model, "student", rank=4, alpha=6.0)  # alpha != rank: metadata matters
    view = AdapterView(teacher, "student")
    _nudge(view.lora, 0.05)
    gen = student_generator(teacher, steps=steps, init_timestep=init, denoiser=view)
    path = export_latent_student(gen, teacher, tmp_path, steps=steps, prompt=PROMPTS[0])
    assert path.name == "lora"
    with safe_open(path / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
    # A and B of to_q/k/v/out.0 and add_q/k/v_proj in 2 blocks, to_add_out in block 0 (block 1
    # is context_pre_only: no text output); train_dreambooth_lora_sd3.py's --lora_layers
    assert len(keys) == 2 * (2 * 7 + 1)
    assert set(keys) >= TEXT_KEYS
    assert all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert not any("base_model" in k or ".student." in k for k in keys)
    pipe = _load(folder, teacher)
    pipe.load_lora_weights(path)
    _assert_loaded_as_saved(pipe, path)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
    torch.testing.assert_close(_pipeline(pipe, steps), _student(gen), atol=1e-4, rtol=0)


TEXT = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")  # SD3's context stream
TEXT_KEYS = {f"transformer.transformer_blocks.0.attn.{m}.lora_{ab}.weight" for m in TEXT
             for ab in "AB"}  # fmt: skip


def _assert_loaded_as_saved(pipe, path) -> None:
    """Every saved LoRA weight is in the loaded transformer, unchanged, and nothing else (no key
    dropped as unexpected, no module adapted that the file lacks)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    (name,) = pipe.transformer.peft_config
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=name)
    saved = {k.removeprefix("transformer."): v for k, v in
             load_file(path / "pytorch_lora_weights.safetensors").items()}  # fmt: skip
    assert loaded.keys() == saved.keys()
    for k, v in saved.items():
        torch.testing.assert_close(loaded[k], v, atol=0, rtol=0)


@pytest.mark.parametrize("folder", [True], indirect=True, ids=["t5"])
def test_lora_adapts_the_text_stream_and_exports_it(folder, tmp_path):
    """The default targets hold SD3's context-stream projections; a LoRA nudged on those alone
    changes the student, and the exported file reproduces it (so those keys are wired)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    teacher = _teacher(folder)
    add_lora(teacher.model, "student", rank=4)
    names = {n.split(".lora_")[0] for n, _ in teacher.model.named_parameters() if "lora_" in n}
    assert {f"transformer_blocks.0.attn.{m}" for m in TEXT} <= names
    assert {f"transformer_blocks.1.attn.{m}" for m in TEXT[:3]} <= names
    text = [p for n, p in teacher.model.named_parameters()
            if ".lora_B.student" in n and n.split(".lora_")[0].endswith(TEXT)]  # fmt: skip
    assert len(text) == 7  # B = 0 at init: only these leave the base
    _nudge(text, 0.05)
    gen = student_generator(teacher, steps=1, denoiser=AdapterView(teacher, "student"))
    ours = _student(gen)
    base = _student(student_generator(teacher, steps=1))
    assert (ours - base).abs().max() > 1e-3  # text stream alone moves it (~1e-2); 10x atol below
    path = export_latent_student(gen, teacher, tmp_path, steps=1, prompt=PROMPTS[0])
    pipe = _load(folder, teacher)
    pipe.load_lora_weights(path)
    _assert_loaded_as_saved(pipe, path)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
    torch.testing.assert_close(_pipeline(pipe, 1), ours, atol=1e-4, rtol=0)


# --- end to end: distill-sd on an SD3 folder exports what diffusers loads ---------------------


def _redraw(pipe, run, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pipeline latents, samples.npz latents)`` for the run's evaluation draw
    (``runs.unet.student_draw``: labels, then ``z``, from ``seed + 12345``; seed 0)."""
    data = np.load(run / "samples.npz")
    rng = torch.Generator().manual_seed(0 + 12345)
    labels = torch.randint(len(PROMPTS), (len(data["labels"]),), generator=rng)
    assert labels.tolist() == data["labels"].tolist()
    pipe.set_progress_bar_config(disable=True)
    out = pipe([PROMPTS[i] for i in labels.tolist()], num_inference_steps=steps,
               guidance_scale=1.0, generator=rng, output_type="latent").images  # fmt: skip
    return out.flatten(1), torch.from_numpy(data["latents"])


@pytest.mark.slow
@pytest.mark.parametrize("folder", [True], indirect=True, ids=["t5"])
def test_sid_lsg_on_sd3_exports_a_pipeline_from_625(folder, tmp_path):
    from diffusers import DiffusionPipeline

    assert _cli("distill", "sid-lsg-sd", folder, tmp_path) == 0  # export, init_timestep 625
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run" / "pipeline", local_files_only=True)
    pipe.scheduler.set_timesteps(1)
    assert float(pipe.scheduler.sigmas[0]) == pytest.approx(SD_625_LEVEL, rel=1e-6)
    ours, run = _redraw(pipe, tmp_path / "run", 1)
    torch.testing.assert_close(ours, run, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("folder", [True], indirect=True, ids=["t5"])
def test_swiftbrush_on_sd3_exports_a_lora(folder, tmp_path):
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    assert _cli("distill", "swiftbrush-sd", folder, tmp_path) == 0  # LoRA student, rank 64
    lora = tmp_path / "run" / "lora"
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.load_lora_weights(lora)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(lora / "scheduler")
    ours, run = _redraw(pipe, tmp_path / "run", 1)
    torch.testing.assert_close(ours, run, atol=1e-4, rtol=0)


@pytest.mark.parametrize("folder", [True], indirect=True, ids=["t5"])
def test_distill_refuses_eager_attention_and_off_table_starts_on_sd3(folder, tmp_path, capsys):
    assert _cli("distill", "sid-lsg-sd", folder, tmp_path, "--set", "student.attention=eager") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("scoredistill: error: config key 'student.attention': 'eager' is not")
    assert (
        _cli("distill", "sid-lsg-sd", folder, tmp_path, "--set", "student.init_timestep=1000") == 2
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("config key 'student.init_timestep': 1000 is not an index of SD's table "
                         "(read by log-SNR on SD3); valid: -1 or 1..999")  # fmt: skip
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("folder", [True], indirect=True, ids=["t5"])
def test_lora_targets_key_replaces_the_default(folder):
    """``student.lora_targets`` / ``critic.lora_targets``: () is the family's default, a list
    replaces it, and a list that names no module is a ``ConfigError`` naming the key."""
    from dataclasses import replace

    from scoredistill.config import ConfigError
    from scoredistill.runs.sd import LoraPlayer, SDDistillConfig, SDStudentConfig, build_players

    student = SDStudentConfig(lora=True, lora_rank=2, lora_targets=("attn.to_q",))
    cfg = SDDistillConfig(student=student, critic=LoraPlayer(lora=True, lora_rank=2))
    teacher = _teacher(folder)
    build_players(cfg, teacher)
    names = [n for n, _ in teacher.model.named_parameters() if ".lora_A." in n]
    adapted = {who: {n.split(".lora_")[0] for n in names if f".{who}." in n}
               for who in ("student", "critic")}  # fmt: skip
    assert adapted["student"] == {f"transformer_blocks.{i}.attn.to_q" for i in (0, 1)}
    assert len(adapted["critic"]) == 15  # SD3's default: both streams (the export test's count)
    assert "transformer_blocks.0.attn.to_add_out" in adapted["critic"]
    bad = replace(cfg, critic=LoraPlayer(lora=True, lora_targets=("attn.nope",)))
    with pytest.raises(ConfigError, match=r"^config key 'critic.lora_targets': .*attn\.nope"):
        build_players(bad, _teacher(folder))
