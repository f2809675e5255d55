"""The tiny text-to-image teacher's text side (``train.sd_teacher``): a char-level
``CLIPTokenizer`` whose caption words can be whole tokens, and a random ``CLIPTextModel``.

The vocabulary is the 256 byte-level symbols, their ``</w>`` forms, ``<|startoftext|>`` and
``<|endoftext|>`` (reference note §3, built offline); ``word_merges`` adds the BPE merges that
make each caption word one token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import UserError

__all__ = ["caption_words", "make_clip_text", "word_merges"]


def word_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges that make each of ``words`` one token (``"front</w>"``): the chain
    ``f r``, ``fr o``, ... ``fron t</w>`` (CLIP's BPE ends a word's last symbol with ``</w>``,
    transformers ``CLIPTokenizer.bpe``); shared prefixes share their merges."""
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            parts = [parts[0] + parts[1], *parts[2:]]
    return merges


def caption_words(prompts: Sequence[str]) -> list[str]:
    """The distinct lower-case words of two letters or more in ``prompts``, sorted."""
    return sorted({w for p in prompts for w in re.findall(r"[a-z]{2,}", p.lower())})


def make_clip_text(cfg: Any, words: Sequence[str] = ()) -> tuple[Any, Any]:
    """``(CLIPTokenizer, CLIPTextModel)``: char-level vocabulary, random weights (seeded);
    ``cfg`` an ``SDTeacherConfig`` (``max_length``, ``text_width``, ``text_layers``, ``seed``).
    ``words`` become whole tokens too (``word_merges``; none: the digits teacher's tokenizer)."""
    try:
        from tokenizers.pre_tokenizers import ByteLevel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    except ImportError as err:
        msg = "the text-to-image teacher needs transformers (pip install transformers)"
        raise UserError(f"{msg}; {err}") from None
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    symbols = sorted(ByteLevel.alphabet())
    vocab.update((s, i + 2) for i, s in enumerate(symbols))
    vocab.update((s + "</w>", i + 2 + len(symbols)) for i, s in enumerate(symbols))
    merges = word_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=cfg.max_length)
    for word in words:
        if tokenizer.tokenize(word) != [word + "</w>"]:
            raise ValueError(f"word {word!r} is not one token: {tokenizer.tokenize(word)}")
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=cfg.text_width,
        intermediate_size=2 * cfg.text_width,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=4,
        max_position_embeddings=cfg.max_length,
        bos_token_id=0,
        eos_token_id=1,  # the pooled output is taken at the first eos (note §3)
        pad_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder = CLIPTextModel(config)
    return tokenizer, encoder.eval().requires_grad_(False)
