"""Flux students exported for stock diffusers (``export_flux``), on the tiny Flux pipeline of
``flux_helpers`` (guidance embedding on, ``FLUX.1-dev``'s dynamic-shift scheduler).

(a) the student's grid is ``FluxPipeline.__call__``'s (``set_timesteps(sigmas=linspace(1, 1/K,
K), mu=mu)``), from the top and from SD's index 625; a grid off it is refused; (b) a full
student exported as ``OUT/pipeline`` loads with plain ``DiffusionPipeline.from_pretrained`` as a
``FluxPipeline`` and reproduces the student's latents from the same seeds (K = 1 exactly; K = 2
with the pipeline's re-noising noise, drawn in packed order); (c) a LoRA student exported as
``OUT/lora`` (``transformer.``-prefixed keys) loads with ``load_lora_weights`` into the teacher's
pipeline and reproduces the student; (d) end to end: ``distill`` with ``dmd2-sd`` (full) and
``swiftbrush-sd`` (LoRA) on the Flux folder exports folders that redraw ``samples.npz``; (e) the
LoRA adapts ``train_dreambooth_lora_flux.py``'s targets (both streams' attention and feed-forward,
the single blocks' MLP): a LoRA on the context stream alone moves the student, and its exported
keys load unchanged and reproduce it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from safetensors import safe_open

from flux_helpers import LATENT, PROMPTS, SIZE, T5_LENGTH, flux_pipe
from scoredistill.export_flux import flux_scheduler, student_scheduler
from scoredistill.export_latent import export_latent_student
from scoredistill.export_sd3 import student_generator
from scoredistill.sources.lora import AdapterView, add_lora
from scoredistill.teachers.diffusers_flux import pack, unpack
from scoredistill.teachers.diffusers_latent import load_latent_teacher
from test_sd3_export import SD_625_LEVEL, _assert_loaded_as_saved
from test_sd3_teacher import _cli

IDS = torch.tensor([0, 1, 1, 0])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("flux") / "pipe"
    flux_pipe(True).save_pretrained(path)
    return path


def _teacher(folder):
    teacher = load_latent_teacher(folder)
    teacher.set_prompt_labels(PROMPTS)
    return teacher


@pytest.fixture(scope="module")
def teacher(folder):
    """A teacher shared by the tests that leave it unchanged (no adapters added)."""
    return _teacher(folder)


def _load(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _nudge(params, scale: float, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))


def _pipeline(pipe, prompts, steps: int, generator) -> torch.Tensor:
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=3.5, height=SIZE, width=SIZE,
               max_sequence_length=T5_LENGTH, generator=generator,
               output_type="latent").images  # fmt: skip
    return unpack(out, LATENT, LATENT).flatten(1)


def _student(gen) -> torch.Tensor:
    """The student's rollout from ``z`` (seed 0) with the pipeline's re-noising noise: torch's
    global RNG (seed 7), drawn in packed token order (``export_flux`` module docstring)."""
    z = gen.sample_latent(len(IDS), torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    x_t = gen.init_scale * z
    with torch.no_grad():
        for j in range(gen.nfe):
            x = gen.denoiser.denoise(x_t, torch.full((len(IDS),), gen.ts[j]), IDS)
            if j + 1 < gen.nfe:
                eps = unpack(torch.randn(len(IDS), (LATENT // 2) ** 2, 16), LATENT, LATENT)
                x_t = gen.alphas[j + 1] * x + gen.sigmas[j + 1] * eps.flatten(1)
    if gen.nfe == 1:  # the library's own rollout is the same call
        with torch.no_grad():
            torch.testing.assert_close(gen(z, IDS), x, rtol=0, atol=0)
    return x


def _stock(pipe, steps: int) -> torch.Tensor:
    torch.manual_seed(7)
    return _pipeline(pipe, [PROMPTS[i] for i in IDS.tolist()], steps,
                     torch.Generator().manual_seed(0))  # fmt: skip


def test_student_grid_is_the_pipelines(teacher):
    from diffusers import FlowMatchEulerDiscreteScheduler

    for steps in (1, 2, 4):
        for init, top in ((None, 1.0), (625, SD_625_LEVEL)):
            gen = student_generator(teacher, steps=steps, init_timestep=init)
            sched = student_scheduler(gen, teacher)
            s = teacher.schedule.alpha_sigma(torch.tensor(gen.ts, dtype=torch.float64))[1]
            assert gen.init_scale == 1.0  # the pipeline's plain randn latents
            torch.testing.assert_close(s.float(), sched.sigmas[:-1], rtol=1e-6, atol=0)
            assert float(sched.sigmas[0]) == pytest.approx(top, rel=1e-6)
            assert sched.config.stochastic_sampling
        stock = FlowMatchEulerDiscreteScheduler.from_config(teacher.scheduler.config)
        sigmas = np.linspace(1.0, 1 / steps, steps)  # FluxPipeline.__call__
        stock.set_timesteps(steps, sigmas=sigmas, mu=teacher.model.mu)
        top_gen = student_generator(teacher, steps=steps)
        torch.testing.assert_close(flux_scheduler(teacher, 1.0, steps).sigmas, stock.sigmas)
        assert top_gen.ts == pytest.approx(sigmas.tolist(), rel=1e-6)  # t: unshifted sigmas
    gen.ts = (*gen.ts[:-1], 1.5 * gen.ts[-1])
    with pytest.raises(ValueError, match="differ from FluxPipeline's"):
        student_scheduler(gen, teacher)


@pytest.mark.parametrize(("steps", "init"), [(1, None), (2, 625)], ids=["K1-top", "K2-625"])
def test_full_student_is_a_stock_flux_pipeline(folder, teacher, tmp_path, steps, init):
    gen = student_generator(teacher, steps=steps, init_timestep=init)
    _nudge(gen.parameters(), 0.01)
    path = export_latent_student(gen, teacher, tmp_path, steps=steps, prompt=PROMPTS[0])
    readme = (path / "README.md").read_text()
    assert path.name == "pipeline" and "guidance_scale=3.5" in readme
    assert f"height={SIZE}" in readme and f"max_sequence_length={T5_LENGTH}" in readme
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    pipe = _load(path)
    ours = _student(gen)
    # float32 transformer, K <= 2 steps: as test_sd3_export
    torch.testing.assert_close(_stock(pipe, steps), ours, atol=1e-4, rtol=0)
    teacher_pipe = _load(folder)
    teacher_pipe.scheduler = pipe.scheduler  # same grid, the teacher's weights: must differ
    assert (_stock(teacher_pipe, steps) - ours).abs().max() > 1e-2


@pytest.mark.parametrize(("steps", "init"), [(1, 625), (2, None)], ids=["K1-625", "K2-top"])
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
    # A and B of train_dreambooth_lora_flux.py's targets: the joint block's to_q/k/v/out.0,
    # add_q/k/v_proj, to_add_out, ff and ff_context (12); the single block's to_q/k/v (3)
    assert len(keys) == 2 * (12 + 3)
    assert set(keys) >= TEXT_KEYS
    blocks = ("transformer.transformer_blocks.", "transformer.single_transformer_blocks.")
    assert all(k.startswith(blocks) for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert not any("base_model" in k or ".student." in k for k in keys)
    pipe = _load(folder)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
    before = _stock(pipe, steps)
    pipe.load_lora_weights(path)
    _assert_loaded_as_saved(pipe, path)
    ours = _student(gen)
    torch.testing.assert_close(_stock(pipe, steps), ours, atol=1e-4, rtol=0)
    assert (before - ours).abs().max() > 1e-2  # the LoRA changes the output as the student's


# Flux's context stream in the joint block (attention and feed-forward)
TEXT = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context.net.0.proj",
        "ff_context.net.2")  # fmt: skip
TEXT_KEYS = {f"transformer.transformer_blocks.0.{'' if m.startswith('ff') else 'attn.'}{m}"
             f".lora_{ab}.weight" for m in TEXT for ab in "AB"}  # fmt: skip


def test_lora_adapts_the_text_stream_and_exports_it(folder, tmp_path):
    """The default targets hold the joint block's context stream (not the single block's MLP);
    a LoRA nudged on the context stream alone changes the student, and the exported file
    reproduces it (so those keys are wired)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    teacher = _teacher(folder)
    add_lora(teacher.model, "student", rank=4)
    names = {n.split(".lora_")[0] for n, _ in teacher.model.named_parameters() if "lora_" in n}
    assert {k.removesuffix(".lora_A.weight") for k in TEXT_KEYS if ".lora_A." in k} <= names
    single = "transformer.single_transformer_blocks.0."
    assert {single + "attn.to_q", single + "attn.to_k", single + "attn.to_v"} <= names
    assert not {single + "proj_mlp", single + "proj_out", "transformer.proj_out"} & names
    text = [p for n, p in teacher.model.named_parameters()
            if ".lora_B.student" in n and n.split(".lora_")[0].endswith(TEXT)]  # fmt: skip
    assert len(text) == len(TEXT)  # B = 0 at init: only these leave the base
    _nudge(text, 0.05)
    gen = student_generator(teacher, steps=1, denoiser=AdapterView(teacher, "student"))
    ours = _student(gen)
    moved = (ours - _student(student_generator(teacher, steps=1))).abs().max()
    assert moved > 1e-3  # the text stream alone moves it (~2e-2); 10x the atol below
    path = export_latent_student(gen, teacher, tmp_path, steps=1, prompt=PROMPTS[0])
    pipe = _load(folder)
    pipe.load_lora_weights(path)
    _assert_loaded_as_saved(pipe, path)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
    torch.testing.assert_close(_stock(pipe, 1), ours, atol=1e-4, rtol=0)


# --- end to end: distill-sd on a Flux folder exports what diffusers loads ---------------------


def _redraw(pipe, run, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pipeline latents, samples.npz latents)`` for the run's evaluation draw
    (``runs.unet.student_draw``: labels, then ``z``, from ``seed + 12345``; seed 0)."""
    data = np.load(run / "samples.npz")
    rng = torch.Generator().manual_seed(0 + 12345)
    labels = torch.randint(len(PROMPTS), (len(data["labels"]),), generator=rng)
    assert labels.tolist() == data["labels"].tolist()
    ours = _pipeline(pipe, [PROMPTS[i] for i in labels.tolist()], steps, rng)
    return ours, torch.from_numpy(data["latents"])


def test_dmd2_on_flux_exports_a_pipeline(folder, tmp_path):
    assert _cli("distill", "dmd2-sd", folder, tmp_path, "--steps", "2") == 0
    run = tmp_path / "run"
    pipe = _load(run / "pipeline")
    assert type(pipe).__name__ == "FluxPipeline"
    steps = json.loads((run / "metrics.json").read_text())["nfe"]
    assert steps == 1  # the redraw below is exact for one step (module docstring)
    ours, drawn = _redraw(pipe, run, steps)
    torch.testing.assert_close(ours, drawn, atol=1e-4, rtol=0)


def test_swiftbrush_on_flux_exports_a_lora(folder, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert _cli("distill", "swiftbrush-sd", folder, tmp_path, "--steps", "2") == 0
    lora = tmp_path / "run" / "lora"
    pipe = _load(folder)
    pipe.load_lora_weights(lora)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(lora / "scheduler")
    ours, drawn = _redraw(pipe, tmp_path / "run", 1)
    torch.testing.assert_close(ours, drawn, atol=1e-4, rtol=0)


def test_pack_round_trip():
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpack(pack(z), LATENT, LATENT), z)


def test_distill_refuses_eager_attention_on_flux(folder, tmp_path, capsys):
    # Flux's attention layers are not diffusers ``Attention`` modules: an eager request would
    # silently do nothing, so it is refused by name before any work
    assert _cli("distill", "sid-lsg-sd", folder, tmp_path, "--set", "student.attention=eager") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("config key 'student.attention': 'eager' is not supported with a Flux "
                         "teacher yet; valid: 'sdpa'")  # fmt: skip
    assert not (tmp_path / "run").exists()
