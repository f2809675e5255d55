"""``StableDiffusionXLPipeline`` folders as latent teachers: a ``UNet2DConditionModel`` with
SDXL's added conditions (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for
High-Resolution Image Synthesis", §2.1 "micro-conditioning", §2.2 two text encoders).

The network, its scheduler (a VP table: Euler, DDIM, ...) and the time conversion are
``DiffusersTeacher``'s; ``diffusers_latent.load_latent_teacher`` builds a
``LatentDiffusersTeacher`` (VAE latents, ``TextCond``, prompt cache, prompt ids) with
``SDXLTextEncoder`` as its text encoder (composition, no subclass). What SDXL adds mirrors
diffusers 0.42 ``pipeline_stable_diffusion_xl.py``:

- ``encode_prompt``: both tokenizers pad and truncate to their ``model_max_length`` (equal);
  ``encoder_hidden_states = cat_E(h_1[-2], h_2[-2])``, the penultimate hidden states of
  ``text_encoder`` (``CLIPTextModel``) and ``text_encoder_2`` (``CLIPTextModelWithProjection``;
  ``clip_skip=None``; ``clip_skip=k``: ``h[-(k + 2)]``, no final layer norm,
  ``diffusers_clip_skip``); the pooled embedding is ``text_encoder_2``'s ``text_embeds``
  (output 0, "ALWAYS ... the final text encoder"), whatever ``clip_skip``; ``text_encoder``
  reads ``prompt``, ``text_encoder_2`` ``prompt_2 or prompt`` (``diffusers_prompts``);
- the null condition: with ``force_zeros_for_empty_prompt`` (``model_index.json``, default
  True) the pipeline's unconditional embeddings for an empty negative prompt are **zeros**
  (``zero_out_negative_prompt``); the teacher's null row for ``negative_prompt=""`` is zeros
  too (``LatentDiffusersTeacher.encode_prompts``), any other negative prompt is encoded;
- ``_get_add_time_ids(original_size=(H, W), crops_coords_top_left=(0, 0), target_size=(H, W))``
  with ``(H, W)`` the pixel size ``unet.sample_size · vae_scale_factor`` (``__call__``'s default
  height and width) or the training resolution passed as ``height = width`` (``diffusers_size``):
  by default ``time_ids = (H, W, 0, 0, H, W)`` for every row, conditional and null; other
  micro-conditioning (``original_size``, crops, ``target_size`` and their ``negative_`` forms for
  the null rows) is ``SDXLTextEncoder.micro`` (``diffusers_sdxl_micro.MicroCond``), set before
  the prompts are encoded;
- ``unet(..., added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})``.

A VAE with ``latents_mean`` and ``latents_std`` (Playground v2.5) maps its latent per channel,
as the pipeline decodes ``z · std / scaling_factor + mean`` (``diffusers_vae``).

Refused, each as one ``TeacherFolderError`` line: refiner layouts (``text_encoder`` null,
``requires_aesthetics_score``), latent statistics the pipeline cannot read (not 4 values),
widths that do not fit:
``projection_class_embeddings_input_dim = 6 · addition_time_embed_dim + projection_dim`` and
``cross_attention_dim = hidden_size_1 + hidden_size_2``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .diffusers import (
    _diffusers_class,
    _fail,
    component_config,
)
from .diffusers_parts import (
    check_components,
    folder_text_encoder,
    guidance_embedding_problem,
    load_pipeline_parts,
)
from .diffusers_sdxl_micro import MicroCond
from .diffusers_vae import latent_stats_problem

__all__ = ["MicroCond", "SDXLTextEncoder", "is_sdxl_index", "load_sdxl_parts", "width_problem"]

PARTS = {  # model_index.json key: the library its class must come from
    "unet": "diffusers",
    "vae": "diffusers",
    "scheduler": "diffusers",
    "text_encoder": "transformers",
    "tokenizer": "transformers",
    "text_encoder_2": "transformers",
    "tokenizer_2": "transformers",
}
N_TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w): _get_add_time_ids


def is_sdxl_index(index: dict[str, Any]) -> bool:
    """Whether ``model_index.json`` describes an SDXL UNet pipeline (class name or a second
    text encoder beside a ``unet``)."""
    name = str(index.get("_class_name") or "")
    return "unet" in index and (name.startswith("StableDiffusionXL") or "text_encoder_2" in index)


def width_problem(hidden: Sequence[int], projection: int, ucfg: dict[str, Any]) -> str:
    """Why the text encoders' widths do not fit the UNet ("" when they do): ``hidden`` the two
    encoders' ``hidden_size``, ``projection`` ``text_encoder_2``'s ``projection_dim``."""
    if (kind := ucfg.get("addition_embed_type")) != "text_time":
        return f"addition_embed_type={kind!r}; valid in an SDXL folder: 'text_time'"
    time_dim = ucfg.get("addition_time_embed_dim")
    extra = ucfg.get("projection_class_embeddings_input_dim")
    want = N_TIME_IDS * time_dim + projection if isinstance(time_dim, int) else None
    if extra != want:
        return (
            f"projection_class_embeddings_input_dim={extra} but 6 * addition_time_embed_dim "
            f"({time_dim}) + text_encoder_2 projection_dim ({projection}) = {want}; must be equal"
        )
    cross = ucfg.get("cross_attention_dim")
    widths = list(cross) if isinstance(cross, (list, tuple)) else [cross]
    if any(c != sum(hidden) for c in widths):
        return (
            f"cross_attention_dim={cross} but the text encoders' hidden sizes sum to "
            f"{sum(hidden)} ({' + '.join(map(str, hidden))}); must be equal"
        )
    return ""


class SDXLTextEncoder(nn.Module):
    """The text encoder of an SDXL ``LatentDiffusersTeacher``: ``text_encoder`` (CLIP-L) and
    ``text_encoder_2`` (CLIP-G with projection) with their tokenizers; ``encode_texts`` gives
    ``StableDiffusionXLPipeline.encode_prompt``'s embeddings, ``added_cond_kwargs`` the UNet's
    added conditions."""

    def __init__(
        self,
        text_encoders: Sequence[nn.Module],
        tokenizers: Sequence[Any],
        unet_config: Any,
        *,
        force_zeros_for_empty_prompt: bool = True,  # StableDiffusionXLPipeline.__init__'s
    ) -> None:
        super().__init__()
        if len(text_encoders) != 2 or len(tokenizers) != 2 or any(e is None for e in text_encoders):
            raise ValueError("SDXL needs two text encoders and tokenizers (CLIP-L, CLIP-G)")
        lengths = [getattr(t, "model_max_length", None) for t in tokenizers]
        if lengths[0] != lengths[1]:
            got = f"tokenizer {lengths[0]}, tokenizer_2 {lengths[1]}"
            raise ValueError(f"the tokenizers' model_max_length differ ({got}); must be equal")
        hidden = [int(e.config.hidden_size) for e in text_encoders]
        projection = int(getattr(text_encoders[1].config, "projection_dim", 0))
        if why := width_problem(hidden, projection, dict(unet_config)):
            raise ValueError(why)
        self.encoders = nn.ModuleList(text_encoders)
        self.tokenizers = tuple(tokenizers)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.prompt_args = ("prompt", "prompt_2")  # encode_prompt's, one per encoder
        self.micro = MicroCond()  # __call__'s defaults: (H, W, 0, 0, H, W) on every row

    @property
    def max_clip_skip(self) -> int:
        """The largest ``clip_skip`` ``hidden_states[-(k + 2)]`` can index in both encoders."""
        return min(int(e.config.num_hidden_layers) for e in self.encoders) - 1

    def encode_texts(
        self, texts: Sequence[str], clip_skip: int = 0, texts_2: Sequence[str] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(encoder_hidden_states (N, L, E_1 + E_2), text_embeds (N, P))`` (``encode_prompt``
        with ``clip_skip = k``, 0 for None: ``hidden_states[-(k + 2)]`` of each encoder), the
        second encoder reading ``texts_2`` (``prompt_2``; None: ``texts``)."""
        hidden, pooled = [], None
        streams = (texts, texts if texts_2 is None else texts_2)
        for tokenizer, encoder, batch in zip(self.tokenizers, self.encoders, streams, strict=True):
            ids = tokenizer(
                list(batch),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            if out[0].dim() == 2:  # CLIPTextModelWithProjection's text_embeds: the pooled row
                pooled = out[0]
            hidden.append(out.hidden_states[-(clip_skip + 2)])
        if pooled is None:
            what = "text_encoder_2 gives no pooled text_embeds"
            raise ValueError(f"{what}; valid: CLIPTextModelWithProjection")
        return torch.cat(hidden, dim=-1), pooled

    def time_id_rows(self, size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(time_ids (1, 6), null_time_ids (1, 6))`` of ``micro`` at pixel ``size`` ``(H, W)``
        (``LatentDiffusersTeacher.encode_prompts`` stores them in the ``TextCond``)."""
        return self.micro.rows(size)

    def added_cond_kwargs(
        self, pooled: Tensor, size: Sequence[int], ids: Tensor | None = None
    ) -> dict[str, Any]:
        """The UNet's keyword ``added_cond_kwargs`` for ``pooled: (n, P)`` and the rows' ``ids:
        (n, 6)`` (None: ``micro``'s conditional row at pixel ``size`` ``(H, W)``; ``__call__``:
        ``{"text_embeds": add_text_embeds, "time_ids": add_time_ids}``)."""
        if ids is None:
            ids = self.micro.rows(size)[0].expand(pooled.shape[0], -1)
        ids = ids.to(pooled.device, pooled.dtype)
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}


def _check_index(path: Path, index: dict[str, Any]) -> None:
    """A base SDXL layout: refiner folders (no ``text_encoder``, aesthetic score) are refused."""
    index_path = path / "model_index.json"
    if index.get("text_encoder") in (None, [None, None]):
        what = "text_encoder is null (an SDXL refiner layout): not supported yet"
        raise _fail(index_path, f"{what}; valid: a base StableDiffusionXLPipeline folder")
    if index.get("requires_aesthetics_score"):
        what = "requires_aesthetics_score=true (an SDXL refiner's time ids): not supported yet"
        raise _fail(index_path, f"{what}; valid: false")
    check_components(path, index, PARTS)


def _check_configs(path: Path) -> None:
    """The UNet, VAE and text widths fit, before any weights are read."""
    ucfg_path = path / "unet" / "config.json"
    ucfg, vcfg = component_config(path, "unet"), component_config(path, "vae")
    component_config(path, "scheduler", "scheduler_config.json")
    cls = _diffusers_class(ucfg_path, ucfg.get("_class_name"), "ModelMixin")
    if "added_cond_kwargs" not in inspect.signature(cls.forward).parameters:
        what = "takes no added_cond_kwargs; valid: UNet2DConditionModel"
        raise _fail(ucfg_path, f"{cls.__name__} {what}")
    if why := guidance_embedding_problem(ucfg):
        raise _fail(ucfg_path, why)
    vae_path = path / "vae" / "config.json"
    if (latent := vcfg.get("latent_channels")) != (inputs := ucfg.get("in_channels")):
        what = f"latent_channels={latent} but unet/config.json has in_channels={inputs}"
        raise _fail(vae_path, f"{what}; the VAE's latents must be the UNet's input")
    if why := latent_stats_problem(vcfg):  # Playground v2.5's per-channel stats (diffusers_vae)
        raise _fail(vae_path, why)
    clips = [component_config(path, k) for k in ("text_encoder", "text_encoder_2")]
    hidden = [int(c.get("hidden_size", 0)) for c in clips]
    if why := width_problem(hidden, int(clips[1].get("projection_dim", 0)), ucfg):
        raise _fail(ucfg_path, why)


def load_sdxl_parts(
    path: Path,
    index: dict[str, Any],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    variant: str = "",
) -> tuple[nn.Module, nn.Module, Any, SDXLTextEncoder]:
    """``(unet, vae, scheduler, SDXLTextEncoder)`` of a ``StableDiffusionXLPipeline`` folder
    whose ``model_index.json`` is ``index``, for ``diffusers_latent.load_latent_teacher``: every
    config checked before weights load; the UNet in ``dtype``, the rest float32."""
    _check_index(path, index)
    _check_configs(path)
    unet, vae, sched, text = load_pipeline_parts(
        path, index, "unet", PARTS, device=device, dtype=dtype, variant=variant
    )
    encoder = folder_text_encoder(
        path,
        lambda: SDXLTextEncoder(
            [text["text_encoder"].to(device), text["text_encoder_2"].to(device)],
            [text["tokenizer"], text["tokenizer_2"]],
            unet.config,
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
        ),
    )
    return unet, vae, sched, encoder
