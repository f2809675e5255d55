"""The supervised knowledge-distillation loop: one trainable student, one frozen teacher.

One step draws a batch of training inputs, runs the student (capturing the feature modules the
loss asks for), looks up the teacher's outputs and takes one optimizer step on
``loss_fn(KDBatch)``. The teacher is put in ``eval()`` mode with ``requires_grad_(False)`` and
is never passed to ``Accelerator.prepare``: DDP refuses a module without trainable parameters
(torchdistill #122) and a frozen teacher needs no gradient sync. When ``cache_teacher`` is set
(inputs without augmentation) the teacher's logits and features are computed once over the whole
training set; otherwise it runs under ``no_grad`` on every batch.

Batches are a pure function of ``(seed, step)`` (an epoch-wise permutation), so a resumed run
sees exactly the batches an uninterrupted run would. The same loop trains the teacher and the
no-teacher baseline (``teacher=None``, a cross-entropy ``loss_fn``). Features are captured by
forward hooks on module paths (``model.get_submodule(path)``); note that FX-traced models (e.g.
torchvision's ``create_feature_extractor``) drop hooks (pytorch/vision#5193).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import LearningRate, NonNegativeFloat, PositiveInt, Range, Seed
from .common import (
    JsonlLogger,
    check_finite,
    gather_rng_states,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["FeatureHooks", "KDBatch", "KDTrainConfig", "batch_indices", "train_kd"]


@dataclass(frozen=True)
class KDTrainConfig:
    """Loop hyper-parameters (the method's own live in ``kd.run.KDConfig``)."""

    steps: PositiveInt = 1000  # optimizer steps
    batch_size: PositiveInt = 128  # per process
    lr: LearningRate = 1e-2  # Adam (the note's d.1 setting)
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: NonNegativeFloat = 0.0  # max grad norm; 0 disables
    cache_teacher: bool = True  # teacher outputs computed once (inputs are not augmented)
    # steps between evaluations
    eval_every: Annotated[int, Range(0, note="0: none inside the loop")] = 0
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 50
    seed: Seed = 0


@dataclass
class KDBatch:
    """What a loss sees at one step. ``labels`` ``(B,)`` use ``-1`` for "no label"."""

    x: Tensor  # (B, *D)
    labels: Tensor  # (B,)
    index: Tensor  # (B,) rows of the training set (per-sample weights, caches)
    student_logits: Tensor  # (B, C)
    teacher_logits: Tensor | None  # (B, C), detached; None without a teacher
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    rng: torch.Generator | None = None  # for losses that draw noise


class FeatureHooks:
    """Capture the outputs of named submodules: ``with FeatureHooks(model, ["body"]) as f:``.

    Inside the block every forward of ``model`` fills ``f.outputs[path]`` (the last call wins);
    leaving the block removes the hooks. A wrong path raises ``ValueError`` listing valid ones.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        self.modules: dict[str, nn.Module] = {}
        for path in paths:
            try:
                self.modules[path] = model.get_submodule(path)
            except AttributeError:
                valid = ", ".join(name for name, _ in model.named_modules() if name)
                raise ValueError(f"no submodule {path!r}; valid paths: {valid}") from None
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, path: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.outputs[path] = output

        return hook

    def __enter__(self) -> FeatureHooks:
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __getitem__(self, path: str) -> Tensor:
        return self.outputs[path]


def batch_indices(
    step: int, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1
) -> Tensor:
    """Rows of the ``step``-th batch of process ``rank``: ``(batch_size,)`` int64.

    The training set is walked epoch by epoch, each epoch a permutation seeded by
    ``(seed, epoch)``; a batch may straddle epochs (or span several when ``batch_size > n``).
    """
    start = (step * world + rank) * batch_size
    pos = torch.arange(start, start + batch_size)
    epochs, offsets = pos // n, pos % n
    out = torch.empty(batch_size, dtype=torch.int64)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        sel = epochs == epoch
        out[sel] = perm[offsets[sel]]
    return out


@torch.no_grad()
def teacher_outputs(
    teacher: nn.Module, x: Tensor, paths: Sequence[str] = ()
) -> tuple[Tensor, dict[str, Tensor]]:
    """The frozen teacher's logits ``(N, C)`` and captured features on ``x`` (one pass)."""
    with FeatureHooks(teacher, paths) as hooks:
        logits = teacher(x)
    return logits.detach(), {k: v.detach() for k, v in hooks.outputs.items()}


def _teacher_lookup(
    teacher: nn.Module | None,
    cfg: KDTrainConfig,
    x: Tensor,
    paths: Sequence[str],
    device: torch.device,
) -> Callable[[Tensor], tuple[Tensor | None, dict[str, Tensor]]]:
    """``rows -> (teacher logits, teacher features)`` for a batch: cached or computed."""
    if teacher is None:
        return lambda idx: (None, {})
    teacher = teacher.to(device).eval().requires_grad_(False)  # frozen; never prepared
    if not cfg.cache_teacher:
        return lambda idx: teacher_outputs(teacher, x[idx], paths)
    logits, feats = teacher_outputs(teacher, x, paths)
    return lambda idx: (logits[idx], {k: v[idx] for k, v in feats.items()})


def _setup(
    cfg: KDTrainConfig, student: nn.Module, out_dir: Path | None, resume: bool
) -> tuple[Accelerator, nn.Module, Any, torch.Generator, int, list[dict]]:
    """Accelerator, prepared student/optimizer, rng and the restored start step and history."""
    acc = Accelerator(cpu=not torch.cuda.is_available())
    rng = torch.Generator().manual_seed(cfg.seed + 7919 * acc.process_index)
    opt = torch.optim.Adam(student.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = acc.prepare(student, opt)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    start, history = 0, []
    found = latest_checkpoint(out_dir / "checkpoints") if (resume and out_dir) else None
    if found is not None:
        restored = load_checkpoint(
            found, modules={"student": student}, optimizers={"student": opt}, rngs={"loop": rng},
            config=cfg, rank=acc.process_index, world_size=acc.num_processes,
        )  # fmt: skip
        start, history = restored["step"], restored["extra"].get("history", [])
    if resume and out_dir and acc.is_main_process:  # no checkpoint: the old log restarts too
        JsonlLogger(out_dir / "metrics.jsonl").truncate_after(start)
    return acc, model, opt, rng, start, history


def _update(loss: Tensor, model: nn.Module, opt: Any, acc: Accelerator, clip: float) -> Tensor:
    """Backward, clip (0: no clipping), step; returns the pre-clip gradient norm."""
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    norm = acc.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf"))
    return torch.as_tensor(norm)


def train_kd(
    cfg: KDTrainConfig,
    *,
    student: nn.Module,
    loss_fn: Callable[[KDBatch], Tensor],
    x: Tensor,
    labels: Tensor,
    teacher: nn.Module | None = None,
    student_features: Sequence[str] = (),
    teacher_features: Sequence[str] = (),
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    out_dir: Path | None = None,
    resume: bool = False,
    desc: str = "kd",
) -> dict[str, Any]:
    """Train ``student`` on ``(x (N, *D), labels (N,))`` with ``loss_fn``; returns final logs.

    With ``out_dir``: ``metrics.jsonl`` every ``log_every`` steps and atomic checkpoints in
    ``out_dir/checkpoints`` (``resume`` continues from the latest). Raises
    ``NonFiniteLossError`` naming the step when the loss or gradient norm is NaN/inf.
    """
    acc, model, opt, rng, start, history = _setup(cfg, student, out_dir, resume)
    x, labels = x.to(acc.device), labels.to(acc.device)
    lookup = _teacher_lookup(teacher, cfg, x, teacher_features, acc.device)
    main = acc.is_main_process
    logger = JsonlLogger(out_dir / "metrics.jsonl") if (out_dir and main) else None
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc, disable=not main)
    t0, logs = time.perf_counter(), {}
    model.train()
    for step in bar:
        idx = batch_indices(
            step, len(x), cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes
        ).to(acc.device)
        with FeatureHooks(student, student_features) as hooks:
            s_logits = model(x[idx])
        t_logits, t_feats = lookup(idx)
        batch = KDBatch(x[idx], labels[idx], idx, s_logits, t_logits, hooks.outputs, t_feats, rng)
        loss = loss_fn(batch)
        check_finite(loss, step, f"{desc} loss")
        norm = _update(loss, model, opt, acc, cfg.grad_clip)
        check_finite(norm, step, f"{desc} gradient norm")
        opt.step()
        done, logs = step + 1, {"loss": loss.item(), "grad_norm": float(norm)}
        if logger and (done % cfg.log_every == 0 or done == cfg.steps):
            logger.log({"step": done, "wall_s": time.perf_counter() - t0, **logs})
            bar.set_postfix(loss=f"{logs['loss']:.3g}")
        if main and evaluate and cfg.eval_every and done % cfg.eval_every == 0:
            history.append({"step": done, **_evaluate(evaluate, student)})
            if logger:
                logger.log({"step": done, "eval": True, **history[-1]})
            model.train()
        if out_dir and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            rank_states = gather_rng_states({"loop": rng})  # a collective: every rank's noise
            if main:
                _checkpoint(out_dir, done, student, opt, rng, history, rank_states, asdict(cfg))
    acc.wait_for_everyone()
    model.eval()
    result = {"history": history, "logs": logs, "wall_s": time.perf_counter() - t0}
    return result | {"world_size": acc.num_processes, "is_main_process": main}


def _checkpoint(
    out_dir: Path,
    step: int,
    student: nn.Module,
    opt: Any,
    rng: torch.Generator,
    history: list,
    rank_states: list[dict[str, Tensor]],
    config: dict[str, Any],
) -> None:
    save_checkpoint(
        out_dir / "checkpoints",
        step,
        modules={"student": student},
        optimizers={"student": opt},
        rngs={"loop": rng},
        extra={"history": history},
        rank_states=rank_states,
        config=config,
    )


def _evaluate(evaluate: Callable[[nn.Module], dict[str, float]], model: nn.Module) -> dict:
    model.eval()
    with torch.no_grad():
        return evaluate(model)
