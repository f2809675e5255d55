"""Config keys that only some teacher families take: SDXL's micro-conditioning (``sdxl.*``),
Flux's embedded guidance (``flux.guidance``) and the T5 length of SD3 and Flux
(``max_sequence_length``).

- ``sdxl.original_size``, ``sdxl.crops_coords_top_left``, ``sdxl.target_size`` and their
  ``negative_`` forms are ``StableDiffusionXLPipeline.__call__``'s arguments of the same names
  (``teachers.diffusers_sdxl_micro``): ``[H, W]`` / ``[top, left]`` pairs, ``[]`` for the
  pipeline's default (the training size; crops ``(0, 0)``). The negative ones act on CFG's null
  rows and, as in the pipeline, only when both negative sizes are given; one without the other
  is refused rather than silently ignored. The student is trained with these ids, so its
  exported README passes them to the pipeline.
- ``flux.guidance`` is ``FluxPipeline.__call__``'s ``guidance_scale`` for transformers with a
  guidance embedding (FLUX.1-dev: ``guidance_embeds=true``), fed to every teacher call; null
  keeps the pipeline's default 3.5. The export writes it in the README's call.
- ``max_sequence_length`` is the ``__call__`` argument of ``StableDiffusion3Pipeline`` (default
  256) and ``FluxPipeline`` (512, or the T5 tokenizer's ``model_max_length`` when smaller): T5
  pads and truncates the prompt to it; 0 keeps the default, the pipelines' ``check_inputs``
  refuse more than 512. FLUX.1-schnell is used at 256. The exported README passes it.

Each key is refused, naming it, on a teacher of another family (or, for ``flux.guidance``, a
Flux transformer without a guidance embedding): one line, exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any

from ..config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveInt, Range

__all__ = ["FluxKeys", "SDXLKeys", "T5Length", "apply_teacher_keys", "micro_cond"]


@dataclass(frozen=True)
class SDXLKeys:
    original_size: tuple[PositiveInt, ...] = ()  # [H, W]; []: the training size
    crops_coords_top_left: tuple[NonNegativeInt, ...] = ()  # [top, left]; []: (0, 0)
    target_size: tuple[PositiveInt, ...] = ()  # [H, W]; []: the training size
    negative_original_size: tuple[PositiveInt, ...] = ()  # CFG's null rows (with the next)
    negative_crops_coords_top_left: tuple[NonNegativeInt, ...] = ()
    negative_target_size: tuple[PositiveInt, ...] = ()


T5Length = Annotated[int, Range(0, 512, note="0: the pipeline's default")]


@dataclass(frozen=True)
class FluxKeys:
    guidance: NonNegativeFloat | None = None  # embedded guidance; null: FluxPipeline's 3.5


def micro_cond(keys: SDXLKeys) -> Any:
    """``diffusers_sdxl_micro.MicroCond`` of the ``sdxl.*`` keys; bad pairs raise
    ``ConfigError`` naming the key."""
    from ..teachers.diffusers_sdxl_micro import MicroCond

    given = {}
    for f in fields(keys):
        value = getattr(keys, f.name)
        if value and len(value) != 2:
            what = "[top, left]" if "crops" in f.name else "[H, W]"
            raise ConfigError(f"config key 'sdxl.{f.name}' must be {what} or [], got {list(value)}")
        if value:
            given[f.name] = tuple(value)
    negatives = {"negative_original_size", "negative_target_size"}
    if (half := negatives & set(given)) and half != negatives:
        (name,) = half
        (other,) = negatives - half
        raise ConfigError(
            f"config key 'sdxl.{name}' acts only together with 'sdxl.{other}' "
            "(StableDiffusionXLPipeline ignores one without the other)"
        )
    if "negative_crops_coords_top_left" in given and not half:
        raise ConfigError(
            "config key 'sdxl.negative_crops_coords_top_left' acts only with "
            "'sdxl.negative_original_size' and 'sdxl.negative_target_size'"
        )
    return MicroCond(**given)


def _set_keys(keys: Any, prefix: str) -> list[str]:
    return [f"{prefix}.{f.name}" for f in fields(keys) if getattr(keys, f.name) not in ((), None)]


def apply_teacher_keys(cfg: Any, teacher: Any) -> None:
    """Set ``cfg``'s family keys (``sdxl``, ``flux``, ``max_sequence_length``) on a loaded
    latent teacher, before its prompts are encoded."""
    _set_t5_length(cfg.max_sequence_length, teacher)
    _set_micro(cfg.sdxl, teacher)
    _set_flux_guidance(cfg.flux, teacher)


def _set_t5_length(length: int, teacher: Any) -> None:
    if not length:
        return
    if not hasattr(teacher.text_encoder, "max_sequence_length"):
        raise ConfigError(
            "config key 'max_sequence_length': the teacher has no T5 encoder "
            "(SD3 and Flux folders take it); valid: 0"
        )
    teacher.text_encoder.max_sequence_length = int(length)


def _set_micro(sdxl: SDXLKeys, teacher: Any) -> None:
    from ..export_sdxl import is_sdxl

    if not (given := _set_keys(sdxl, "sdxl")):
        return
    if not is_sdxl(teacher):
        raise ConfigError(
            f"config key {given[0]!r}: SDXL micro-conditioning, but the teacher is not a "
            "StableDiffusionXLPipeline folder"
        )
    teacher.text_encoder.micro = micro_cond(sdxl)


def _set_flux_guidance(flux: FluxKeys, teacher: Any) -> None:
    from ..export_flux import is_flux

    if flux.guidance is None:
        return
    if not is_flux(teacher):
        raise ConfigError("config key 'flux.guidance': the teacher is not a FluxPipeline folder")
    if not teacher.model.guidance_embeds:
        raise ConfigError(
            "config key 'flux.guidance': the teacher's transformer has guidance_embeds=false "
            "(no embedded guidance, as FLUX.1-schnell); use objective.guidance for CFG"
        )
    teacher.model.guidance = float(flux.guidance)
