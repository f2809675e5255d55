"""A camera-conditioned LoRA critic on a frozen text-to-image UNet (ProlificDreamer / ESD in 3-D).

ProlificDreamer's 3-D VSD and ESD train the fake score as a LoRA adapter on the teacher's own
UNet that sees the text *and* the camera: threestudio's ``stable_diffusion_vsd_guidance.py``
gives the LoRA UNet a ``class_embedding`` (a ``TimestepEmbedding`` of the flattened extrinsics)
whose output diffusers adds to the time embedding, passes ``class_labels=camera`` on the LoRA
branch only, and zeroes the camera in 10 % of the LoRA's training rows (``lora_cfg_training``).
ESD's entropy term is that critic with the camera zeroed and the text kept (``esd.py``).

Here the base UNet is shared with the teacher, so its ``class_embedding`` cannot change (the
teacher's forward would then demand ``class_labels``). The same sum is made with a forward hook
on ``unet.time_embedding`` that adds ``E(camera)`` to its output while the critic runs, and
nothing otherwise: the teacher's answers are unchanged. On SD3 and Flux transformers the hook
sits on ``time_text_embed`` (timestep + pooled text, the embedding their AdaLN layers read), the
same sum in the same place. ``E`` is Linear-SiLU-Linear on the
camera features ``[cos az, sin az]`` (the issue-15 azimuth embedding, ``teachers.mlp``), zero
for "no camera". Departure: ``E``'s last layer starts at zero (threestudio's starts random), so
the critic starts as the teacher at every camera, as its LoRA (``B = 0``) does.

The critic's condition is a ``PromptCamera``: prompt ids ``(B,)`` (the teacher's prompt table,
``teachers.diffusers_latent.set_prompt_labels``) and azimuths ``(B,)`` in degrees, where
``NULL_LABEL`` means no camera. Its ``null_like`` drops the camera and keeps the prompt, so
``parametrization.guided`` over it is ESD's camera CFG and ``objectives._ingredients.drop_labels``
is threestudio's camera dropout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..parametrization import NULL_LABEL
from ..teachers.mlp import azimuth_features
from .lora import AdapterView

__all__ = ["CameraLoraCritic", "PromptCamera"]


@dataclass(frozen=True)
class PromptCamera:
    """``prompts: (B,)`` prompt ids and ``azimuth: (B,)`` degrees (``NULL_LABEL``: no camera)."""

    prompts: Tensor
    azimuth: Tensor

    def __post_init__(self) -> None:
        if self.prompts.shape != self.azimuth.shape or self.prompts.dim() != 1:
            got = f"prompts {tuple(self.prompts.shape)}, azimuth {tuple(self.azimuth.shape)}"
            raise ValueError(f"PromptCamera needs prompts (B,) and azimuth (B,); got {got}")

    def __len__(self) -> int:
        return self.prompts.shape[0]

    def null_like(self) -> PromptCamera:
        """The same prompts without a camera (ESD's ``eps_psi(x_t; y, ∅cam)``)."""
        return PromptCamera(self.prompts, torch.full_like(self.azimuth, float(NULL_LABEL)))

    def with_null_rows(self, mask: Tensor) -> PromptCamera:
        """The camera dropped in rows where ``mask: (B,)`` is True (camera dropout)."""
        null = torch.full_like(self.azimuth, float(NULL_LABEL))
        return PromptCamera(
            self.prompts, torch.where(mask.to(self.azimuth.device), null, self.azimuth)
        )

    @staticmethod
    def cat(conds: Sequence[PromptCamera]) -> PromptCamera:
        return PromptCamera(
            torch.cat([c.prompts for c in conds]), torch.cat([c.azimuth for c in conds])
        )


def _time_embedding(model: nn.Module) -> tuple[nn.Module, int]:
    """The module whose output is the network's time embedding, and its width: a UNet's
    ``time_embedding``; an SD3 or Flux transformer's ``time_text_embed`` (Flux's inside the
    library's ``FluxNetwork``)."""
    for net in (model, getattr(model, "transformer", None)):
        if isinstance(embed := getattr(net, "time_embedding", None), nn.Module):
            return embed, int(embed.linear_2.out_features)
        if isinstance(embed := getattr(net, "time_text_embed", None), nn.Module):
            return embed, int(embed.timestep_embedder.linear_2.out_features)
    name = type(model).__name__
    raise ConfigError(
        f"the camera critic adds E(camera) to the network's time embedding; {name} has none "
        "(valid: a UNet2DConditionModel, SD3Transformer2DModel or FluxTransformer2DModel)"
    )


class CameraLoraCritic(nn.Module):
    """``denoise(x_t, t, PromptCamera)``: the teacher with LoRA adapter ``name`` on and
    ``E(camera)`` added to its time embedding. Parameters: the adapter's and ``E``'s only; other
    attributes (``schedule``, ``shape`` ...) are the teacher's."""

    def __init__(self, teacher: Any, name: str, hidden: int | None = None) -> None:
        super().__init__()
        self.view = AdapterView(teacher, name)
        time_embedding, width = _time_embedding(teacher.model)
        hidden = hidden or width
        self.embed = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, width))
        nn.init.zeros_(self.embed[2].weight)
        nn.init.zeros_(self.embed[2].bias)
        self._camera: list[Tensor] = []  # E(camera) of the call in progress (empty: none)
        self._hook = time_embedding.register_forward_hook(self._add_camera)

    def __getattr__(self, attr: str) -> Any:
        try:
            return super().__getattr__(attr)
        except AttributeError:
            return getattr(self.view.teacher, attr)

    def _add_camera(self, _module: nn.Module, _args: Any, out: Tensor) -> Tensor:
        return out + self._camera[0].to(out) if self._camera else out

    def denoise(self, x_t: Tensor, t: Tensor, cond: PromptCamera | None = None) -> Tensor:
        if not isinstance(cond, PromptCamera):
            got = type(cond).__name__
            raise ValueError(
                f"the camera critic's cond is a PromptCamera (prompt + camera); got {got}"
            )
        feats = azimuth_features(cond.azimuth, len(cond), x_t.new_zeros(()).float())
        self._camera.append(self.embed(feats))
        try:
            return self.view.denoise(x_t, t, cond.prompts)
        finally:
            self._camera.clear()

    def forward(self, x_t: Tensor, t: Tensor, cond: PromptCamera | None = None) -> Tensor:
        return self.denoise(x_t, t, cond)

    def remove(self) -> None:
        """Take the hook off the teacher's network (the critic no longer works after this)."""
        self._hook.remove()
