"""The folder every latent student export writes: ``OUT/lora/`` for a LoRA student (an
``AdapterView`` denoiser), ``OUT/pipeline/`` for a full one, written atomically with a
``README.md``; the family's writers (``export_sd3``, ``export_sdxl``, ``export_flux``) fill it.

A student trained at a ``resolution`` other than the teacher folder's (``teachers.diffusers_size``)
exports a network whose config ``sample_size`` is the trained latent size: diffusers 0.42 takes
the default ``height = width = sample_size · vae_scale_factor`` from it (``StableDiffusionPipeline.
__call__``: ``unet.config.sample_size``; ``StableDiffusionXLPipeline`` and
``StableDiffusion3Pipeline``: ``default_sample_size``, the UNet's or transformer's). A LoRA keeps
the base's config, so its README says to pass ``height``/``width``; ``FluxPipeline``'s
``default_sample_size`` is a constant (128), so Flux READMEs always pass them. A pipeline folder
does not store ``clip_skip`` (an argument of ``__call__``/``encode_prompt``), so a student
distilled at ``clip_skip = k > 0`` (``teachers.diffusers_clip_skip``) says in its README to
generate with ``clip_skip=k`` (``clip_skip_note``); likewise per-encoder prompts (``prompt_2``,
``prompt_3``: ``teachers.diffusers_prompts``) are arguments of the call (``prompt_streams_note``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .io import atomic_folder
from .sources.diffusers import DiffusersGenerator
from .sources.lora import AdapterView

__all__ = [
    "at_trained_size",
    "clip_skip_note",
    "prompt_streams_note",
    "size_kwargs",
    "size_note",
    "variant_note",
    "write_student",
]


def write_student(
    generator: DiffusersGenerator,
    out_dir: str | Path,
    *,
    full: Callable[[Path], None],
    lora: Callable[[Path], None],
    readme: Callable[[bool], str],
    note: str = "",
) -> Path:
    """Write ``out_dir/lora/`` (``lora(tmp)``) or ``out_dir/pipeline/`` (``full(tmp)``) with
    ``readme(is_lora)`` and ``note`` as its README, atomically; return the folder."""
    is_lora = isinstance(generator.denoiser, AdapterView)
    final = Path(out_dir) / ("lora" if is_lora else "pipeline")
    with atomic_folder(final) as tmp:
        (lora if is_lora else full)(tmp)
        text = readme(is_lora) + (f"\n{note}\n" if note else "")
        (tmp / "README.md").write_text(text, encoding="utf-8")
    return final


def _hw(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def at_trained_size(network: nn.Module, teacher: Any) -> nn.Module:
    """``network`` (a copy of the full student's UNet or SD3 transformer) with its config's
    ``sample_size`` set to the teacher's latent size ``teacher.shape[1:]`` where they differ
    (module docstring); unchanged otherwise."""
    h, w = teacher.shape[1:]
    if _hw(network.config.sample_size) != (h, w):
        network.register_to_config(sample_size=h if h == w else [h, w])
    return network


def size_note(teacher: Any, lora: bool) -> str:
    """A README line when the teacher was trained at a size other than its folder's ("" when
    not): what the pipeline's default size is now (full student), or the ``height``/``width``
    to pass (LoRA)."""
    if not _resized(teacher):
        return ""
    h, (H, W) = teacher.shape[1], teacher.image_shape[1:]
    own = _hw(teacher.model.config.sample_size)
    f = H // h  # pipe.vae_scale_factor
    trained, folder = f"Trained at {H}x{W} pixels (`resolution`)", f"{own[0] * f}x{own[1] * f}"
    if lora:
        return (
            f"- {trained}, not the teacher folder's default {folder}: a LoRA cannot change the "
            f"base pipeline's default size, so pass `height={H}, width={W}` in every call."
        )
    return (
        f"- {trained}: the network's `sample_size` is {h}, so the pipeline's default height "
        f"and width are {H}x{W} (the teacher folder's: {folder})."
    )


def size_kwargs(teacher: Any, lora: bool) -> str:
    """``"height=H, width=W, "`` for a LoRA README's call when the teacher was trained at a size
    other than its folder's default (the code a user copies must generate at the trained size;
    a full student's pipeline defaults to it already), else ``""``."""
    if not lora or not _resized(teacher):
        return ""
    H, W = teacher.image_shape[1:]
    return f"height={H}, width={W}, "


def _resized(teacher: Any) -> bool:
    """Whether the teacher was trained at a latent size other than its folder's default."""
    return _hw(teacher.model.config.sample_size) != tuple(teacher.shape[1:])


def clip_skip_note(teacher: Any) -> str:
    """A README line when the teacher encoded its prompts at ``clip_skip = k > 0`` ("" when
    not): the pipeline call must pass ``clip_skip=k`` too, or the text conditioning differs."""
    k = int(getattr(teacher, "clip_skip", 0))
    if not k:
        return ""
    line = (
        f"- Distilled with the prompts encoded at `clip_skip={k}`: generate with "
        f"`clip_skip={k}` in every call (a pipeline folder does not store it)."
    )
    text = teacher.text_encoder
    if hasattr(text, "encode_texts") or hasattr(text, "text_model"):
        return line
    return line + (  # diffusers 0.42 reads text_encoder.text_model.final_layer_norm
        " With transformers >= 5.6 (a flattened `CLIPTextModel`) diffusers <= 0.42 then raises "
        "`AttributeError: ... 'text_model'` (huggingface/diffusers#14124); first run "
        "`pipe.text_encoder.text_model = types.SimpleNamespace(final_layer_norm="
        "pipe.text_encoder.final_layer_norm)`."
    )


def prompt_streams_note(teacher: Any) -> str:
    """A README line when the teacher's prompt labels had their own ``prompt_2``/``prompt_3``
    (``teacher.prompt_rows``; "" when not): the pipeline call must pass them too, or every
    encoder reads ``prompt``, a condition the student was not trained on."""
    rows = tuple(getattr(teacher, "prompt_rows", ()))
    args = ("prompt", "prompt_2", "prompt_3")
    used = [j for j in range(1, len(rows[0]) if rows else 1) if any(r[j] != r[0] for r in rows)]
    if not used:
        return ""
    names = " and ".join(f"`{args[j]}`" for j in used)
    files = ", ".join(f"`prompts_{j + 1}`" for j in used)
    example = ", ".join(f"{args[j]}=[{rows[0][j]!r}] * 4" for j in used)
    return (
        f"- Distilled with a different prompt per text encoder: pass {names} with every "
        f"prompt, as trained (the run's {files} file: line i for prompt i), e.g. "
        f"`pipe([{rows[0][0]!r}] * 4, {example}, ...)`. Without it the pipeline reads `prompt` "
        "in every encoder, a condition the student was not trained on."
    )


def variant_note(teacher: Any, lora: bool) -> str:
    """A LoRA student's README note when the teacher's weights were a variant (``fp16``): its
    base, the teacher's own pipeline, loads only with ``variant=`` (``teachers.diffusers_variants``).
    A full student's folder holds standard weights: no note."""
    v = getattr(teacher, "variant", "")
    if not v or not lora:
        return ""
    return (
        f"- The teacher folder holds `{v}` weights: load it with `DiffusionPipeline.from_pretrained"
        f'("PATH/TO/TEACHER", variant="{v}", local_files_only=True)`.'
    )
