"""The consistency loop: one student, its EMA copies, a frozen teacher, data batches, an
optional critic.

One step draws data ``x_0`` (and labels), asks the objective for its loss
(``objective.loss(x0, cond, student=, target=, teacher=, rng=, step=)``: CD, sCM or rCM), and
takes one optimizer step. With a ``critic`` (rCM's fake score), while
``objective.uses_critic(step)`` the step is preceded by ``critic_updates`` critic steps on
``objective.critic_loss(x0, cond, student=, critic=, rng=, index=)`` and the student's loss gets
``critic=``. rCM updates the student every ``student_update_freq = 5``-th iteration and the
critic on the other four (``NVlabs/rcm`` ``t2v_model_distill_rcm.py::is_student_phase``):
``critic_updates = 4``. The critic's optimizer is rCM's AdamW (``betas = (0, 0.999)``, weight
decay 0.01; ``rcm/configs/experiments/rcm/wan2pt1_t2v.py``). Without a critic the loop draws
and computes exactly what it did before the critic existed. Two copies of the student follow it:

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

__all__ = [
    "ConsistencyLoopConfig",
    "make_critic_optimizer",
    "make_optimizer",
    "train_consistency",
]

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
    # with a critic (rCM): critic steps per student step; rCM student_update_freq 5 = 4 + 1
    critic_updates: PositiveInt = 4
    critic_batch_size: Annotated[int, Range(0, note="0: batch_size")] = 0  # per critic step
    lr_critic: LearningRate = 1e-3  # the two-player loop's critic rate (rCM: 0.2x the student's)
    critic_beta1: AdamBeta = 0.0  # rCM's AdamW (0, 0.999), weight decay 0.01
    critic_beta2: AdamBeta = 0.999
    critic_weight_decay: NonNegativeFloat = 0.01


def make_optimizer(cfg: ConsistencyLoopConfig, module: nn.Module) -> torch.optim.Optimizer:
    kind = torch.optim.RAdam if cfg.optimizer == "radam" else torch.optim.AdamW
    return kind(
        module.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
    )


def make_critic_optimizer(cfg: ConsistencyLoopConfig, critic: nn.Module) -> torch.optim.Optimizer:
    betas = (cfg.critic_beta1, cfg.critic_beta2)
    return torch.optim.AdamW(
        critic.parameters(), cfg.lr_critic, betas=betas, weight_decay=cfg.critic_weight_decay
    )


def _step(loss: Tensor, opt: torch.optim.Optimizer, module: nn.Module, clip: float) -> float:
    """Backward, clip, step; returns the pre-clip gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip if clip > 0 else float("inf"))
    opt.step()
    return float(norm)


def _critic_steps(
    cfg: ConsistencyLoopConfig,
    objective: Any,
    step: int,
    *,
    student: nn.Module,
    critic: nn.Module,
    opt_c: torch.optim.Optimizer,
    sample_data: DataFn,
    rng: torch.Generator,
) -> dict[str, float]:
    """``cfg.critic_updates`` critic steps before student step ``step``; returns their logs."""
    for j in range(cfg.critic_updates):
        x0, cond = sample_data(cfg.critic_batch_size or cfg.batch_size, rng)
        index = step * cfg.critic_updates + j
        loss_c = objective.critic_loss(
            x0, cond, student=student, critic=critic, rng=rng, index=index
        )
        check_finite(loss_c.value, step, "critic loss")
        norm = _step(loss_c.value, opt_c, critic, cfg.grad_clip)
    logs = {"critic_loss": loss_c.value.item(), "critic_grad_norm": norm}
    return logs | {f"c/{k}": v for k, v in loss_c.logs.items()}


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
    critic: nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``student`` with ``objective``; returns ``{"ema", "history", "logs", "wall_s"}``.

    ``sample_data(n, rng) -> (x0: (n, D), labels | None)`` draws the data the objective noises.
    ``critic``: a trainable denoiser (``.denoise``, ``.schedule``) for objectives with a
    ``critic_loss`` (rCM); it is checkpointed with its optimizer.
    """
    torch.manual_seed(cfg.seed)
    rng = torch.Generator().manual_seed(cfg.seed + 7919)
    ema = copy.deepcopy(student).requires_grad_(False)
    target_decay = getattr(objective, "target_decay", None)
    target = copy.deepcopy(student).requires_grad_(False) if target_decay is not None else None
    opt = make_optimizer(cfg, student)
    modules = {"student": student, "ema": ema} | ({"target": target} if target else {})
    optims: dict[str, torch.optim.Optimizer] = {"student": opt}
    opt_c = None
    if critic is not None:
        if not hasattr(objective, "critic_loss"):
            raise ValueError(f"{type(objective).__name__} has no critic_loss: pass critic=None")
        opt_c = make_critic_optimizer(cfg, critic)
        modules, optims = modules | {"critic": critic}, optims | {"critic": opt_c}
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, logger = out_dir / "checkpoints", JsonlLogger(out_dir / "metrics.jsonl")
    start, history = 0, []
    found = latest_checkpoint(ckpt_dir) if resume else None
    if found is not None:
        restored = load_checkpoint(
            found, modules=modules, optimizers=optims, rngs={"loop": rng}, config=cfg,
        )  # fmt: skip
        start, history = restored["step"], restored["extra"].get("history", [])
    if resume:
        logger.truncate_after(start)
    decay, t0, logs = ema_decay(cfg.ema_halflife), time.perf_counter(), {}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc)
    for step in bar:
        with_critic = critic is not None and objective.uses_critic(step)
        critic_logs = {}
        if with_critic:
            critic_logs = _critic_steps(
                cfg, objective, step, student=student, critic=critic, opt_c=opt_c,
                sample_data=sample_data, rng=rng,
            )  # fmt: skip
        x0, cond = sample_data(cfg.batch_size, rng)
        kw = {"critic": critic} if with_critic else {}
        loss = objective.loss(
            x0, cond, student=student, target=target, teacher=teacher, rng=rng, step=step, **kw
        )
        check_finite(loss.value, step, "consistency loss")
        logs = {"loss": loss.value.item(), **loss.logs, **critic_logs}
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
                ckpt_dir, done, modules=modules, optimizers=optims,
                rngs={"loop": rng}, extra={"history": history}, config=asdict(cfg),
            )  # fmt: skip
    return {"ema": ema, "history": history, "logs": logs, "wall_s": time.perf_counter() - t0}
