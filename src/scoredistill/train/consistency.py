"""The consistency loop: one student, its EMA copies, a frozen teacher, data batches.

One step draws data ``x_0`` (and labels), asks the objective for its loss
(``objective.loss(x0, cond, student=, target=, teacher=, rng=, step=)``: CD or sCM), and takes
one optimizer step. Two copies of the student follow it:

- ``target``: the network inside the loss when the objective has a ``target_decay`` (CD/LCM's
  ``f_theta-``: an EMA with that per-step decay; 0 is the stop-gradient student itself);
- ``ema``: the evaluated and sampled network, an EMA with a half-life in steps (EDM's, and the
  "halflife" EMA callback FastGen's sCM config uses).

Optimizers: RAdam (sCM: ``betas = (0.9, 0.99)``, no weight decay; FastGen
``fastgen/configs/methods/config_scm.py``) or AdamW (LCM: ``(0.9, 0.999)``, weight decay 0.01,
``max_grad_norm = 1``; diffusers ``train_lcm_distill_sd_wds.py``). Single process. The shared
utilities of ``train.common`` give the non-finite guard, the JSONL log and atomic checkpoints
with RNG states, so ``--resume`` continues the same run bit for bit.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import LearningRate, NonNegativeFloat, PositiveInt, Range, Seed
from .common import (
    AdamBeta,
    JsonlLogger,
    check_finite,
    ema_decay,
    ema_update,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["ConsistencyLoopConfig", "make_optimizer", "train_consistency"]

DataFn = Callable[[int, torch.Generator], tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class ConsistencyLoopConfig:
    """Loop hyper-parameters; method defaults live in the objective and the preset."""

    steps: PositiveInt = 1500  # optimizer steps
    batch_size: PositiveInt = 512
    lr: LearningRate = 1e-3  # a CPU budget's rate (sCM's and LCM's are for 10^5 GPU steps)
    optimizer: Literal["radam", "adamw"] = "radam"
    beta1: AdamBeta = 0.9  # sCM: RAdam (0.9, 0.99)
    beta2: AdamBeta = 0.99
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: NonNegativeFloat = 0.0  # max grad norm; 0 disables (FastGen's sCM: 1e6, i.e. off)
    ema_halflife: NonNegativeFloat = 100.0  # in steps; 0: the EMA is the student
    # steps between exact evaluations of the EMA student
    eval_every: Annotated[int, Range(0, note="0: only at the end")] = 500
    eval_samples: PositiveInt = 2000
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 25
    seed: Seed = 0


def make_optimizer(cfg: ConsistencyLoopConfig, module: nn.Module) -> torch.optim.Optimizer:
    kind = torch.optim.RAdam if cfg.optimizer == "radam" else torch.optim.AdamW
    return kind(
        module.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
    )


def _step(loss: Tensor, opt: torch.optim.Optimizer, module: nn.Module, clip: float) -> float:
    """Backward, clip, step; returns the pre-clip gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip if clip > 0 else float("inf"))
    opt.step()
    return float(norm)


def train_consistency(
    cfg: ConsistencyLoopConfig,
    *,
    objective: Any,
    student: nn.Module,
    teacher: Any,
    sample_data: DataFn,
    evaluate: Callable[[nn.Module], dict[str, float]],
    out_dir: Path,
    resume: bool = False,
    desc: str = "consistency",
) -> dict[str, Any]:
    """Train ``student`` with ``objective``; returns ``{"ema", "history", "logs", "wall_s"}``.

    ``sample_data(n, rng) -> (x0: (n, D), labels | None)`` draws the data the objective noises.
    """
    torch.manual_seed(cfg.seed)
    rng = torch.Generator().manual_seed(cfg.seed + 7919)
    ema = copy.deepcopy(student).requires_grad_(False)
    target_decay = getattr(objective, "target_decay", None)
    target = copy.deepcopy(student).requires_grad_(False) if target_decay is not None else None
    opt = make_optimizer(cfg, student)
    modules = {"student": student, "ema": ema} | ({"target": target} if target else {})
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, logger = out_dir / "checkpoints", JsonlLogger(out_dir / "metrics.jsonl")
    start, history = 0, []
    found = latest_checkpoint(ckpt_dir) if resume else None
    if found is not None:
        restored = load_checkpoint(
            found, modules=modules, optimizers={"student": opt}, rngs={"loop": rng},
            config=asdict(cfg),
        )  # fmt: skip
        start, history = restored["step"], restored["extra"].get("history", [])
    if resume:
        logger.truncate_after(start)
    decay, t0, logs = ema_decay(cfg.ema_halflife), time.perf_counter(), {}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc)
    for step in bar:
        x0, cond = sample_data(cfg.batch_size, rng)
        loss = objective.loss(
            x0, cond, student=student, target=target, teacher=teacher, rng=rng, step=step
        )
        check_finite(loss.value, step, "consistency loss")
        logs = {"loss": loss.value.item(), **loss.logs}
        logs["grad_norm"] = _step(loss.value, opt, student, cfg.grad_clip)
        check_finite(torch.tensor(logs["grad_norm"]), step, "student gradient")
        ema_update(ema, student, decay if step > 0 else 0.0)
        if target is not None:
            ema_update(target, student, target_decay)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            logger.log({"step": done, "wall_s": time.perf_counter() - t0, **logs})
            bar.set_postfix(loss=f"{logs['loss']:.3g}")
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            history.append({"step": done, **evaluate(ema)})
            logger.log({"step": done, "eval": True, **history[-1]})
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(
                ckpt_dir, done, modules=modules, optimizers={"student": opt},
                rngs={"loop": rng}, extra={"history": history}, config=asdict(cfg),
            )  # fmt: skip
    return {"ema": ema, "history": history, "logs": logs, "wall_s": time.perf_counter() - t0}
