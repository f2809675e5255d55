"""SNOOPI's NASA as a diffusers attention processor: negative prompts for one-step students.

Paper: Nguyen, Nguyen, Dao, Nguyen, Pham, Tran, Tran, "SNOOPI: Supercharged One-step Diffusion
Distillation with Proper Guidance" (arXiv 2412.02687; v3, Sep 2025: "Supercharged One-step
Text-to-Image Diffusion Models with Negative Prompts"). NASA-I (training-free, Sec. 5.2,
eqs. 7-9), in every cross-attention layer, with keys and values of the positive prompt ``c+``
and of the negative prompt ``c-`` through the layer's *same* projections::

    Z+ = softmax(Q K+^T / sqrt d) V+,   Z- = softmax(Q K-^T / sqrt d) V-,   Z_NASA = Z+ - alpha Z-

``Z`` is the attention read-out *before* the output projection ``W_o`` (``to_out``), as eqs. 7-8
define it and as the exact-testbed system applies it (``runs/systems/nasa_lab.py``); ``to_out``
has a bias, so steering after it would differ by ``alpha`` times that bias. The paper's alpha
(Sec. 6.1): 0.1 (SDv1.5-based), 0.2 (SDv2.1), 0.5 (PixArt-alpha); 1 in its best row (Table 3).
Self-attention layers are unchanged. No official code was found; the NAG paper restates eq. 9.

Use it as diffusers users set processors (``set_attn_processor``)::

    enable_nasa(pipe.unet, alpha=0.1)          # every layer; self-attention keeps its processor
    neg = pipe.encode_prompt("a bold handwritten 3", "cpu", 1, False)[0]
    pipe(prompt, num_inference_steps=1, guidance_scale=1.0,
         cross_attention_kwargs={"negative_encoder_hidden_states": neg})
    disable_nasa(pipe.unet)                    # the previous processors, the same objects

``Attention.forward`` (diffusers 0.42) passes on only the ``cross_attention_kwargs`` that its
processor's ``__call__`` names, so ``negative_encoder_hidden_states`` and ``nasa_alpha`` are
parameters here; and because ``BasicTransformerBlock`` hands the same kwargs to self-attention,
those layers get a NASA processor too that delegates to the one it replaced (else diffusers
warns on every call that the kwargs are ignored). The negative may instead be stored:
``enable_nasa(unet, alpha, negative=neg)``. Without a negative a layer computes ``Z+`` alone.
With the pipeline's own CFG (``guidance_scale > 1``) the UNet batch is ``[uncond; cond]``, so a
negative must then have that doubled batch (or batch 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError

__all__ = ["NASAAttnProcessor", "check_alpha", "disable_nasa", "enable_nasa", "nasa_layers"]

NEGATIVE_KEY = "negative_encoder_hidden_states"  # the cross_attention_kwargs name


def check_alpha(alpha: float, key: str = "alpha") -> float:
    """``alpha`` as a float; ``ConfigError`` (a ``ValueError``) naming ``key`` unless finite, >= 0."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ConfigError(f"{key} must be a finite number >= 0, got {alpha!r}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"{key} must be a finite number >= 0 (SNOOPI: 0.1-1), got {alpha!r}")
    return float(alpha)


def _check_negative(neg: Tensor, batch: int | None, width: int | None) -> None:
    """``neg: (1 | batch, L-, width)``; ``ConfigError`` naming the argument otherwise."""
    ok = isinstance(neg, Tensor) and neg.ndim == 3
    ok = ok and (width is None or neg.shape[-1] == width)
    ok = ok and (batch is None or neg.shape[0] in (1, batch))
    if not ok:
        shape = tuple(neg.shape) if isinstance(neg, Tensor) else type(neg).__name__
        want = f"({'1' if batch is None else f'1 or {batch}'}, L, {width or 'E'})"
        raise ConfigError(f"{NEGATIVE_KEY} must have shape {want}, got {shape}")


def _attend(attn: Any, query: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
    """Eqs. 7-8 for one context: ``Z = softmax(Q K^T / sqrt d) V``, heads concatenated.

    ``query: (B, N, inner)`` projected, ``context: (B, L, E)``; returns ``(B, N, inner)``.
    The steps are ``AttnProcessor2_0``'s (diffusers 0.42), so ``alpha = 0`` is the stock layer.
    """
    b = query.shape[0]
    key, value = attn.to_k(context), attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    q = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    k = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    v = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return z.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)


class NASAAttnProcessor:
    """NASA in a cross-attention layer (module docstring); ``base`` runs self-attention calls.

    A cross-attention call computes attention itself (``AttnProcessor2_0``'s steps), so a
    replaced cross-attention processor that does more (IP-Adapter, custom diffusion) is not
    run there; LoRA through PEFT lives in the projections and is kept.

    ``alpha`` and ``negative`` are the stored defaults; the ``cross_attention_kwargs``
    ``nasa_alpha`` and ``negative_encoder_hidden_states`` override them for one call.
    """

    def __init__(self, base: Any, alpha: float = 0.0, negative: Tensor | None = None) -> None:
        if negative is not None:
            _check_negative(negative, None, None)
        self.base, self.alpha, self.negative = base, check_alpha(alpha), negative

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        negative_encoder_hidden_states: Tensor | None = None,
        nasa_alpha: float | None = None,
    ) -> Tensor:
        if encoder_hidden_states is None:  # self-attention: unchanged
            extra = {} if temb is None else {"temb": temb}
            return self.base(attn, hidden_states, attention_mask=attention_mask, **extra)
        alpha = self.alpha if nasa_alpha is None else check_alpha(nasa_alpha, "nasa_alpha")
        neg = negative_encoder_hidden_states
        neg = self.negative if neg is None else neg
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, length, width = encoder_hidden_states.shape
        if attention_mask is not None:  # the positive prompt's mask; the negative has none
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        z = _attend(attn, query, encoder_hidden_states, attention_mask)
        if neg is not None:
            _check_negative(neg, batch, width)
        if neg is not None and alpha != 0:
            neg = neg.to(encoder_hidden_states).expand(batch, -1, -1)
            if attn.norm_cross:
                neg = attn.norm_encoder_hidden_states(neg)
            z = z - alpha * _attend(attn, query, neg, None)  # eq. 9
        out = attn.to_out[1](attn.to_out[0](z))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def nasa_layers(unet: nn.Module) -> list[str]:
    """Names of the cross-attention layers of ``unet`` (``Attention.is_cross_attention``)."""
    names = [k.removesuffix(".processor") for k in unet.attn_processors]
    return [n for n in names if unet.get_submodule(n).is_cross_attention]


def _unwrapped(proc: Any) -> Any:
    return proc.base if isinstance(proc, NASAAttnProcessor) else proc


def enable_nasa(unet: nn.Module, alpha: float, negative: Tensor | None = None) -> list[str]:
    """Set a ``NASAAttnProcessor`` on every attention layer of ``unet`` (through the public
    ``set_attn_processor``), each wrapping the processor it replaces; enabling twice re-wraps
    the original. ``negative: (1 | B, L, cross_attention_dim)`` is stored (optional).
    Returns the names of the steered (cross-attention) layers."""
    alpha = check_alpha(alpha)
    width = unet.config.cross_attention_dim  # an int, or one per block (then checked per call)
    if negative is not None:
        _check_negative(negative, None, width if isinstance(width, int) else None)
    procs = {
        k: NASAAttnProcessor(_unwrapped(p), alpha, negative)
        for k, p in unet.attn_processors.items()
    }
    unet.set_attn_processor(procs)
    return nasa_layers(unet)


def disable_nasa(unet: nn.Module) -> None:
    """Restore the processors ``enable_nasa`` replaced (the same objects)."""
    unet.set_attn_processor({k: _unwrapped(p) for k, p in unet.attn_processors.items()})
