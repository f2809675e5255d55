"""Text conditions of the latent teachers: ``TextCond`` and ``encode_text``.

``TextCond`` holds a batch of prompt embeddings ``(B, L, E)``, the null embedding ``(1, L, E)``
that classifier-free guidance's unconditional branch uses (the empty prompt's, or a negative
prompt's) and, for SD3/SDXL/Flux, the pooled embeddings; it supports the row operations the
label-based ingredients need (indexing, ``null_like``, classifier-free dropout, ``cat``).
``encode_text`` computes a single-CLIP ``StableDiffusionPipeline``'s prompt embeddings.
``diffusers_latent`` re-exports both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .diffusers_clip_skip import final_layer_norm

__all__ = ["TextCond", "encode_text"]


@dataclass(frozen=True)
class TextCond:
    """A text condition: ``embeds: (B, L, E)`` prompt embeddings; ``null: (1, L, E)`` the
    unconditional embedding (empty or negative prompt) that classifier-free guidance uses;
    ``prompts`` the B texts (or empty); ``pooled: (B, P)`` and ``null_pooled: (1, P)`` the pooled
    embeddings (SD3's ``pooled_projections``, SDXL's ``text_embeds``), or both None."""

    embeds: Tensor
    null: Tensor
    prompts: tuple[str, ...] = ()
    pooled: Tensor | None = None
    null_pooled: Tensor | None = None

    def __post_init__(self) -> None:
        if self.embeds.dim() != 3 or tuple(self.null.shape) != (1, *self.embeds.shape[1:]):
            got = f"embeds {tuple(self.embeds.shape)}, null {tuple(self.null.shape)}"
            raise ValueError(f"TextCond needs embeds (B, L, E) and null (1, L, E); got {got}")
        if self.prompts and len(self.prompts) != self.embeds.shape[0]:
            raise ValueError(f"{len(self.prompts)} prompts for {self.embeds.shape[0]} embeddings")
        if not _pooled_fits(self.pooled, self.null_pooled, len(self)):
            got = f"pooled {_shape(self.pooled)}, null_pooled {_shape(self.null_pooled)}"
            raise ValueError(
                f"TextCond needs pooled (B, P) and null_pooled (1, P) or neither; {got}"
            )

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _with(
        self, embeds: Tensor, pooled: Tensor | None, prompts: tuple[str, ...] = ()
    ) -> TextCond:
        return TextCond(embeds, self.null, prompts, pooled, self.null_pooled)

    def __getitem__(self, idx: Any) -> TextCond:
        """Rows ``idx`` (an int keeps the batch dimension)."""
        idx = [idx] if isinstance(idx, int) else idx
        rows = torch.arange(len(self))[idx].tolist()
        prompts = tuple(self.prompts[i] for i in rows) if self.prompts else ()
        return self._with(self.embeds[rows], _opt(self.pooled, lambda p: p[rows]), prompts)

    def null_like(self) -> TextCond:
        """The unconditional rows: ``null`` repeated B times (``parametrization.guided``)."""
        pooled = _opt(self.null_pooled, lambda p: p.expand(len(self), -1))
        return self._with(self.null.expand_as(self.embeds), pooled)

    def with_null_rows(self, mask: Tensor) -> TextCond:
        """Rows where ``mask: (B,)`` is True replaced by ``null`` (classifier-free dropout)."""
        m = mask.to(self.embeds.device).reshape(-1, 1, 1)
        embeds = torch.where(m, self.null.to(self.embeds), self.embeds)
        pooled, null_pooled = self.pooled, self.null_pooled
        if pooled is not None and null_pooled is not None:
            pooled = torch.where(m[:, 0], null_pooled.to(pooled), pooled)
        return self._with(embeds, pooled)

    @staticmethod
    def cat(conds: Sequence[TextCond]) -> TextCond:
        """Rows of several conditions sharing one null embedding, in order."""
        first = conds[0]
        if any(not _same(c.null, first.null) or not _same(c.null_pooled, first.null_pooled)
               for c in conds[1:]):  # fmt: skip
            raise ValueError("cannot concatenate TextConds with different null embeddings")
        prompts = sum((c.prompts for c in conds), ()) if all(c.prompts for c in conds) else ()
        pooled = None if first.pooled is None else torch.cat([c.pooled for c in conds])  # type: ignore[misc]
        return first._with(torch.cat([c.embeds for c in conds]), pooled, prompts)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextCond:
        dtype = dtype or self.embeds.dtype
        move = lambda t: t.to(device, dtype)  # noqa: E731
        pooled, null_pooled = _opt(self.pooled, move), _opt(self.null_pooled, move)
        return TextCond(move(self.embeds), move(self.null), self.prompts, pooled, null_pooled)


def _opt(t: Tensor | None, fn: Any) -> Tensor | None:
    return None if t is None else fn(t)


def _shape(t: Tensor | None) -> Any:
    return None if t is None else tuple(t.shape)


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and torch.equal(a, b))


def _pooled_fits(pooled: Tensor | None, null: Tensor | None, n: int) -> bool:
    if pooled is None or null is None:
        return pooled is None and null is None
    return pooled.dim() == 2 and len(pooled) == n and tuple(null.shape) == (1, pooled.shape[1])


def encode_text(
    tokenizer: Any, text_encoder: nn.Module, prompts: Sequence[str], clip_skip: int = 0
) -> Tensor:
    """``(N, L, E)``: ``StableDiffusionPipeline.encode_prompt``'s embeddings (padded to
    ``model_max_length``, truncated, ``text_encoder(ids)[0]``; the attention mask only where the
    encoder's config sets ``use_attention_mask``); ``clip_skip = k >= 1``: ``hidden_states[-(k +
    1)]`` through CLIP's ``final_layer_norm`` (``diffusers_clip_skip``), as ``encode_prompt(..., clip_skip=k)``."""
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    use_mask = getattr(getattr(text_encoder, "config", None), "use_attention_mask", False)
    mask = tokens.attention_mask.to(device) if use_mask else None
    if not clip_skip:
        return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    out = text_encoder(tokens.input_ids.to(device), attention_mask=mask, output_hidden_states=True)
    return final_layer_norm(text_encoder)(out.hidden_states[-(clip_skip + 1)])
