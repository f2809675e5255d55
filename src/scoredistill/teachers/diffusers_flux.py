"""``FluxPipeline`` folders as latent teachers: a rectified-flow transformer on packed VAE latents
(Black Forest Labs 2024, FLUX.1; the flow of Esser et al. 2024, SD3).

The network is ``DiffusersTeacher``'s flow family (reference note ``diffusers_integration.md``
§1.4): ``x_s = (1 - s) x0 + s eps``, velocity ``v = eps - x0``, ``x0 = x_s - s v``. What Flux
changes mirrors diffusers 0.42 ``pipelines/flux/pipeline_flux.py``:

- **Packed latents.** The library's latent stays the VAE latent ``(B, C, h, w)`` (samplers,
  objectives and students unchanged); ``FluxNetwork`` packs it into ``(B, h/2 · w/2, 4C)`` tokens
  around the transformer call (``_pack_latents`` / ``_unpack_latents``), with the RoPE ids
  ``img_ids`` (``_prepare_latent_image_ids``: ``(0, row, col)``) and ``txt_ids`` zeros
  ``(L, 3)`` (``encode_prompt``), and passes ``timestep / 1000`` (``__call__``: the transformer
  multiplies by 1000 inside, ``transformer_flux.py`` ``forward``).
- **Size and shift.** Flux folders do not record a size; the teacher's image size is the VAE's
  ``sample_size`` (1024 in FLUX.1 folders: ``__call__``'s default ``default_sample_size ·
  vae_scale_factor``), its latent ``2 · (size // (2 f))`` (``prepare_latents``). At a fixed size
  the dynamic shift is a constant: ``mu = calculate_shift(h/2 · w/2, base_image_seq_len,
  max_image_seq_len, base_shift, max_shift)`` and the exponential ``time_shift(mu, 1, t) = e^mu /
  (e^mu + 1/t - 1)`` (``scheduling_flow_match_euler_discrete.py``) is the static
  ``s = k t / (1 + (k - 1) t)`` with ``k = e^mu``: the teacher's schedule is
  ``ShiftedFlowSchedule(e^mu)`` (``shift`` itself without ``use_dynamic_shifting``).
  ``pipeline_times`` is ``__call__``'s grid ``t = linspace(1, 1/n, n)`` (it passes these
  ``sigmas`` and ``mu`` to ``set_timesteps``). A training ``resolution`` (``diffusers_size``)
  replaces the VAE's size: latents, packed tokens and ``mu`` are those of ``height = width =``
  that size, as the pipeline computes them for it.
- **Text** (``encode_prompt``): CLIP (``CLIPTextModel``) ids padded to its ``model_max_length``,
  ``pooler_output`` -> ``pooled_projections``; T5 ids padded to ``max_sequence_length``
  (``__call__``'s 512, or the T5 tokenizer's ``model_max_length`` when smaller), output 0 ->
  ``encoder_hidden_states``; CLIP reads ``prompt``, T5 ``prompt_2 or prompt``
  (``diffusers_prompts``). Flux has no negative prompt by default: the library's null row
  (CFG's unconditional branch) is the encoded empty (or negative) prompt, which is the
  pipeline's ``true_cfg_scale`` branch (``negative_prompt=""``).
- **Embedded guidance.** ``guidance_embeds=True`` models (FLUX.1-dev) take a scalar
  ``guidance`` (``__call__``: ``torch.full([B], guidance_scale)``, default 3.5) in every call,
  conditional and null alike: ``FluxNetwork.guidance``, set at load (the ``flux.guidance``
  config key: ``runs.sd_teacher_keys``).

Refused, each as one ``TeacherFolderError`` line naming file and key: ``time_shift_type`` other
than ``exponential``, the grid flags ``shift_terminal`` / karras / exponential / beta sigmas,
``invert_sigmas``, ``in_channels != 4 · latent_channels``, ``joint_attention_dim`` other than
T5's ``d_model``, ``pooled_projection_dim`` other than CLIP's ``hidden_size``, a size not
divisible by ``2 f``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .diffusers import (
    ShiftedFlowSchedule,
    _fail,
    component_config,
)
from .diffusers_parts import check_components, folder_text_encoder, load_pipeline_parts
from .diffusers_sd3 import GRID_KEYS, SCHEDULER

__all__ = [
    "FluxNetwork",
    "FluxTextEncoder",
    "flux_mu",
    "flux_schedule",
    "is_flux_index",
    "load_flux_parts",
    "pack",
    "pipeline_times",
    "unpack",
]

PARTS = {  # model_index.json key: the library its class must come from
    "transformer": "diffusers",
    "vae": "diffusers",
    "scheduler": "diffusers",
    "text_encoder": "transformers",
    "tokenizer": "transformers",
    "text_encoder_2": "transformers",
    "tokenizer_2": "transformers",
}
PIPELINE, TRANSFORMER = "FluxPipeline", "FluxTransformer2DModel"
GUIDANCE = 3.5  # FluxPipeline.__call__'s guidance_scale default
MAX_SEQUENCE_LENGTH = 512  # FluxPipeline.__call__'s default and check_inputs' limit


def is_flux_index(index: dict[str, Any]) -> bool:
    """Whether ``model_index.json`` names a Flux pipeline (any ``Flux*`` class: only
    ``FluxPipeline`` loads, ``load_flux_parts`` refuses the others by name)."""
    return str(index.get("_class_name") or "").startswith("Flux")


def pack(z: Tensor) -> Tensor:
    """``(B, C, h, w) -> (B, h/2 · w/2, 4C)``: ``FluxPipeline._pack_latents``."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """``(B, h/2 · w/2, 4C) -> (B, C, h, w)``: ``FluxPipeline._unpack_latents`` (latent size)."""
    b, _, d = tokens.shape
    z = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device: Any = None, dtype: Any = None) -> Tensor:
    """``(h · w, 3)`` rows ``(0, row, col)`` of the packed grid ``h × w``
    (``FluxPipeline._prepare_latent_image_ids``)."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


def flux_mu(scheduler_config: dict[str, Any], image_seq_len: int) -> float:
    """``FluxPipeline.calculate_shift(image_seq_len, ...)`` with the scheduler's keys and
    ``__call__``'s defaults: ``mu`` linear in the packed token count."""
    base_len = scheduler_config.get("base_image_seq_len", 256)
    max_len = scheduler_config.get("max_image_seq_len", 4096)
    base, top = scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15)
    m = (top - base) / (max_len - base_len)
    return image_seq_len * m + (base - m * base_len)


def pipeline_times(steps: int) -> Tensor:
    """``(steps,)`` float64 library times of ``FluxPipeline.__call__``'s sigmas: it passes
    ``sigmas = linspace(1, 1/n, n)`` (unshifted) and ``mu`` to ``set_timesteps``, which shifts
    them by ``time_shift(mu, 1, ·)``; on ``ShiftedFlowSchedule(e^mu)`` the time is that ``t``."""
    return torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)


def flux_schedule(scheduler: Any, latent_hw: Sequence[int]) -> ShiftedFlowSchedule:
    """The teacher's schedule at latent size ``latent_hw``: ``ShiftedFlowSchedule(k)`` with
    ``k = e^mu`` (``use_dynamic_shifting``) or ``k = shift``; its range as
    ``diffusers_schedules.native_schedule`` (the training table's ``sigma_min``, sigma/alpha at
    most 80)."""
    cfg = dict(scheduler.config)
    h, w = latent_hw
    k = math.exp(flux_mu(cfg, (h // 2) * (w // 2))) if cfg.get("use_dynamic_shifting") else None
    flow = ShiftedFlowSchedule(float(cfg["shift"]) if k is None else k)
    s_lo = float(scheduler.sigma_min)
    return dataclasses.replace(
        flow, t_min=flow.t_at(max(s_lo / (1 - s_lo), 0.002)), t_max=flow.t_at(80.0)
    )


class FluxNetwork(nn.Module):
    """A ``FluxTransformer2DModel`` as a ``DiffusersTeacher`` network on unpacked latents:
    ``forward(sample (B, C, h, w), timestep = s · 1000, encoder_hidden_states, pooled_projections)
    -> (v (B, C, h, w),)`` (module docstring). ``config`` holds what the teacher reads
    (``in_channels = C``, ``sample_size = (h, w)``); ``guidance`` the embedded guidance scale;
    ``native_schedule`` the teacher's schedule (``flux_schedule``), ``mu`` the pipeline's."""

    def __init__(
        self, transformer: nn.Module, latent_hw: Sequence[int], scheduler: Any, guidance: float
    ) -> None:
        super().__init__()
        from diffusers.configuration_utils import FrozenDict

        self.transformer = transformer
        c = int(transformer.config.in_channels) // 4  # pipeline: num_channels_latents
        self.config = FrozenDict(in_channels=c, sample_size=tuple(int(v) for v in latent_hw))
        self.guidance = float(guidance)
        self.native_schedule = flux_schedule(scheduler, latent_hw)  # the teacher's
        h, w = self.config.sample_size  # the pipeline's mu (set_timesteps ignores it if static)
        self.mu = flux_mu(dict(scheduler.config), (h // 2) * (w // 2))

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    @property
    def _supports_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.transformer, "_supports_gradient_checkpointing", False))

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        pooled_projections: Tensor,
        return_dict: bool = False,
    ) -> tuple[Tensor]:
        b, _, h, w = sample.shape
        guidance = None
        if self.guidance_embeds:  # __call__: torch.full([1], guidance_scale).expand(B)
            guidance = torch.full((b,), self.guidance, device=sample.device, dtype=torch.float32)
        txt_ids = torch.zeros(encoder_hidden_states.shape[1], 3).to(sample.device, sample.dtype)
        v = self.transformer(
            hidden_states=pack(sample),
            timestep=timestep / 1000,  # __call__; the transformer multiplies by 1000
            guidance=guidance,
            pooled_projections=pooled_projections,
            encoder_hidden_states=encoder_hidden_states,
            txt_ids=txt_ids,
            img_ids=image_ids(h // 2, w // 2, sample.device, sample.dtype),
            return_dict=False,
        )[0]
        return (unpack(v, h, w),)


def width_problem(clip_hidden: int, t5_width: int, tcfg: dict[str, Any]) -> str:
    """Why the text encoders do not fit the transformer ("" when they do)."""
    joint, pooled = tcfg.get("joint_attention_dim"), tcfg.get("pooled_projection_dim")
    if joint != t5_width:
        return f"joint_attention_dim={joint} but text_encoder_2 (T5) has d_model={t5_width}"
    if pooled != clip_hidden:
        return (
            f"pooled_projection_dim={pooled} but text_encoder (CLIP) has hidden_size={clip_hidden}"
        )
    return ""


class FluxTextEncoder(nn.Module):
    """The text encoder of a Flux ``LatentDiffusersTeacher``: CLIP (pooled) and T5 (sequence)
    with their tokenizers; ``encode_texts`` gives ``FluxPipeline.encode_prompt``'s embeddings."""

    def __init__(
        self,
        text_encoders: Sequence[nn.Module],
        tokenizers: Sequence[Any],
        transformer_config: Any,
        max_sequence_length: int | None = None,
    ) -> None:
        super().__init__()
        if len(text_encoders) != 2 or len(tokenizers) != 2 or any(e is None for e in text_encoders):
            raise ValueError("Flux needs two text encoders and tokenizers (CLIP, T5)")
        clip, t5 = (getattr(e, "config", None) for e in text_encoders)
        widths = getattr(clip, "hidden_size", None), getattr(t5, "d_model", None)
        if why := width_problem(*widths, dict(transformer_config)):
            raise ValueError(why)
        if max_sequence_length is None:
            limit = getattr(tokenizers[1], "model_max_length", MAX_SEQUENCE_LENGTH)
            max_sequence_length = min(MAX_SEQUENCE_LENGTH, int(limit))
        if not 1 <= max_sequence_length <= MAX_SEQUENCE_LENGTH:
            got = max_sequence_length
            raise ValueError(f"max_sequence_length={got}; valid: 1..{MAX_SEQUENCE_LENGTH}")
        self.encoders = nn.ModuleList(text_encoders)
        self.tokenizers = tuple(tokenizers)
        self.max_sequence_length = int(max_sequence_length)
        self.prompt_args = ("prompt", "prompt_2")  # encode_prompt's: CLIP, T5

    def encode_texts(
        self, texts: Sequence[str], texts_2: Sequence[str] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(encoder_hidden_states (N, max_sequence_length, d_model), pooled (N, hidden))``:
        ``_get_t5_prompt_embeds`` of ``texts_2`` (``prompt_2``; None: ``texts``) and
        ``_get_clip_prompt_embeds`` of ``texts``."""
        clip, t5 = self.encoders
        ids = self.tokenizers[0](
            list(texts),
            padding="max_length",
            max_length=self.tokenizers[0].model_max_length,  # the pipeline's tokenizer_max_length
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = clip(ids.to(next(clip.parameters()).device), output_hidden_states=False)
        ids = self.tokenizers[1](
            list(texts if texts_2 is None else texts_2),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        embeds = t5(ids.to(next(t5.parameters()).device), output_hidden_states=False)[0]
        return embeds, pooled.pooler_output


def _scheduler_problem(cfg: dict[str, Any]) -> str:
    """Why a scheduler config is not a Flux grid the teacher reproduces ("" when it is)."""
    if (name := cfg.get("_class_name")) != SCHEDULER:
        return f"_class_name {name!r}; valid: {SCHEDULER}"
    if (kind := cfg.get("time_shift_type", "exponential")) != "exponential":
        return f"time_shift_type {kind!r} is not supported; valid: 'exponential'"
    if bad := [k for k in (*GRID_KEYS, "invert_sigmas") if cfg.get(k)]:
        return f"{bad[0]}={cfg[bad[0]]!r}: grid not reproduced; valid: off"
    return ""


def latent_size(vcfg: dict[str, Any]) -> tuple[int, int] | str:
    """``(h, w)`` latent size from the VAE's ``sample_size`` (``prepare_latents``:
    ``2 · (size // (2 f))``), or why there is none."""
    f = 2 ** (len(vcfg.get("block_out_channels") or (0,)) - 1)  # pipe.vae_scale_factor
    size = vcfg.get("sample_size")
    hw = [size, size] if isinstance(size, int) else list(size or [])
    if len(hw) != 2 or any(not isinstance(v, int) or v <= 0 or v % (2 * f) for v in hw):
        return f"sample_size={size!r} is the teacher's image size: valid a multiple of {2 * f}"
    return hw[0] // f, hw[1] // f


def _check_configs(path: Path, latent_hw: Sequence[int] | None = None) -> tuple[int, int]:
    """The transformer, scheduler, VAE and text widths fit, before any weights are read;
    returns the latent size: ``latent_hw`` when given (a training resolution), else the VAE's."""
    tcfg, scfg = (
        component_config(path, "transformer"),
        component_config(path, "scheduler", "scheduler_config.json"),
    )
    tpath, vpath = path / "transformer" / "config.json", path / "vae" / "config.json"
    if (name := tcfg.get("_class_name")) != TRANSFORMER:
        raise _fail(tpath, f"_class_name {name!r} is not supported; valid: {TRANSFORMER}")
    if why := _scheduler_problem(scfg):
        raise _fail(path / "scheduler" / "scheduler_config.json", why)
    vcfg = component_config(path, "vae")
    latent, inputs = vcfg.get("latent_channels"), tcfg.get("in_channels")
    if not isinstance(latent, int) or inputs != 4 * latent:
        what = f"in_channels={inputs} but vae/config.json has latent_channels={latent}"
        raise _fail(tpath, f"{what}; valid: 4 · latent_channels (2×2 packed latents)")
    if bad := [k for k in ("latents_mean", "latents_std") if vcfg.get(k) is not None]:
        raise _fail(vpath, f"{bad[0]} is set: not supported; valid: null")
    hw = latent_size(vcfg) if latent_hw is None else (int(latent_hw[0]), int(latent_hw[1]))
    if isinstance(hw, str):
        raise _fail(vpath, hw)
    clip, t5 = component_config(path, "text_encoder"), component_config(path, "text_encoder_2")
    if why := width_problem(clip.get("hidden_size"), t5.get("d_model"), tcfg):
        raise _fail(tpath, why)
    return hw


def load_flux_parts(
    path: Path,
    index: dict[str, Any],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    variant: str = "",
    guidance: float = GUIDANCE,
    latent_hw: Sequence[int] | None = None,
) -> tuple[FluxNetwork, nn.Module, Any, FluxTextEncoder]:
    """``(FluxNetwork, vae, scheduler, FluxTextEncoder)`` of a ``FluxPipeline`` folder whose
    ``model_index.json`` is ``index``, for ``diffusers_latent.load_latent_teacher``: every
    config checked before weights load; the transformer in ``dtype``, the rest float32; the
    network at ``latent_hw`` (a training resolution, ``diffusers_size``) or the VAE's size."""
    if (name := index.get("_class_name")) != PIPELINE:
        what = f"_class_name {name!r} is not supported; valid: {PIPELINE}"
        raise _fail(path / "model_index.json", what)
    check_components(path, index, PARTS)
    hw = _check_configs(path, latent_hw)
    transformer, vae, sched, text = load_pipeline_parts(
        path, index, "transformer", PARTS, device=device, dtype=dtype, variant=variant
    )
    encoder = folder_text_encoder(
        path,
        lambda: FluxTextEncoder(
            [text["text_encoder"].to(device), text["text_encoder_2"].to(device)],
            [text["tokenizer"], text["tokenizer_2"]],
            transformer.config,
        ),
    )
    network = FluxNetwork(transformer.eval().requires_grad_(False), hw, sched, guidance)
    return network, vae, sched, encoder
