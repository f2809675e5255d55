"""SNOOPI's NASA-T: a one-step student trained with the negative prompt in its cross-attention.

Nguyen et al., "SNOOPI: Supercharged One-step Diffusion Distillation with Proper Guidance",
arXiv 2412.02687 v3, Sec. 5.3 (NASA-T) and Sec. 6.1 (its settings), read in the stored v3 text:

- the student is SwiftBrush's (VSD, ``objectives/vsd.py``) with PG-SB's random scale;
- the teacher's guidance takes the negative prompt ``y-`` as its unconditional branch
  (``eps(x_t, t, y, y-, kappa) = eps(y-) + kappa (eps(y) - eps(y-))``, eq. 5: the library's
  ``negative_prompt``);
- the LoRA teacher (the critic) keeps the empty prompt ("not using them yields better
  results", Table 5);
- the student's cross-attention runs NASA (eq. 9, ``Z = Z+ - alpha Z-``,
  ``sources.nasa_attention``) with the negative prompt's embedding, ``alpha ~ U(0, 1)`` drawn
  "in each iteration" so that the student adapts to every scale.

``NasaStudent`` wraps any generator whose ``denoiser.model`` is a diffusers UNet with
cross-attention (a full copy or a LoRA view on the teacher's base): each training call draws
``alpha`` from the call's ``rng`` (the loop's, checkpointed, so a resumed run is the same run)
and runs the generator with NASA on; ``fixed_alpha`` sets one ``alpha`` for evaluation (0: the
paper's "NASA-T" rows, the plain student; > 0: "NASA-T + NASA-I"). The processors are installed
for the call only, so a shared base serves the teacher and the critic unchanged.

The paper trains with "a dataset of 10K negative prompts" (Sec. 6.1) and does not say whether
one is drawn per sample or per batch. ``NegativeDraw`` draws one per training call, as ``alpha``
is drawn (uniformly, from the same ``rng``), and makes it the null of the teacher's guidance for
that step too (eq. 5), so the student's NASA negative and the teacher's ``y-`` agree; evaluation
calls use the run's single ``negative_prompt``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .nasa_attention import check_alpha, disable_nasa, enable_nasa, nasa_layers

__all__ = ["NasaStudent", "NegativeDraw", "fixed_alpha", "nasa_on", "unwrap_nasa"]


@contextmanager
def nasa_on(unet: nn.Module, alpha: float, negative: Tensor) -> Iterator[None]:
    """NASA with ``alpha`` and ``negative: (1, L, E)`` on every cross-attention layer of
    ``unet`` for the block; the previous processors (the same objects) afterwards."""
    enable_nasa(unet, alpha, negative)
    try:
        yield
    finally:
        disable_nasa(unet)


Encode = Callable[[str], tuple[Tensor, "Tensor | None"]]  # text -> (null (1, L, E), pooled)


class NegativeDraw:
    """A list of negative prompts for NASA-T (module docstring). ``texts``: the list (the
    paper's 10K); ``default``: the run's ``negative_prompt`` (evaluation calls) and
    ``default_rows`` its null rows, already in the teacher's table; ``encode``: a drawn text's
    null row (``DiffusersLatentTeacher.encode_null``: encoded per call, not cached, so a long
    list costs no memory); ``holders``: the objects whose ``prompt_table`` null follows the
    negative in use (the teacher, and the critic when it shares the negative)."""

    def __init__(
        self,
        texts: Sequence[str],
        default: str,
        default_rows: tuple[Tensor, Tensor | None],
        encode: Encode,
        holders: Sequence[Any],
    ) -> None:
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise ValueError(f"NegativeDraw needs non-empty negative prompts, got {texts!r}")
        self.texts, self.default, self.default_rows = tuple(texts), default, default_rows
        self.encode, self.holders = encode, tuple(holders)

    def pick(self, rng: torch.Generator | None, training: bool) -> str:
        """A uniform draw of ``texts`` from ``rng`` (the global RNG when None) in training,
        ``default`` otherwise."""
        if not training:
            return self.default
        where = rng.device if rng is not None else "cpu"
        return self.texts[int(torch.randint(len(self.texts), (), generator=rng, device=where))]

    def __deepcopy__(self, memo: dict[int, Any]) -> NegativeDraw:
        return self  # the EMA student shares it: references (the teacher), no state of its own

    def use(self, text: str) -> Tensor:
        """``text``'s null row, set as every holder's guidance null; returns it ``(1, L, E)``."""
        null, pooled = self.default_rows if text == self.default else self.encode(text)
        for holder in self.holders:
            holder.prompt_table = replace(holder.prompt_table, null=null, null_pooled=pooled)
        return null


class NasaStudent(nn.Module):
    """``generator`` trained under NASA with ``alpha ~ U(alpha_range)`` per call (module
    docstring). ``negative: (1, L, E)`` is the negative prompt's embedding (a plain attribute:
    not a parameter, not in checkpoints); ``negatives``, when given, replaces it by a draw from
    a list on every call (``NegativeDraw``). Other attributes are the generator's."""

    def __init__(
        self,
        generator: nn.Module,
        negative: Tensor,
        alpha_range: tuple[float, float] = (0.0, 1.0),
        negatives: NegativeDraw | None = None,
    ) -> None:
        super().__init__()
        lo, hi = (check_alpha(a, "nasa.alpha_range") for a in alpha_range)
        if lo > hi:
            raise ValueError(
                f"nasa.alpha_range must be (low, high) with low <= high, got {alpha_range}"
            )
        if not nasa_layers(generator.denoiser.model):
            raise ValueError("NASA-T needs a UNet with cross-attention layers (none found)")
        self.generator = generator
        self.negative, self.alpha_range = negative.detach(), (lo, hi)
        self.negatives = negatives
        self.alpha: float | None = None  # None: drawn per call; else fixed (fixed_alpha)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["generator"], name)

    def draw_alpha(self, rng: torch.Generator | None) -> float:
        """This call's ``alpha``: the fixed one, or ``U(alpha_range)`` from ``rng``."""
        if self.alpha is not None:
            return self.alpha
        lo, hi = self.alpha_range
        where = rng.device if rng is not None else "cpu"
        return lo + (hi - lo) * float(torch.rand((), generator=rng, device=where))

    def forward(
        self,
        z: Tensor,
        cond: Any = None,
        *,
        rng: torch.Generator | None = None,
        k: int | None = None,
    ) -> Tensor:
        alpha, negative = self.draw_alpha(rng), self.negative
        if self.negatives is not None:  # after alpha: the same rng, the same order on resume
            negative = self.negatives.use(self.negatives.pick(rng, self.alpha is None))
        with nasa_on(self.generator.denoiser.model, alpha, negative):
            return self.generator(z, cond, rng=rng, k=k)

    def backward_simulation(
        self, z: Tensor, cond: Any = None, *, rng: torch.Generator | None, k: int | None = None
    ) -> tuple[Tensor, int]:
        """DMD2's backward simulation (``DiffusersGenerator.backward_simulation``) under NASA."""
        k = self.generator.draw_step(rng) if k is None else k
        return self(z, cond, rng=rng, k=k), k


@contextmanager
def fixed_alpha(model: nn.Module, alpha: float) -> Iterator[nn.Module]:
    """``model`` (a ``NasaStudent``, or any generator: unchanged) sampling at one ``alpha``."""
    if not isinstance(model, NasaStudent):
        yield model
        return
    if model.negatives is not None:  # the run's negative, in the teacher's guidance too
        model.negatives.use(model.negatives.default)
    before, model.alpha = model.alpha, check_alpha(alpha, "nasa.eval_alpha")
    try:
        yield model
    finally:
        model.alpha = before


def unwrap_nasa(model: nn.Module) -> nn.Module:
    """The plain generator inside a ``NasaStudent`` (what is exported), or ``model`` itself."""
    return model.generator if isinstance(model, NasaStudent) else model
