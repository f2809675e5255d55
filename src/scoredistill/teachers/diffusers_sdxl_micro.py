"""SDXL's micro-conditioning as the UNet's ``time_ids`` (Podell et al. 2023, "SDXL", §2.1:
"conditioning the model on image size" and "on cropping parameters").

The UNet sees six numbers per row, ``(original_h, original_w, crop_top, crop_left, target_h,
target_w)``, embedded like the timestep (``addition_time_embed_dim`` each) and added to the
pooled text embedding. Diffusers 0.42 ``StableDiffusionXLPipeline.__call__`` builds them with
``_get_add_time_ids(original_size, crops_coords_top_left, target_size)``:

- ``original_size = original_size or (height, width)``, ``target_size = target_size or
  (height, width)``, ``crops_coords_top_left`` default ``(0, 0)``;
- the unconditional rows of CFG take ``negative_original_size``, ``negative_crops_coords_top_left``
  and ``negative_target_size`` **only when both sizes are given**; otherwise they repeat the
  conditional ids (``negative_add_time_ids = add_time_ids``).

``MicroCond`` holds those six arguments; ``rows(size)`` gives the conditional and the null row at
the training size ``(H, W)``, which ``LatentDiffusersTeacher.encode_prompts`` puts in the
``TextCond`` (``time_ids`` / ``null_time_ids``), so guidance's null branch, classifier-free dropout
and prompt ids all carry the row the pipeline would use. ``pipeline_kwargs`` names the arguments
to pass to the pipeline at inference (an exported student was trained with them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MicroCond"]

Pair = tuple[int, int]


@dataclass(frozen=True)
class MicroCond:
    """``StableDiffusionXLPipeline.__call__``'s six micro-conditioning arguments; None sizes
    mean the image size, as in the pipeline."""

    original_size: Pair | None = None
    crops_coords_top_left: Pair = (0, 0)
    target_size: Pair | None = None
    negative_original_size: Pair | None = None
    negative_crops_coords_top_left: Pair = (0, 0)
    negative_target_size: Pair | None = None

    @property
    def has_negative(self) -> bool:
        """Whether the null rows get their own ids (the pipeline: both negative sizes given)."""
        return self.negative_original_size is not None and self.negative_target_size is not None

    def rows(self, size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(time_ids (1, 6), null_time_ids (1, 6))`` at the pixel size ``(H, W)``."""
        hw = (int(size[0]), int(size[1]))
        cond = (*(self.original_size or hw), *self.crops_coords_top_left, *(self.target_size or hw))
        null = cond
        if self.has_negative:
            null = (
                *self.negative_original_size,  # type: ignore[misc]
                *self.negative_crops_coords_top_left,
                *self.negative_target_size,  # type: ignore[misc]
            )
        return torch.tensor([cond], dtype=torch.float32), torch.tensor([null], dtype=torch.float32)

    def pipeline_kwargs(self, negative: bool = True) -> dict[str, Any]:
        """The arguments that differ from the pipeline's defaults, as ``__call__`` takes them
        (``negative=False``: without the null rows' ones, which act only under CFG)."""
        out = {}
        for name, value in vars(self).items():
            default = (0, 0) if name.endswith("crops_coords_top_left") else None
            null_row = name.startswith("negative_")
            if value != default and (not null_row or (negative and self.has_negative)):
                out[name] = tuple(value)
        return out
