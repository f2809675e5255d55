"""Utilities every training loop shares: EMA, the non-finite guard, logs, atomic checkpoints.

Checkpoints are folders ``checkpoints/step-<N>/`` holding ``state.safetensors`` (model and
optimizer tensors, RNG states as uint8 tensors) and ``state.json`` (step, optimizer
hyper-parameters, anything else JSON-able). A folder is written under a temporary name and
renamed; ``checkpoints/latest.json`` then points at it (atomic write), so a run killed at any
moment resumes from the last complete checkpoint. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import atomic_write_json, load_safetensors, save_safetensors_atomic

__all__ = [
    "JsonlLogger",
    "NonFiniteLossError",
    "check_finite",
    "ema_decay",
    "ema_update",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/inf; training stops instead of writing garbage."""


def check_finite(value: Tensor, step: int, what: str) -> None:
    """Raise ``NonFiniteLossError`` naming ``what`` and ``step`` if ``value`` is not finite."""
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteLossError(
            f"{what} is not finite at step {step} ({value.detach().flatten()[:4].tolist()}); "
            "lower the learning rate or enable gradient clipping; the last checkpoint is intact"
        )


def ema_decay(halflife_steps: float) -> float:
    """Per-step EMA decay with the given half-life in steps (0 disables: decay 0)."""
    return 0.0 if halflife_steps <= 0 else 0.5 ** (1.0 / halflife_steps)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach(), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


class JsonlLogger:
    """Append one JSON object per line to ``metrics.jsonl`` (flushed each line)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, record: dict[str, Any]) -> None:
        clean = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in record.items()
        }
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run logs them again)."""
        if not self.path.exists():
            return
        keep = [
            ln for ln in self.path.read_text().splitlines() if json.loads(ln).get("step", 0) <= step
        ]
        self.path.write_text("".join(ln + "\n" for ln in keep))


# ----------------------------------------------------------------------------- checkpoints
def _optimizer_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    sd = opt.state_dict()
    tensors, plain = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{name}/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain["state"].setdefault(str(idx), {})[key] = value
    return tensors, plain


def save_checkpoint(
    directory: Path,
    step: int,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rngs: dict[str, torch.Generator],
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``directory/step-<step>`` atomically and point ``latest.json`` at it."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model/{name}/{key}"] = value.detach().cpu().contiguous()
    plain: dict[str, Any] = {"step": step, "optimizers": {}, "extra": extra or {}}
    for name, opt in optimizers.items():
        opt_tensors, plain["optimizers"][name] = _optimizer_tensors(name, opt)
        tensors.update(opt_tensors)
    for name, rng in rngs.items():
        tensors[f"rng/{name}"] = rng.get_state()
    tensors["rng/torch_global"] = torch.get_rng_state()
    final = directory / f"step-{step}"
    tmp = directory / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_safetensors_atomic(tensors, tmp / "state.safetensors")
    atomic_write_json(tmp / "state.json", plain)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_json(directory / "latest.json", {"step": step, "path": final.name})
    _prune(directory, keep)
    return final


def _prune(directory: Path, keep: int) -> None:
    steps = sorted(int(p.name.split("-")[1]) for p in directory.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(directory / f"step-{old}", ignore_errors=True)


def latest_checkpoint(directory: Path) -> Path | None:
    """The folder ``latest.json`` points at, or None when there is no complete checkpoint."""
    pointer = directory / "latest.json"
    if not pointer.exists():
        return None
    path = directory / json.loads(pointer.read_text())["path"]
    return path if (path / "state.safetensors").exists() else None


def load_checkpoint(
    path: Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rngs: dict[str, torch.Generator],
) -> dict[str, Any]:
    """Restore a ``save_checkpoint`` folder in place; returns ``{"step": ..., "extra": ...}``."""
    tensors = load_safetensors(path / "state.safetensors")
    plain = json.loads((path / "state.json").read_text())
    for name, module in modules.items():
        prefix = f"model/{name}/"
        module.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
    for name, opt in optimizers.items():
        saved = plain["optimizers"][name]
        state: dict[int, dict[str, Any]] = {}
        prefix = f"optim/{name}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                idx, field = key[len(prefix) :].split("/", 1)
                state.setdefault(int(idx), {})[field] = value
        for idx, fields in saved["state"].items():
            state.setdefault(int(idx), {}).update(fields)
        opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    for name, rng in rngs.items():
        rng.set_state(tensors[f"rng/{name}"])
    torch.set_rng_state(tensors["rng/torch_global"])
    return {"step": plain["step"], "extra": plain["extra"]}
