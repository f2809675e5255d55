"""Export a student of a text-to-image latent teacher: a full pipeline or a LoRA file.

- **Full student** → ``OUT/pipeline/``: ``StableDiffusionPipeline`` with the teacher's VAE, text
  encoder and tokenizer, the student's UNet and the stock ``LCMScheduler`` of
  ``export.student_scheduler`` (the student's grid and table). The pipeline's loop (diffusers
  0.42 ``pipeline_stable_diffusion.py``) draws ``randn * init_noise_sigma`` (LCM: 1) latents,
  calls ``unet(scale_model_input(x) = x, k, encoder_hidden_states)`` and
  ``LCMScheduler.step(..., generator=)`` (``prepare_extra_step_kwargs`` passes the generator),
  which returns the network's x0 and re-noises with fresh noise between steps: the student's
  rollout (``sources.diffusers``), so the same ``torch.Generator`` seed gives the same latents.
  ``guidance_scale`` must be 1 (no CFG at sampling): the distilled student has the teacher's
  guidance built in. An EDM-family teacher (``EDMDPMSolverMultistepScheduler``, as Playground
  v2.5's) gets ``EDMEulerScheduler`` instead, for K = 1 only (``export_families``); the README
  names the class saved. ``export_plan`` says before training when no stock scheduler fits.
- **LoRA student** → ``OUT/lora/``: ``pytorch_lora_weights.safetensors`` written by
  ``StableDiffusionPipeline.save_lora_weights`` (keys in diffusers' layout, no PEFT prefix; the
  ``LoraConfig`` as metadata so ``lora_alpha`` reloads), ``scheduler/`` (that scheduler's config)
  and a README: ``pipe = DiffusionPipeline.from_pretrained(TEACHER); pipe.load_lora_weights(OUT/lora);
  pipe.scheduler = LCMScheduler.from_pretrained(OUT/lora/scheduler)`` (its class, if not LCM).
- **SD3 teacher** (``StableDiffusion3Pipeline`` folder): ``export_sd3`` writes the same two
  folders for ``StableDiffusion3Pipeline`` and ``FlowMatchEulerDiscreteScheduler``.
- **SDXL teacher** (``StableDiffusionXLPipeline`` folder): ``export_sdxl`` writes the same two
  folders for ``StableDiffusionXLPipeline`` with this ``LCMScheduler``.
- **Flux teacher** (``FluxPipeline`` folder): ``export_flux`` writes the same two folders for
  ``FluxPipeline`` and ``FlowMatchEulerDiscreteScheduler`` (dynamic shift at the teacher's size).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .export import network_timesteps, scheduler_line, student_scheduler
from .export_flux import export_flux_student, is_flux
from .export_flux import student_scheduler as flux_scheduler_of
from .export_folder import (
    at_trained_size,
    clip_skip_note,
    prompt_streams_note,
    size_kwargs,
    size_note,
    variant_note,
)
from .export_sd3 import export_sd3_student, is_sd3, plain_copy
from .export_sd3 import student_scheduler as sd3_scheduler_of
from .export_sdxl import export_sdxl_student, is_sdxl
from .io import atomic_folder
from .sources.diffusers import DiffusersGenerator
from .sources.lora import AdapterView, lora_state_dict
from .teachers.diffusers_parts import _load

__all__ = [
    "export_latent_student",
    "export_plan",
    "latent_scheduler",
    "lora_readme",
    "pipeline_readme",
]


def _imports(sched: Any) -> str:
    name = type(sched).__name__
    imports = f"import torch\nfrom diffusers import DiffusionPipeline, {name}\n\n"
    return imports + "g = torch.Generator().manual_seed(0)\n"


def _call(k: int, prompt: str, size: str = "") -> str:
    return (
        f"images = pipe([{prompt!r}] * 4, num_inference_steps={k}, {size}guidance_scale=1.0, "
        'generator=g, output_type="np").images\n'
    )


def pipeline_readme(
    generator: DiffusersGenerator,
    sched: Any,
    prompt: str,
    note: str = "",
    safety_checker: bool = False,
) -> str:
    """``sched``: the stock scheduler saved with it (``latent_scheduler``); ``safety_checker``:
    whether the teacher's checker was kept (``safety_parts``)."""
    k = generator.nfe
    kept = (
        "- The teacher's safety checker is kept: its pipeline runs it on every image, and so "
        "does this one (`from_pretrained(..., safety_checker=None)` drops it).\n"
    )
    return (
        f"# {k}-step text-to-image student distilled with scoredistill\n\n"
        f"Trained for **K = {k}** step(s) at the network timesteps "
        f"{network_timesteps(sched)}.\n\n```python\n{_imports(sched)}"
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/pipeline", local_files_only=True)\n'
        f"{_call(k, prompt)}```\n\n"
        "- Stock `StableDiffusionPipeline`.\n"
        + scheduler_line(sched)
        + "- `guidance_scale=1.0`: the teacher's guidance is distilled into the student; a larger "
        "value would apply CFG a second time.\n"
        f"- `num_inference_steps` must be {k}.\n"
        + (kept if safety_checker else "")
        + (f"\n{note}\n" if note else "")
    )


def lora_readme(
    generator: DiffusersGenerator, sched: Any, prompt: str, note: str = "", size: str = ""
) -> str:
    """``sched``: the stock scheduler saved in ``lora/scheduler``; ``size``:
    ``export_folder.size_kwargs``, passed in the call when trained at another size."""
    k, name = generator.nfe, type(sched).__name__
    return (
        f"# {k}-step LoRA student distilled with scoredistill\n\n"
        "A LoRA on the teacher's UNet. Load it into the **teacher's** pipeline and use the "
        f"scheduler saved here (the student's grid, network timesteps {network_timesteps(sched)})"
        f":\n\n```python\n{_imports(sched)}"
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/TEACHER", local_files_only=True)\n'
        'pipe.load_lora_weights("PATH/TO/lora")\n'
        f'pipe.scheduler = {name}.from_pretrained("PATH/TO/lora/scheduler")\n'
        f"{_call(k, prompt, size)}```\n\n"
        "- `pytorch_lora_weights.safetensors`: diffusers' key layout (no PEFT "
        "`base_model.model.` prefix); the LoRA config (rank, alpha) is in its metadata.\n"
        + scheduler_line(sched)
        + "- `guidance_scale=1.0` and `num_inference_steps` = "
        f"{k}, as the student was trained.\n" + (f"\n{note}\n" if note else "")
    )


def latent_scheduler(generator: DiffusersGenerator, teacher: Any) -> Any:
    """The stock scheduler the export writes for this student, per family (``ValueError`` naming
    why none reproduces it): ``export.student_scheduler`` on SD (``steps_offset = 1`` where the
    config has it: ``LCMScheduler`` ignores it, and ``StableDiffusionPipeline.__init__`` rewrites,
    with a warning, any other value) and SDXL, the flow transformers' own on SD3 and Flux."""
    if is_flux(teacher):
        return flux_scheduler_of(generator, teacher)
    if is_sd3(teacher):
        return sd3_scheduler_of(generator, teacher)
    sched = student_scheduler(generator, teacher)
    if not is_sdxl(teacher) and "steps_offset" in sched.config:
        sched.register_to_config(steps_offset=1)
    return sched


def export_plan(generator: DiffusersGenerator, teacher: Any) -> str:
    """The folder ``export_latent_student`` will write for this student, or ``"none: why"``
    (``--dry-run``, and the warning before training: a run does not find out at its end)."""
    try:
        sched = type(latent_scheduler(generator, teacher)).__name__
    except ValueError as err:
        return f"none: {err}"
    if isinstance(generator.denoiser, AdapterView):
        return f"OUT/lora: a LoRA for the teacher's own pipeline, with {sched}"
    return f"OUT/pipeline: {_pipeline_class(teacher)} with {sched}"


def _pipeline_class(teacher: Any) -> str:
    if is_flux(teacher):
        return "FluxPipeline"
    if is_sd3(teacher):
        return "StableDiffusion3Pipeline"
    return "StableDiffusionXLPipeline" if is_sdxl(teacher) else "StableDiffusionPipeline"


def safety_parts(teacher: Any) -> dict[str, Any]:
    """The teacher folder's ``safety_checker`` and ``feature_extractor`` as the exported
    ``StableDiffusionPipeline`` takes them (``requires_safety_checker`` too): the stock pipeline
    runs the checker on every decoded image, so a student of a checked teacher keeps it. None
    for both when the folder has none (``model_index.json`` null or absent)."""
    import diffusers
    import diffusers.pipelines
    import transformers

    folder = getattr(teacher, "folder", None)
    index = json.loads((folder / "model_index.json").read_text()) if folder else {}
    entry = index.get("safety_checker")
    if not (
        isinstance(entry, list) and entry[0] and isinstance(index.get("feature_extractor"), list)
    ):
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    library, name = entry
    module = (
        diffusers if library == "diffusers" else transformers if library == "transformers" else None
    )
    if module is None and library.isidentifier():  # diffusers' own: ["stable_diffusion", CLASS]
        module = getattr(diffusers.pipelines, library, None)
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise ValueError(
            f"{folder}/model_index.json: safety_checker {entry} names no class to load"
        )
    return {
        "safety_checker": _load(folder / "safety_checker", cls, teacher.variant),
        # AutoImageProcessor reads preprocessor_config.json: CLIPFeatureExtractor is gone in 5.x
        "feature_extractor": transformers.AutoImageProcessor.from_pretrained(
            folder / "feature_extractor", local_files_only=True
        ),
        "requires_safety_checker": bool(index.get("requires_safety_checker", True)),
    }


def _full(generator: DiffusersGenerator, teacher: Any, folder: Path, prompt: str, note: str):
    from diffusers import StableDiffusionPipeline

    unet = at_trained_size(plain_copy(generator.denoiser.model), teacher)
    sched = latent_scheduler(generator, teacher)
    safety = safety_parts(teacher)
    pipe = StableDiffusionPipeline(
        vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
        unet=unet, scheduler=sched, **safety,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    checked = safety["safety_checker"] is not None
    text = pipeline_readme(generator, sched, prompt, note, safety_checker=checked)
    (folder / "README.md").write_text(text, encoding="utf-8")


def _lora(generator: DiffusersGenerator, teacher: Any, folder: Path, prompt: str, note: str):
    from diffusers import StableDiffusionPipeline

    weights, meta = lora_state_dict(generator.denoiser)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=weights, unet_lora_adapter_metadata=meta, safe_serialization=True
    )
    sched = latent_scheduler(generator, teacher)
    sched.save_pretrained(folder / "scheduler")
    text = lora_readme(generator, sched, prompt, note, size_kwargs(teacher, lora=True))
    (folder / "README.md").write_text(text, encoding="utf-8")


def export_latent_student(
    generator: DiffusersGenerator,
    teacher: Any,
    out_dir: str | Path,
    *,
    steps: int,
    prompt: str = "a prompt",
    note: str = "",
) -> Path:
    """Write ``out_dir/lora/`` (a LoRA student) or ``out_dir/pipeline/`` (a full one) atomically
    and return it; ``steps`` must equal the student's K; ``prompt`` goes in the README."""
    if steps != generator.nfe:
        raise ValueError(f"steps={steps}, but the generator was trained for {generator.nfe}")
    streams = prompt_streams_note(teacher)  # prompt_2 / prompt_3, every family
    is_lora = isinstance(generator.denoiser, AdapterView)
    variant = variant_note(teacher, is_lora)  # an fp16-only teacher folder
    if is_flux(teacher):  # its README passes height/width always
        note = "\n".join(n for n in (streams, variant, note) if n)
        return export_flux_student(generator, teacher, out_dir, prompt=prompt, note=note)
    notes = (size_note(teacher, is_lora), clip_skip_note(teacher), streams, variant, note)
    note = "\n".join(n for n in notes if n)
    if is_sd3(teacher):
        return export_sd3_student(generator, teacher, out_dir, prompt=prompt, note=note)
    if is_sdxl(teacher):
        return export_sdxl_student(generator, teacher, out_dir, prompt=prompt, note=note)
    final = Path(out_dir) / ("lora" if is_lora else "pipeline")
    with atomic_folder(final) as tmp:
        (_lora if is_lora else _full)(generator, teacher, tmp, prompt, note)
    return final
