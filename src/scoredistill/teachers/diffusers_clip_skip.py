"""diffusers' ``clip_skip``: prompt embeddings from an earlier CLIP layer, checked at load.

Many community SD 1.5 checkpoints are meant to be called with ``clip_skip=2``; a student
distilled under other text embeddings than the user's pipeline call silently mismatches. The
teacher (``LatentDiffusersTeacher.clip_skip``, set by ``load_latent_teacher``) encodes its
prompts as diffusers 0.42 does for ``clip_skip = k`` (0 here means the pipelines' ``None``):

- ``StableDiffusionPipeline.encode_prompt``: ``k = None``: ``text_encoder(ids)[0]``; ``k >= 1``:
  ``output_hidden_states=True``, ``hidden_states[-(k + 1)]``, then
  ``text_encoder.text_model.final_layer_norm`` (``text_cond.encode_text``);
- ``StableDiffusionXLPipeline.encode_prompt``: each encoder's ``hidden_states[-(k + 2)]``
  (``None``: ``[-2]``), no final layer norm, the pooled ``text_embeds`` unchanged
  (``diffusers_sdxl.SDXLTextEncoder``);
- ``StableDiffusion3Pipeline._get_clip_prompt_embeds``: ``hidden_states[-(k + 2)]`` (``None``:
  ``[-2]``) of both CLIP encoders, T5 unaffected (``diffusers_sd3.SD3TextEncoder``);
- ``FluxPipeline.encode_prompt`` takes no ``clip_skip``: a nonzero value is refused.

In all three pipelines the **negative (or empty) prompt** is encoded with ``clip_skip=None``
(``encode_prompt``'s ``negative_prompt_embeds``; SD3 passes ``clip_skip=None`` explicitly), so
the teacher's null row for guidance is the unskipped embedding too.

diffusers 0.42 reads the layer norm as ``text_encoder.text_model.final_layer_norm``; transformers
>= 5.6 flattened ``CLIPTextModel`` (huggingface/transformers#46285) so it is
``text_encoder.final_layer_norm`` there, and the stock pipeline's ``clip_skip`` raises
``AttributeError`` (huggingface/diffusers#14124). ``final_layer_norm`` takes whichever exists:
the same module, the same numbers.

``hidden_states`` holds ``num_hidden_layers + 1`` entries (the token embeddings first), so the
largest ``k`` the pipeline can index is ``num_hidden_layers`` on SD and ``num_hidden_layers - 1``
on SDXL and SD3 (the shallower CLIP); a larger one is a ``ConfigError`` naming ``clip_skip``.
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError

__all__ = ["check_clip_skip", "final_layer_norm", "max_clip_skip"]


def final_layer_norm(text_encoder: Any) -> Any:
    """CLIP's final ``LayerNorm``: ``text_model.final_layer_norm`` (transformers < 5.6, what
    diffusers 0.42 reads) or the flattened ``final_layer_norm``; None when neither exists."""
    return getattr(getattr(text_encoder, "text_model", text_encoder), "final_layer_norm", None)


def max_clip_skip(text_encoder: Any) -> int | None:
    """The largest ``clip_skip`` whose hidden state the pipeline can index (module docstring);
    None where the family has no ``clip_skip`` (Flux, or an SD encoder without CLIP's
    final ``LayerNorm``). Wrappers (SDXL, SD3) say it as ``max_clip_skip``."""
    if hasattr(text_encoder, "encode_texts"):  # SDXL / SD3 / Flux wrappers
        return getattr(text_encoder, "max_clip_skip", None)
    if final_layer_norm(text_encoder) is None:
        return None
    return int(text_encoder.config.num_hidden_layers)  # hidden_states[-(k + 1)], k <= L


def check_clip_skip(text_encoder: Any, clip_skip: int) -> int:
    """``clip_skip`` when the pipeline's ``encode_prompt`` could take it with this text
    encoder; else a one-line ``ConfigError`` naming ``clip_skip`` and what is valid."""
    if clip_skip == 0:
        return 0
    if clip_skip < 0:
        raise ConfigError(f"config key 'clip_skip': {clip_skip} must be >= 0 (0: no skip)")
    most, name = max_clip_skip(text_encoder), type(text_encoder).__name__
    if most is None:
        raise ConfigError(
            f"config key 'clip_skip': {clip_skip}, but this teacher's text encoder ({name}) "
            "takes none (FluxPipeline.encode_prompt has no clip_skip; StableDiffusionPipeline's "
            "needs CLIP's final_layer_norm); valid: 0"
        )
    if clip_skip > most:
        raise ConfigError(
            f"config key 'clip_skip': {clip_skip} skips more layers than the text encoder "
            f"({name}) has hidden states to index; valid: 0 to {most}"
        )
    return clip_skip
