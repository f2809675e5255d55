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
