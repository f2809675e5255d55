"""Latent text-to-image diffusers pipelines as teachers: ``D(z_t, t, cond)`` on VAE latents.

A ``StableDiffusionPipeline``-layout folder (``unet/`` ``UNet2DConditionModel``, ``vae/``
``AutoencoderKL`` or ``AutoencoderTiny``, ``text_encoder/`` + ``tokenizer/`` from transformers,
``scheduler/``) becomes a teacher in **latent space**. The time conversion, input scaling and
output → x0 are ``DiffusersTeacher``'s (reference note ``diffusers_integration.md`` §0–§1); this
module adds only what is latent or textual:

- the scaled latent ``z = (E(x) - shift) · scale`` (SD: ``scaling_factor``, no shift, note §4;
  SD3 / Flux: ``shift_factor``; SDXL: ``latents_mean``/``std`` per channel: ``diffusers_vae``), flattened to
  ``(B, c·h·w)`` like every library sample; ``decode`` inverts it through the VAE in float32
  (fp16 VAEs give NaNs, note §7 pitfall 6) and clamps to [-1, 1] as the pipeline's postprocessing;
- the condition: ``TextCond`` (``text_cond``: prompt embeddings ``(B, L, E)`` and the null
  embedding that CFG's unconditional branch uses: the empty prompt's, or a negative prompt's;
  ``encode_text`` the single-CLIP embeddings), or integer prompt ids ``(B,)`` into a prompt list
  registered with ``set_prompt_labels`` — then ``NULL_LABEL`` is the null prompt and every
  label-based ingredient (guidance, label dropout) works unchanged;
- prompt embeddings are computed once per prompt (with its ``prompt_2``/``prompt_3``:
  ``diffusers_prompts``) and cached (distillation is data-free on a prompt list);
  ``encode_prompts`` mirrors ``StableDiffusionPipeline.encode_prompt`` (``model_max_length``
  padding, the last hidden state or ``clip_skip``'s layer: ``diffusers_clip_skip``).

Loading is offline (``local_files_only=True``); every problem with a folder is a one-line
``TeacherFolderError`` naming the file and key. ``StableDiffusion3Pipeline`` folders (a
flow-matching transformer, pooled text embeddings) load through ``diffusers_sd3``,
``StableDiffusionXLPipeline`` folders (two CLIP encoders, ``added_cond_kwargs``) through
``diffusers_sdxl``: the text encoder object names the network's pooled keyword
(``added_cond_kwargs``) and may zero the empty negative prompt (``force_zeros_for_empty_prompt``).
``FluxPipeline`` folders (packed latents, dynamic shift, embedded guidance) load through
``diffusers_flux``, whose ``FluxNetwork`` packs around the transformer and carries the
schedule at the teacher's size. Folder indexing and SD checks: ``diffusers_folders``; a
training ``resolution`` other than the folder's own size: ``diffusers_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..parametrization import NULL_LABEL
from ..schedules import Schedule
from .diffusers import (
    DiffusersTeacher,
    TeacherFolderError,
    _diffusers_class,
    _scheduler_class,
)
from .diffusers_clip_skip import check_clip_skip
from .diffusers_flux import is_flux_index, load_flux_parts
from .diffusers_folders import check_sd_configs, index_folder
from .diffusers_parts import _load, load_text_parts
from .diffusers_prompts import PromptCache, negative_row, prompt_args, prompt_rows
from .diffusers_sd3 import load_sd3_parts
from .diffusers_sdxl import is_sdxl_index, load_sdxl_parts
from .diffusers_size import training_latent_hw
from .diffusers_vae import LatentForm, latent_affine
from .diffusers_variants import pick_variant
from .text_cond import TextCond, _opt, encode_text, warn_truncated

__all__ = ["LatentDiffusersTeacher", "TextCond", "encode_text", "load_latent_teacher"]


class LatentDiffusersTeacher(DiffusersTeacher):
    """A text-conditional latent teacher: ``denoise(z_t, t, cond)`` with ``z_t: (B, c·h·w)``
    (or ``(B, c, h, w)``), ``cond`` a ``TextCond``, prompt ids ``(B,)`` (``set_prompt_labels``)
    or None (the empty prompt). ``encode``/``decode`` map images ``(B, C, H, W)`` in [-1, 1];
    ``latent_hw`` the latent size ``(h, w)`` trained at (None: the network's ``sample_size``);
    ``clip_skip`` the prompts' diffusers ``clip_skip`` (0: None; set before prompts are encoded,
    ``load_latent_teacher``), the null prompt's rows always unskipped (``diffusers_clip_skip``)."""

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        scheduler: Any,
        text_encoder: nn.Module,
        tokenizer: Any,
        *,
        schedule: Schedule | None = None,
        latent_hw: Sequence[int] | None = None,
        latent_form: LatentForm = "sd",
    ) -> None:
        super().__init__(unet, scheduler, schedule=schedule)
        if latent_hw is not None:  # a training resolution (diffusers_size), not the config's
            self.shape = (self.shape[0], *(int(v) for v in latent_hw))
            self.dim = math.prod(self.shape)
        vcfg, ucfg = dict(vae.config), dict(unet.config)
        if vcfg["latent_channels"] != self.shape[0]:
            got = f"latent_channels={vcfg['latent_channels']}, unet in_channels={self.shape[0]}"
            raise ValueError(f"the VAE's latents do not fit the UNet: {got}; they must be equal")
        width = getattr(getattr(text_encoder, "config", None), "hidden_size", None)
        if width is not None and ucfg.get("cross_attention_dim") not in (None, width):
            got = f"hidden_size={width}, unet cross_attention_dim={ucfg['cross_attention_dim']}"
            raise ValueError(f"the text embeddings do not fit the UNet: {got}; must be equal")
        if next(vae.parameters()).dtype != torch.float32:  # fp16 VAEs give NaNs (§7, 6)
            vae = vae.to(torch.float32)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        # z = (E(x) - shift) * scale per channel, as the family's pipeline reads its VAE's
        # config: SD scales only; SD3 / Flux shift_factor; SDXL latents_mean / std (diffusers_vae)
        self.latent_shift, self.latent_scale = latent_affine(vcfg, latent_form)
        f = 2 ** (len(vcfg["block_out_channels"]) - 1)  # pipe.vae_scale_factor
        self.image_shape = (int(vcfg["in_channels"]), self.shape[1] * f, self.shape[2] * f)
        self.clip_skip = 0
        self.prompt_cache = PromptCache(self._encode_rows)  # per (row, clip_skip)
        self.prompt_table: TextCond | None = None
        self.prompt_rows: tuple[tuple[str, ...], ...] = ()  # the labels' rows (prompt_2, ...)
        self.eval()  # dropout off in every part (note §3: built models start in train mode)

    text_encoder_calls = property(lambda self: self.prompt_cache.calls)  # the cache's test

    def encode_prompts(
        self, prompts: Sequence[str], negative_prompt: str = "", **streams: Any
    ) -> TextCond:
        """``TextCond`` for ``prompts`` (its null: ``negative_prompt``'s embedding); ``streams``:
        diffusers' ``prompt_2=``/``prompt_3=`` (lists as long as ``prompts``) and
        ``negative_prompt_2=``/``negative_prompt_3=`` (``diffusers_prompts``); rows not seen
        before are encoded in one batch without gradients and cached."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        bad = [p for p in [*prompts, negative_prompt] if not isinstance(p, str)]
        if bad:
            raise ValueError(f"prompts must be strings; got {type(bad[0]).__name__} {bad[0]!r}")
        args = prompt_args(self.text_encoder)
        negs = {k: streams.pop(k) for k in list(streams) if k.startswith("negative_")}
        null_row = negative_row(args, negative_prompt, **negs)
        keys = [(r, self.clip_skip) for r in prompt_rows(prompts, args, **streams)]
        (null, null_pooled), *got = self.prompt_cache.get([(null_row, 0), *keys])  # null: no skip
        stack = torch.stack([e for e, _ in got])
        pooled_stack = None if null_pooled is None else torch.stack([p for _, p in got])
        nulls = self._null_of(null_row, null, null_pooled)
        ids, null_ids = self._time_id_rows(len(prompts))
        return TextCond(stack, nulls[0], tuple(prompts), pooled_stack, nulls[1], ids, null_ids)

    def encode_null(self, negative_prompt: str) -> tuple[Tensor, Tensor | None]:
        """``(null (1, L, E), null_pooled (1, P) or None)``: guidance's unconditional row for
        ``negative_prompt`` exactly as ``encode_prompts`` gives it (no clip skip; SDXL's zeros
        for an empty one), encoded without gradients and *not* cached: for drawing from a long
        list of negatives (SNOOPI's NASA-T, ``sources.nasa_student.NegativeDraw``)."""
        row = negative_row(prompt_args(self.text_encoder), negative_prompt)
        with torch.no_grad():
            embeds, pooled = self._encode_rows([row], 0)
        return self._null_of(row, embeds[0], _opt(pooled, lambda p: p[0]))

    def _null_of(
        self, row: tuple[str, ...], null: Tensor, pooled: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The null row ``(1, L, E)``, ``(1, P)`` of ``row``'s embeddings: zeros where the text
        encoder says so for the empty negative (SDXL's ``negative_prompt=None``)."""
        zeros = getattr(self.text_encoder, "force_zeros_for_empty_prompt", False)  # SDXL's
        if zeros and row == ("",) * len(row):
            null, pooled = torch.zeros_like(null), _opt(pooled, torch.zeros_like)
        return null[None], _opt(pooled, lambda p: p[None])

    def _time_id_rows(self, n: int) -> tuple[Tensor | None, Tensor | None]:
        """SDXL's ``(time_ids (n, 6), null_time_ids (1, 6))`` at the training size (the text
        encoder's ``micro``: ``diffusers_sdxl_micro``); ``(None, None)`` for other families."""
        rows = getattr(self.text_encoder, "time_id_rows", None)
        if rows is None:
            return None, None
        cond, null = rows(self.image_shape[1:])
        return cond.expand(n, -1), null

    def _encode_rows(self, rows: Sequence[tuple[str, ...]], clip_skip: int) -> Any:
        columns = [list(c) for c in zip(*rows, strict=True)]  # (prompt, prompt_2, ...) per row
        streams = dict(zip(("texts_2", "texts_3"), columns[1:], strict=False))
        return self.encode_texts([r[0] for r in rows], clip_skip, **streams)

    def encode_texts(
        self, texts: Sequence[str], clip_skip: int = 0, **streams: Sequence[str]
    ) -> tuple[Tensor, Tensor | None]:
        """``(embeds (N, L, E), pooled (N, P) or None)`` of ``texts`` as the pipeline computes
        them at ``clip_skip`` (0: None): ``encode_text``, or SD3's three encoders
        (``diffusers_sd3.SD3TextEncoder``), or SDXL's two (``diffusers_sdxl.SDXLTextEncoder``);
        ``streams``: ``texts_2=``/``texts_3=``, the other encoders' texts (``prompt_2``...)."""
        if hasattr(self.text_encoder, "encode_texts"):
            skip = {"clip_skip": clip_skip} if clip_skip else {}  # Flux's takes none
            return self.text_encoder.encode_texts(texts, **skip, **streams)
        warn_truncated(self.tokenizer, texts)  # once per new prompt: the cache calls this
        return encode_text(self.tokenizer, self.text_encoder, texts, clip_skip), None

    def set_prompt_labels(
        self, prompts: Sequence[str], negative_prompt: str = "", **streams: Any
    ) -> TextCond:
        """Integer ``cond`` ``i`` now means ``prompts[i]`` (with ``prompt_2[i]``... of
        ``streams``; ``NULL_LABEL``: the null prompt), so ``num_classes = len(prompts)``;
        returns the table."""
        self.prompt_table = self.encode_prompts(prompts, negative_prompt, **streams)
        rows = {k: v for k, v in streams.items() if not k.startswith("negative_")}
        self.prompt_rows = tuple(prompt_rows(prompts, prompt_args(self.text_encoder), **rows))
        self.num_classes = len(prompts)
        return self.prompt_table

    def network_condition(self, cond: Any, n: int, device: torch.device) -> dict[str, Any]:
        """``encoder_hidden_states: (n, L, E)`` for a ``TextCond``, prompt ids or None (the
        null condition), and where the condition has pooled embeddings ``pooled_projections:
        (n, P)`` (SD3) or the text encoder's ``added_cond_kwargs`` (SDXL)."""
        if cond is None:
            cond = self.encode_prompts([""]).null_like()
        elif torch.is_tensor(cond) and not cond.dtype.is_floating_point:
            cond = self._rows_of_labels(cond.reshape(n))
        elif not isinstance(cond, TextCond):
            got = type(cond).__name__
            raise ValueError(f"cond must be a TextCond, prompt ids (B,) or None; got {got}")
        if len(cond) not in (1, n):
            raise ValueError(f"TextCond has {len(cond)} rows for a batch of {n}; valid: 1, {n}")
        dtype = next(self.model.parameters()).dtype
        out = {"encoder_hidden_states": cond.embeds.expand(n, -1, -1).to(device, dtype)}
        if cond.pooled is not None:
            ids = _opt(cond.time_ids, lambda t: t.expand(n, -1).to(device, dtype))
            out.update(self._pooled_kwargs(cond.pooled.expand(n, -1).to(device, dtype), ids))
        return out

    def _pooled_kwargs(self, pooled: Tensor, ids: Tensor | None) -> dict[str, Any]:
        """``{"pooled_projections": pooled}``, or the text encoder's own keywords for ``pooled:
        (n, P)`` and the rows' time ids at the pixel size (``SDXLTextEncoder.added_cond_kwargs``)."""
        added = getattr(self.text_encoder, "added_cond_kwargs", None)
        if added is None:
            return {"pooled_projections": pooled}
        return added(pooled, self.image_shape[1:], ids)

    def _rows_of_labels(self, ids: Tensor) -> TextCond:
        table = self.prompt_table
        if table is None:
            raise ValueError(
                "integer cond needs set_prompt_labels(prompts) first; or pass a TextCond"
            )
        if bool(((ids < NULL_LABEL) | (ids >= len(table))).any()):
            got = ids.unique().tolist()
            raise ValueError(f"prompt ids must lie in [{NULL_LABEL}, {len(table) - 1}]; got {got}")
        return table[ids.clamp(min=0).tolist()].with_null_rows(ids == NULL_LABEL)  # B rows only

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents ``(B, c·h·w)`` of images ``x: (B, C, H, W)`` in [-1, 1]: the posterior
        mean, or a posterior sample with ``generator``; float32, differentiable in ``x``."""
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; valid: (B, *{self.image_shape})")
        p = next(self.vae.parameters())
        out = self.vae.encode(x.to(p.device, torch.float32))
        if hasattr(out, "latent_dist"):  # AutoencoderKL; AutoencoderTiny returns .latents
            dist = out.latent_dist
            z = dist.mean if generator is None else dist.sample(generator)
        else:
            z = out.latents
        shift, scale = self.latent_shift.to(z), self.latent_scale.to(z)
        return ((z - shift) * scale).reshape(x.shape[0], -1)

    def decode(self, z: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] from latents ``z: (B, c·h·w) | (B, c, h, w)``."""
        if z[0].numel() != self.dim:
            raise ValueError(f"z has shape {tuple(z.shape)}; valid: (B, {self.dim})")
        p = next(self.vae.parameters())
        z = z.reshape(z.shape[0], *self.shape).to(p.device, torch.float32)
        shift, scale = self.latent_shift.to(z), self.latent_scale.to(z)
        return self.vae.decode(z / scale + shift).sample.clamp(-1, 1)


def _latent_form(index: dict[str, Any]) -> LatentForm:
    """How the folder's pipeline maps its VAE's latent (``diffusers_vae``)."""
    if is_flux_index(index) or "unet" not in index:  # Flux, SD3
        return "shift"
    return "sdxl" if is_sdxl_index(index) else "sd"


def load_latent_teacher(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    schedule: Schedule | None = None,
    resolution: int = 0,
    clip_skip: int = 0,
    variant: str = "",
) -> LatentDiffusersTeacher:
    """A latent teacher from a local ``StableDiffusionPipeline``-layout folder (or a run folder
    holding ``pipeline/``; ``StableDiffusion3Pipeline``: ``diffusers_sd3``;
    ``StableDiffusionXLPipeline``: ``diffusers_sdxl``; ``FluxPipeline``: ``diffusers_flux``,
    its schedule ``ShiftedFlowSchedule(e^mu)`` at the VAE's ``sample_size``); the UNet in ``dtype``,
    the VAE and text encoder in float32; frozen, eval mode. ``resolution``: the square pixel size
    trained at (0: the folder's own; ``diffusers_size``, checked before any weights load, a
    ``ResolutionError``); ``clip_skip`` diffusers' (0: None; ``diffusers_clip_skip``, a
    ``ConfigError`` where the pipeline could not take it); ``variant`` the weight variant to
    prefer (``diffusers_variants``: an fp16-only folder loads without it). Problems raise
    ``TeacherFolderError`` (a ``ValueError``) naming file and key."""
    path, index = index_folder(Path(path))
    hw = training_latent_hw(path, index, resolution)
    if is_flux_index(index):  # its network carries the size and the shift mu at that size
        unet, vae, sched, text_encoder = load_flux_parts(
            path, index, device=device, dtype=dtype, latent_hw=hw, variant=variant
        )
        tokenizer = None  # FluxTextEncoder holds its two tokenizers
    elif "unet" not in index:  # a StableDiffusion3Pipeline folder (index_folder)
        unet, vae, sched, text_encoder = load_sd3_parts(
            path, index, device=device, dtype=dtype, variant=variant
        )
        tokenizer = None  # SD3TextEncoder holds its three tokenizers
    elif is_sdxl_index(index):
        unet, vae, sched, text_encoder = load_sdxl_parts(
            path, index, device=device, dtype=dtype, variant=variant
        )
        tokenizer = None  # SDXLTextEncoder holds its two tokenizers
    else:
        check_sd_configs(path)
        sched_cls = _scheduler_class(path / "scheduler" / "scheduler_config.json")
        unet_cls = _diffusers_class(path / "unet", index["unet"][1], "ModelMixin")
        vae_cls = _diffusers_class(path / "vae", index["vae"][1], "ModelMixin")
        text = load_text_parts(path, index, ("text_encoder", "tokenizer"), variant)
        unet = _load(path / "unet", unet_cls, variant, torch_dtype=dtype).to(device)
        vae = _load(path / "vae", vae_cls, variant, torch_dtype=torch.float32).to(device)
        sched = _load(path / "scheduler", sched_cls)
        text_encoder, tokenizer = text["text_encoder"].to(device), text["tokenizer"]
    native = getattr(unet, "native_schedule", None)  # Flux: the shift at the teacher's size
    try:
        teacher = LatentDiffusersTeacher(
            unet.eval().requires_grad_(False),
            vae,
            sched,
            text_encoder,
            tokenizer,
            schedule=schedule or native,
            latent_hw=hw,
            latent_form=_latent_form(index),
        )
    except (ValueError, TypeError, KeyError) as err:
        raise TeacherFolderError(f"{path}: {err}".replace("\n", " ")) from None
    teacher.clip_skip = check_clip_skip(text_encoder, clip_skip)
    network = "unet" if (path / "unet").is_dir() else "transformer"
    teacher.variant = pick_variant(path / network, variant) or ""  # the exported READMEs' note
    teacher.folder = path  # the export reads its safety checker from it (export_latent)
    if native is not None:  # not the scheduler's table shift (dynamic shifting ignores it)
        teacher.native_schedule = native
        teacher.schedule = native if schedule is None else teacher.schedule
    return teacher
