"""Text conditions of the latent teachers: ``TextCond`` and ``encode_text``.

``TextCond`` holds a batch of prompt embeddings ``(B, L, E)``, the null embedding ``(1, L, E)``
that classifier-free guidance's unconditional branch uses (the empty prompt's, or a negative
prompt's) and, for SD3/SDXL/Flux, the pooled embeddings (SDXL also its micro-conditioning
``time_ids``, whose null row may differ: ``diffusers_sdxl_micro``); it supports the row operations
the label-based ingredients need (indexing, ``null_like``, classifier-free dropout, ``cat``).
``encode_text`` computes a single-CLIP ``StableDiffusionPipeline``'s prompt embeddings.
``diffusers_latent`` re-exports both.
"""

from __future__ import annotations

import warnings
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
    embeddings (SD3's ``pooled_projections``, SDXL's ``text_embeds``), or both None;
    ``time_ids: (B, 6)`` and ``null_time_ids: (1, 6)`` SDXL's ``add_time_ids`` of the
    conditional and the null rows (the pipeline's ``negative_original_size``...), or both None.
    Null rows take every ``null*`` field, so guidance and dropout keep the rows consistent."""

    embeds: Tensor
    null: Tensor
    prompts: tuple[str, ...] = ()
    pooled: Tensor | None = None
    null_pooled: Tensor | None = None
    time_ids: Tensor | None = None
    null_time_ids: Tensor | None = None

    def __post_init__(self) -> None:
        if self.embeds.dim() != 3 or tuple(self.null.shape) != (1, *self.embeds.shape[1:]):
            got = f"embeds {tuple(self.embeds.shape)}, null {tuple(self.null.shape)}"
            raise ValueError(f"TextCond needs embeds (B, L, E) and null (1, L, E); got {got}")
        if self.prompts and len(self.prompts) != self.embeds.shape[0]:
            raise ValueError(f"{len(self.prompts)} prompts for {self.embeds.shape[0]} embeddings")
        for name in ("pooled", "time_ids"):
            rows, null = getattr(self, name), getattr(self, f"null_{name}")
            if not _pooled_fits(rows, null, len(self)):
                got = f"{name} {_shape(rows)}, null_{name} {_shape(null)}"
                raise ValueError(
                    f"TextCond needs {name} (B, P) and null_{name} (1, P) or neither; {got}"
                )

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _with(self, embeds: Tensor, pick: Any, prompts: tuple[str, ...] = ()) -> TextCond:
        """Rows ``embeds`` with each per-row vector (pooled, time ids) ``pick(rows, null_row)``."""
        pooled = _opt(self.pooled, lambda p: pick(p, self.null_pooled))
        ids = _opt(self.time_ids, lambda t: pick(t, self.null_time_ids))
        return TextCond(
            embeds, self.null, prompts, pooled, self.null_pooled, ids, self.null_time_ids
        )

    def __getitem__(self, idx: Any) -> TextCond:
        """Rows ``idx`` (an int keeps the batch dimension)."""
        idx = [idx] if isinstance(idx, int) else idx
        rows = torch.arange(len(self))[idx].tolist()
        prompts = tuple(self.prompts[i] for i in rows) if self.prompts else ()
        return self._with(self.embeds[rows], lambda v, _: v[rows], prompts)

    def null_like(self) -> TextCond:
        """The unconditional rows: ``null`` repeated B times (``parametrization.guided``)."""
        n = len(self)
        return self._with(self.null.expand_as(self.embeds), lambda _, null: null.expand(n, -1))

    def with_null_rows(self, mask: Tensor) -> TextCond:
        """Rows where ``mask: (B,)`` is True replaced by ``null`` (classifier-free dropout)."""
        m = mask.to(self.embeds.device).reshape(-1, 1, 1)
        embeds = torch.where(m, self.null.to(self.embeds), self.embeds)
        return self._with(embeds, lambda v, null: torch.where(m[:, 0], null.to(v), v))

    @staticmethod
    def cat(conds: Sequence[TextCond]) -> TextCond:
        """Rows of several conditions sharing one null row, in order."""
        first, nulls = conds[0], ("null", "null_pooled", "null_time_ids")
        if any(not _same(getattr(c, k), getattr(first, k)) for c in conds[1:] for k in nulls):
            raise ValueError("cannot concatenate TextConds with different null embeddings")
        prompts = sum((c.prompts for c in conds), ()) if all(c.prompts for c in conds) else ()
        pooled = None if first.pooled is None else torch.cat([c.pooled for c in conds])  # type: ignore[misc]
        ids = None if first.time_ids is None else torch.cat([c.time_ids for c in conds])  # type: ignore[misc]
        return TextCond(
            torch.cat([c.embeds for c in conds]), first.null, prompts, pooled, first.null_pooled,
            ids, first.null_time_ids,
        )  # fmt: skip

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextCond:
        dtype = dtype or self.embeds.dtype
        move = lambda t: t.to(device, dtype)  # noqa: E731
        pooled, null_pooled = _opt(self.pooled, move), _opt(self.null_pooled, move)
        ids, null_ids = _opt(self.time_ids, move), _opt(self.null_time_ids, move)
        return TextCond(
            move(self.embeds), move(self.null), self.prompts, pooled, null_pooled, ids, null_ids
        )


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


def warn_truncated(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """The prompts longer than the tokenizer's ``model_max_length`` tokens, which the encoder
    sees cut (as diffusers' pipelines do; they log the cut part): one warning names how many."""
    limit = tokenizer.model_max_length
    ids = tokenizer(list(prompts), truncation=False).input_ids
    long = [p for p, row in zip(prompts, ids, strict=True) if len(row) > limit]
    if long:
        warnings.warn(
            f"{len(long)} of {len(prompts)} prompts exceed the text encoder's {limit} tokens and "
            f"are truncated to them (the first: {long[0][:60]!r})",
            stacklevel=3,
        )
    return long


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
