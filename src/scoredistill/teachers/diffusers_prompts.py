"""Different prompts per text encoder (diffusers' ``prompt_2`` / ``prompt_3``) and the latent
teacher's prompt cache keyed on them.

diffusers 0.42 pipelines send one prompt argument to each text encoder and fill a missing
one with the first (``prompt_2 = prompt_2 or prompt``; negatives ``negative_prompt_2 =
negative_prompt_2 or negative_prompt``):

- ``StableDiffusionPipeline.encode_prompt(prompt)``: one encoder, one prompt;
- ``StableDiffusionXLPipeline.encode_prompt(prompt, prompt_2, ..., negative_prompt,
  negative_prompt_2)``: ``text_encoder`` (CLIP-L) reads ``prompt``, ``text_encoder_2``
  (OpenCLIP-G, which also gives the pooled ``text_embeds``) reads ``prompt_2``; the null row is
  zeros when ``negative_prompt is None`` and ``force_zeros_for_empty_prompt``;
- ``StableDiffusion3Pipeline.encode_prompt(prompt, prompt_2, prompt_3, ...)``: CLIP-L, CLIP-G
  and T5 (``_get_clip_prompt_embeds`` twice, ``_get_t5_prompt_embeds``); without
  ``text_encoder_3`` T5's rows are zeros, so ``prompt_3`` has no effect and is refused here;
- ``FluxPipeline.encode_prompt(prompt, prompt_2)``: CLIP (pooled) reads ``prompt``, T5
  reads ``prompt_2``; ``__call__``'s true-CFG negative is ``encode_prompt(negative_prompt,
  negative_prompt_2)``.

A condition is the **row** ``(prompt, prompt_2[, prompt_3])`` with one entry per prompt
argument the teacher's pipeline takes (``prompt_args``), a missing entry filled with
``prompt``; the cache keys on ``(row, clip_skip)``, so one prompt with two different
``prompt_2`` values is two conditions, and ``prompt_2 = prompt`` is the same one as none. The
library's empty negative prompt is the pipeline's ``negative_prompt=None``; an empty negative
with a ``negative_prompt_2`` is the pipeline called with ``negative_prompt=""`` (otherwise
SDXL would zero the row and drop ``negative_prompt_2`` without a word).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "PromptCache",
    "index_prompt_args",
    "negative_row",
    "prompt_args",
    "prompt_rows",
    "stream_problem",
]

Row = tuple[str, ...]  # (prompt, prompt_2[, prompt_3]): what each text encoder reads
Encode = Callable[[Sequence[Row], int], tuple[Tensor, Tensor | None]]
STREAMS = ("prompt", "prompt_2", "prompt_3")
ENCODERS = {  # what reads prompt_j, for errors: model_index.json key (role)
    "prompt_2": "text_encoder_2 (SDXL/SD3: CLIP-G; Flux: T5)",
    "prompt_3": "text_encoder_3 (SD3: T5)",
}


def prompt_args(text_encoder: Any) -> tuple[str, ...]:
    """The prompt arguments of the teacher's ``encode_prompt``: a wrapper's ``prompt_args``
    (SDXL, SD3, Flux), else ``("prompt",)`` (SD 1.x/2.x: one text encoder)."""
    return tuple(getattr(text_encoder, "prompt_args", STREAMS[:1]))


def _listed(index: dict[str, Any], key: str) -> bool:
    return index.get(key) not in (None, [None, None])


def index_prompt_args(index: dict[str, Any]) -> tuple[str, ...]:
    """``prompt_args`` from a folder's ``model_index.json`` before any weights load: one
    argument per listed text encoder (``text_encoder_2``, ``text_encoder_3``)."""
    n = 1 + _listed(index, "text_encoder_2") + _listed(index, "text_encoder_3")
    return STREAMS[:n]


def stream_problem(args: Sequence[str], arg: str, pipeline: str = "") -> str:
    """Why prompt argument ``arg`` (``prompt_2``/``prompt_3``) cannot act on a teacher whose
    pipeline takes ``args`` ("" when it can)."""
    if arg in args:
        return ""
    if arg not in ENCODERS:
        return f"unknown prompt argument {arg!r}; valid: {', '.join(ENCODERS)}"
    takes = ", ".join(args)
    what = f"the teacher's pipeline{f' ({pipeline})' if pipeline else ''} takes {takes} only"
    return f"{what}: {arg} feeds {ENCODERS[arg]}, which this folder has not"


def prompt_rows(
    prompts: Sequence[str], args: Sequence[str], **streams: Sequence[str] | None
) -> list[Row]:
    """``(P, len(args))`` rows: ``streams[arg][i]`` (``prompt_2=``, ``prompt_3=``, lists as
    long as ``prompts``) where given, else ``prompts[i]`` (the pipeline's ``prompt_2 or
    prompt``, list-wise); a stream the pipeline has not, or of another length, is a
    ``ValueError`` naming it."""
    columns = [list(prompts)]
    for arg, given in streams.items():
        if given is not None and (why := stream_problem(args, arg)):
            raise ValueError(f"{arg}: {why}")
        if given is not None and (isinstance(given, str) or len(given) != len(prompts)):
            got = repr(given) if isinstance(given, str) else f"{len(given)} entries"
            raise ValueError(f"{arg} must be a list as long as prompts ({len(prompts)}); {got}")
    for arg in args[1:]:
        given = streams.get(arg)
        bad = [p for p in given or () if not isinstance(p, str)]
        if bad:
            raise ValueError(f"{arg} must be strings; got {type(bad[0]).__name__} {bad[0]!r}")
        columns.append(list(prompts) if given is None else list(given))
    return list(zip(*columns, strict=True))


def negative_row(args: Sequence[str], negative_prompt: str, **negatives: str) -> Row:
    """The null condition's row: ``negative_prompt_j or negative_prompt`` per argument
    (``negatives``: ``negative_prompt_2=``, ``negative_prompt_3=``); one the pipeline has not is
    a ``ValueError`` naming it."""
    row = [negative_prompt]
    for key, text in negatives.items():
        if text and (why := stream_problem(args, key.removeprefix("negative_"))):
            raise ValueError(f"{key}: {why}")
    for arg in args[1:]:
        row.append(negatives.get(f"negative_{arg}") or negative_prompt)
    return tuple(row)


class PromptCache:
    """Embeddings per ``(row, clip_skip)``, computed once: rows not seen before are encoded in
    one batch per ``clip_skip`` without gradients (``calls`` counts those batches)."""

    def __init__(self, encode: Encode) -> None:
        self._encode = encode
        self._rows: dict[tuple[Row, int], tuple[Tensor, Tensor | None]] = {}
        self.calls = 0

    def get(self, keys: Sequence[tuple[Row, int]]) -> list[tuple[Tensor, Tensor | None]]:
        """``(embeds (L, E), pooled (P,) or None)`` for each ``(row, clip_skip)`` key."""
        new = [key for key in dict.fromkeys(keys) if key not in self._rows]
        for skip in sorted({s for _, s in new}):
            rows = [r for r, s in new if s == skip]
            with torch.no_grad():
                embeds, pooled = self._encode(rows, skip)
            self.calls += 1
            out = zip(embeds, [None] * len(rows) if pooled is None else pooled, strict=True)
            self._rows.update(zip([(r, skip) for r in rows], out, strict=True))
        return [self._rows[key] for key in keys]
