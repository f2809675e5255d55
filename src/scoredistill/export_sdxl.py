"""Export a student of an SDXL teacher (``teachers.diffusers_sdxl``): a full pipeline or a LoRA.

An SDXL teacher is a VP table like Stable Diffusion's, so the student's stock scheduler is the
SD path's: ``export.student_scheduler`` (an ``LCMScheduler`` on the teacher's betas cut at the
student's top, ``timestep_scaling = 1e4`` so each step returns the network's x0, fresh noise
between steps; ``EDMEulerScheduler`` at K = 1 for an EDM-family teacher, e.g. Playground
v2.5's). Diffusers 0.42 ``StableDiffusionXLPipeline.__call__`` runs the same loop as
``StableDiffusionPipeline``'s (``pipeline_stable_diffusion_xl.py``): ``prepare_latents`` draws
``randn(generator) · init_noise_sigma`` (LCM: 1), ``unet(scale_model_input(x) = x, k,
prompt_embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": (H, W, 0, 0, H, W)})``
with ``H, W`` the default ``unet.sample_size · vae_scale_factor``, and ``scheduler.step(...,
generator=)`` (``prepare_extra_step_kwargs``); ``guidance_scale=1`` skips CFG. So the same
``torch.Generator`` seed gives the student's latents (``sources.diffusers``).

- **Full student** -> ``OUT/pipeline/``: ``StableDiffusionXLPipeline`` with the teacher's VAE,
  both text encoders and tokenizers, its ``force_zeros_for_empty_prompt``, the student's UNet
  and that scheduler (no watermarker: ``add_watermarker=False``).
- **LoRA student** -> ``OUT/lora/``: ``pytorch_lora_weights.safetensors`` written by
  ``StableDiffusionXLPipeline.save_lora_weights(unet_lora_layers=)`` (keys ``unet.<module>...``
  in diffusers' layout, no PEFT ``base_model.model.`` prefix; the ``LoraConfig`` as metadata so
  ``lora_alpha`` reloads), ``scheduler/`` and a README: load it with
  ``pipe.load_lora_weights(OUT/lora)`` into the teacher's own pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .export import network_timesteps, scheduler_line, student_scheduler
from .export_folder import at_trained_size, size_kwargs, write_student
from .export_sd3 import plain_copy
from .sources.diffusers import DiffusersGenerator
from .sources.lora import lora_state_dict
from .teachers.diffusers_sdxl import MicroCond, SDXLTextEncoder

__all__ = ["export_sdxl_student", "is_sdxl", "readme"]


def is_sdxl(teacher: Any) -> bool:
    """Whether ``teacher`` was loaded from a ``StableDiffusionXLPipeline`` folder."""
    return isinstance(getattr(teacher, "text_encoder", None), SDXLTextEncoder)


def readme(
    generator: DiffusersGenerator,
    sched: Any,
    prompt: str,
    lora: bool,
    micro: MicroCond | None = None,
    size: str = "",
) -> str:
    """README.md of ``OUT/pipeline`` or ``OUT/lora``: how to load and call it; ``sched`` the stock
    scheduler saved with it; ``micro`` the
    micro-conditioning trained with (its non-default arguments go in the call); ``size``
    ``export_folder.size_kwargs`` (a LoRA trained at another size passes it)."""
    k, name = generator.nfe, type(sched).__name__
    where = "PATH/TO/TEACHER" if lora else "PATH/TO/pipeline"
    load_lora = (
        'pipe.load_lora_weights("PATH/TO/lora")\n'
        f'pipe.scheduler = {name}.from_pretrained("PATH/TO/lora/scheduler")\n'
    )
    kwargs = (micro or MicroCond()).pipeline_kwargs(negative=False)  # no CFG at K steps
    extra = "".join(f"{name}={value}, " for name, value in kwargs.items())
    code = (
        f"import torch\nfrom diffusers import DiffusionPipeline, {name}\n\n"
        f'pipe = DiffusionPipeline.from_pretrained("{where}", local_files_only=True)\n'
        f"{load_lora if lora else ''}images = pipe([{prompt!r}] * 4, num_inference_steps={k}, "
        f"{size}{extra}guidance_scale=1.0, generator=torch.Generator().manual_seed(0), "
        'output_type="np").images\n'
    )
    hw = (
        "the height and width above"
        if size
        else "the default height and width (the UNet's `sample_size` x the VAE's factor)"
    )
    micro_line = (
        f"- Micro-conditioning as trained: {hw}, `original_size = target_size` = that size, "
        "`crops_coords_top_left = (0, 0)`.\n"
        if not kwargs
        else "- Micro-conditioning as trained (`sdxl.*` keys): pass "
        + ", ".join(f"`{name}={value}`" for name, value in kwargs.items())
        + f" as above; sizes not given are {hw.split(' (')[0]}.\n"
    )
    what = "A LoRA on the SDXL teacher's UNet" if lora else "A `StableDiffusionXLPipeline`"
    keys = "- Keys: diffusers' `unet.` layout; rank and alpha in the metadata.\n"
    return (
        f"# {k}-step SDXL student distilled with scoredistill\n\n{what}, trained for **K = {k}** "
        f"step(s) at the network timesteps {network_timesteps(sched)}.\n\n"
        f"```python\n{code}```\n\n"
        + scheduler_line(sched)
        + micro_line
        + "- `guidance_scale=1.0`: the teacher's guidance is distilled into the student.\n"
        f"- `num_inference_steps` must be {k}.\n" + (keys if lora else "")
    )


def _full(generator: DiffusersGenerator, teacher: Any, sched: Any, folder: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    text: SDXLTextEncoder = teacher.text_encoder
    pipe = StableDiffusionXLPipeline(
        vae=teacher.vae, text_encoder=text.encoders[0], text_encoder_2=text.encoders[1],
        tokenizer=text.tokenizers[0], tokenizer_2=text.tokenizers[1],
        unet=at_trained_size(plain_copy(generator.denoiser.model), teacher), scheduler=sched,
        force_zeros_for_empty_prompt=text.force_zeros_for_empty_prompt, add_watermarker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)


def _lora(generator: DiffusersGenerator, sched: Any, folder: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    weights, meta = lora_state_dict(generator.denoiser)
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=weights, unet_lora_adapter_metadata=meta, safe_serialization=True
    )
    sched.save_pretrained(folder / "scheduler")


def export_sdxl_student(
    generator: DiffusersGenerator,
    teacher: Any,
    out_dir: str | Path,
    *,
    prompt: str = "a prompt",
    note: str = "",
) -> Path:
    """Write ``out_dir/lora/`` (a LoRA student) or ``out_dir/pipeline/`` (a full one) of an SDXL
    teacher atomically and return it (module docstring); ``prompt`` goes in the README."""
    sched = student_scheduler(generator, teacher)
    return write_student(
        generator,
        out_dir,
        full=lambda tmp: _full(generator, teacher, sched, tmp),
        lora=lambda tmp: _lora(generator, sched, tmp),
        readme=lambda is_lora: readme(
            generator,
            sched,
            prompt,
            is_lora,
            teacher.text_encoder.micro,
            size_kwargs(teacher, is_lora),
        ),
        note=note,
    )
