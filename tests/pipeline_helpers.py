"""Tiny diffusers pipelines saved once per test module with ``save_pretrained``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_pipelines(tmp_path_factory, builders: dict[str, Callable[[], Any]]) -> dict[str, tuple]:
    """``{family: (pipeline, its saved folder)}`` for every builder, each under its own tmp dir."""
    out: dict[str, tuple[Any, Path]] = {}
    for name, build in builders.items():
        pipe = build()
        folder = tmp_path_factory.mktemp(name) / "pipe"
        pipe.save_pretrained(folder)
        out[name] = (pipe, folder)
    return out


def camera_critic(teacher):
    """A ``CameraLoraCritic`` (adapter ``"critic"``, rank 4) on ``teacher``'s network with a
    trained-looking camera embedding (it starts at zero), seeded."""
    import torch

    from scoredistill.sources.camera_lora import CameraLoraCritic
    from scoredistill.sources.lora import add_lora

    torch.manual_seed(0)
    add_lora(teacher.model, "critic", 4, None)
    critic = CameraLoraCritic(teacher, "critic")
    with torch.no_grad():
        critic.embed[2].weight.normal_(0.0, 0.5)
        critic.embed[2].bias.normal_(0.0, 0.5)
    return critic
