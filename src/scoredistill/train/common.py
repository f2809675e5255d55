"""Utilities every training loop shares: EMA, the non-finite guard, logs, atomic checkpoints.

Checkpoints are folders ``checkpoints/step-<N>/`` (``N`` completed updates) holding
``state.safetensors`` (model and optimizer tensors, RNG states as uint8 tensors: one set per
rank under ``torchrun``, ``rng/rank<r>/<name>``) and ``state.json`` (step, world size, the loop's
config, optimizer hyper-parameters, anything else JSON-able). A folder is written under a
temporary name and renamed; ``checkpoints/latest.json`` then points at it (atomic write), so a run
killed at any moment resumes from the last complete checkpoint. When ``latest.json`` is missing or
points at an incomplete folder, the newest complete ``step-*`` folder is used (and named on
stderr); a path in ``latest.json`` outside the checkpoint folder is refused. A resume refuses a
changed architecture (a tensor's shape), a changed loop setting (anything but ``steps``) and a
different number of processes, naming what differs. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from ..config import Range, field_defaults
from ..errors import NonFiniteError, UserError
from ..io import atomic_write_bytes, atomic_write_json, load_safetensors, save_safetensors_atomic

__all__ = [
    "AdamBeta",
    "JsonlLogger",
    "NonFiniteLossError",
    "ResumeError",
    "check_finite",
    "check_loop_config",
    "cosine_factor",
    "ema_decay",
    "ema_update",
    "gather_rng_states",
    "latest_checkpoint",
    "load_checkpoint",
    "module_state",
    "run_device",
    "save_checkpoint",
]

AdamBeta = Annotated[float, Range(0, 1, open_hi=True)]  # Adam's betas: 0 <= beta < 1
_STEP_DIR = re.compile(r"step-(\d+)")


class NonFiniteLossError(NonFiniteError):
    """A loss or gradient became NaN/inf; training stops instead of writing garbage."""


class ResumeError(UserError):
    """``--resume`` cannot continue this checkpoint exactly (another architecture, loop setting
    or number of processes); the message names what differs."""


def check_finite(value: Tensor, step: int, what: str) -> None:
    """Raise ``NonFiniteLossError`` naming ``what`` and ``step`` if ``value`` is not finite.

    ``step`` counts completed updates, as checkpoints do: "at step 3" is the fourth update, and
    ``step-3`` is the last state that can be good. A negative step is a warm-up before step 0.
    """
    if not bool(torch.isfinite(value).all()):
        where = (
            f"at step {step} (during update {step + 1}; checkpoints count completed updates)"
            if step >= 0
            else "during the warm-up before step 0"
        )
        raise NonFiniteLossError(
            f"{what} is not finite {where} ({value.detach().flatten()[:4].tolist()}); "
            "lower the learning rate or enable gradient clipping; the last checkpoint is intact",
            max(step, 0),
        )


def cosine_factor(step: int, steps: int) -> float:
    """The learning-rate factor of cosine decay (Loshchilov & Hutter 2017, SGDR eq. 5 without
    restarts, floor 0): 1 at step 0, 0 at ``steps``. A function of the step alone, so a resumed
    run continues the same curve without scheduler state."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def ema_decay(halflife_steps: float) -> float:
    """Per-step EMA decay with the given half-life in steps (0 disables: decay 0)."""
    return 0.0 if halflife_steps <= 0 else 0.5 ** (1.0 / halflife_steps)


def run_device() -> torch.device:
    """Where a run's networks live: this process's GPU (``LOCAL_RANK`` under torchrun, as
    Accelerate's ``Accelerator.device``) when CUDA is available, else the CPU. Runs move the
    teacher there before the players are copied from it, so players, EMA and teacher share it."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


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
        """Drop lines logged after ``step`` (a resumed run logs them again) and a torn last line
        (a run killed while writing it); a damaged line elsewhere is named, not guessed at."""
        if not self.path.exists():
            return
        lines = [ln for ln in self.path.read_text(errors="replace").splitlines() if ln.strip()]
        keep = []
        for i, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                if i == len(lines):
                    break  # torn by a kill mid-write: the resumed run writes it again
                raise UserError(f"{self.path}: line {i} is not a JSON object; repair or remove it")
            if record.get("step", 0) <= step:
                keep.append(line)
        atomic_write_bytes(self.path, "".join(ln + "\n" for ln in keep).encode())


# ----------------------------------------------------------------------------- checkpoints
def gather_rng_states(rngs: Mapping[str, torch.Generator]) -> list[dict[str, Tensor]]:
    """Every rank's RNG states (``rngs`` and torch's global generator), indexed by rank.

    Under ``torch.distributed`` this is a collective: every rank must call it at the same step.
    """
    mine = {name: g.get_state() for name, g in rngs.items()}
    mine["torch_global"] = torch.get_rng_state()
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


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
    rank_states: Sequence[Mapping[str, Tensor]] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``directory/step-<step>`` atomically and point ``latest.json`` at it.

    ``rank_states`` (from :func:`gather_rng_states`, one entry per rank) replaces this process's
    ``rngs``: each rank resumes its own noise. ``config`` (the loop's settings) is kept so that
    :func:`load_checkpoint` can refuse a resume that changes it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model/{name}/{key}"] = value.detach().cpu().contiguous()
    plain: dict[str, Any] = {"step": step, "optimizers": {}, "extra": extra or {}}
    plain["world_size"] = 1 if rank_states is None else len(rank_states)
    if config is not None:
        plain["config"] = dict(config)
    for name, opt in optimizers.items():
        opt_tensors, plain["optimizers"][name] = _optimizer_tensors(name, opt)
        tensors.update(opt_tensors)
    if rank_states is None:
        for name, rng in rngs.items():
            tensors[f"rng/{name}"] = rng.get_state()
        tensors["rng/torch_global"] = torch.get_rng_state()
    for rank, states in enumerate(rank_states or ()):
        for name, state in states.items():
            tensors[f"rng/rank{rank}/{name}"] = state
    final = directory / f"step-{step}"
    tmp = directory / f".tmp-step-{step}-{os.getpid()}"
    _remove_stale_temps(directory)
    tmp.mkdir()
    save_safetensors_atomic(tensors, tmp / "state.safetensors")
    atomic_write_json(tmp / "state.json", plain)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_json(directory / "latest.json", {"step": step, "path": final.name})
    _prune(directory, keep)
    return final


def _remove_stale_temps(directory: Path) -> None:
    """Temporary folders of writes that were killed (one writer per run folder: the lock)."""
    for tmp in directory.glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _steps(directory: Path) -> list[int]:
    found = (_STEP_DIR.fullmatch(p.name) for p in directory.glob("step-*") if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def _prune(directory: Path, keep: int) -> None:
    for old in _steps(directory)[:-keep]:
        shutil.rmtree(directory / f"step-{old}", ignore_errors=True)


def _complete(path: Path) -> bool:
    return (path / "state.safetensors").is_file() and (path / "state.json").is_file()


def _pointed(directory: Path) -> Path | None:
    """The folder ``latest.json`` names, confined to ``directory``; None when it is unreadable."""
    try:
        name = json.loads((directory / "latest.json").read_text())["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or _STEP_DIR.fullmatch(name) is None:
        raise UserError(
            f"{directory / 'latest.json'} names {name!r}; a checkpoint must be a step-<N> folder "
            "inside the run's checkpoints/ folder"
        )
    return directory / name


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint to resume from: the folder ``latest.json`` points at, else (missing,
    unreadable or pointing at an incomplete folder) the newest complete ``step-*`` folder, named
    on stderr. None when there is no complete checkpoint at all."""
    pointed = _pointed(directory) if (directory / "latest.json").exists() else None
    if pointed is not None and _complete(pointed):
        return pointed
    complete = [directory / f"step-{n}" for n in _steps(directory)]
    complete = [p for p in complete if _complete(p)]
    if not complete:
        return None
    why = "is missing" if pointed is None else f"points at an incomplete {pointed.name}"
    print(
        f"scoredistill: note: {directory / 'latest.json'} {why}; resuming from {complete[-1]}",
        file=sys.stderr,
    )
    return complete[-1]


def check_loop_config(
    saved: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    where: Path,
    steps_fixed: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Refuse a resume whose loop settings differ from the checkpoint's (``steps`` may grow,
    unless ``steps_fixed`` gives the reason it may not), naming every differing key. A setting
    the checkpoint lacks (added to the loop later) is accepted at its value in ``defaults``
    (``config.field_defaults``: the behaviour from before it existed)."""
    if saved is None:  # a checkpoint from before loop configs were stored
        return
    new = json.loads(json.dumps(dict(new)))  # tuples -> lists, as stored
    known = json.loads(json.dumps(dict(defaults or {})))
    keys = sorted(
        k
        for k in {*saved, *new} - {"steps"}
        if saved.get(k) != new.get(k)
        and not (k not in saved and k in known and known[k] == new.get(k))
    )
    if keys:
        diff = ", ".join(f"{k} {saved.get(k)!r} -> {new.get(k)!r}" for k in keys)
        raise ResumeError(
            f"--resume: {where} was trained with other loop settings ({diff}); resume with the "
            "run's own settings (config.json) or start a new --out"
        )
    if steps_fixed and saved.get("steps") != new.get("steps"):
        raise ResumeError(
            f"--resume: steps cannot change from {saved.get('steps')} to {new.get('steps')} "
            f"({steps_fixed}); keep steps={saved.get('steps')} or start a new --out"
        )


def _check_shapes(name: str, module: nn.Module, found: dict[str, Tensor], where: Path) -> None:
    expected = module.state_dict()
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise ResumeError(
            f"--resume: {where} holds another {name} network (tensors missing: {missing[:3]}, "
            f"unexpected: {extra[:3]}); resume with the run's config.json or start a new --out"
        )
    for key, ref in expected.items():
        if found[key].shape != ref.shape:
            raise ResumeError(
                f"--resume: {where} holds another {name} architecture: tensor {key!r} has shape "
                f"{tuple(found[key].shape)}, the new config builds {tuple(ref.shape)}; resume "
                "with the run's config.json or start a new --out"
            )


def _module_part(tensors: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """The state dict ``save_checkpoint`` stored for module ``name``."""
    prefix = f"model/{name}/"
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def module_state(path: Path, name: str) -> dict[str, Tensor]:
    """Module ``name``'s state dict from a ``save_checkpoint`` folder (e.g. ``"ema"``, the
    student a run evaluates), for loading a finished run without its optimizers."""
    return _module_part(load_safetensors(path / "state.safetensors"), name)


def load_checkpoint(
    path: Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rngs: dict[str, torch.Generator],
    rank: int = 0,
    world_size: int = 1,
    config: Any = None,
    steps_fixed: str = "",
) -> dict[str, Any]:
    """Restore a ``save_checkpoint`` folder in place; returns ``{"step": ..., "extra": ...}``.

    Checks before restoring anything: the loop ``config`` (a dataclass, whose field defaults
    are what a checkpoint from before a field existed ran with; or a mapping; see
    :func:`check_loop_config`), every
    tensor's shape, and the number of processes (each ``rank`` restores its own RNG states).
    """
    tensors = load_safetensors(path / "state.safetensors")
    plain = json.loads((path / "state.json").read_text())
    if config is not None:
        loop, defaults = (
            (dataclasses.asdict(config), field_defaults(config))
            if dataclasses.is_dataclass(config)
            else (config, None)
        )
        check_loop_config(plain.get("config"), loop, path, steps_fixed, defaults)
    saved_world = int(plain.get("world_size", 1))
    per_rank = any(k.startswith("rng/rank") for k in tensors)
    if saved_world != world_size and (per_rank or world_size > 1):
        raise ResumeError(
            f"--resume: {path} was written by {saved_world} process(es), this run has "
            f"{world_size}; each rank resumes its own noise: use --nproc_per_node {saved_world}"
        )
    parts = {}
    for name, module in modules.items():
        parts[name] = _module_part(tensors, name)
        _check_shapes(name, module, parts[name], path)
    for name, module in modules.items():
        module.load_state_dict(parts[name])
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
    rng_prefix = f"rng/rank{rank}/" if per_rank else "rng/"
    for name, rng in rngs.items():
        rng.set_state(tensors[f"{rng_prefix}{name}"])
    torch.set_rng_state(tensors[f"{rng_prefix}torch_global"])
    return {"step": plain["step"], "extra": plain["extra"]}
