"""The optimization loop of score distillation: parameters seen as samples, one frozen teacher.

DreamFusion's loop, written out: the parameters are a *source* (image particles ``x = θ`` or a
voxel field seen through the renderer); each step draws cameras (or particle indices), produces
``x: (B, *D)`` differentiably, and takes one Adam step on the objective's surrogate, whose
gradient with respect to ``x`` is the update ``g / B``. Objectives with a critic (VSD, ESD) get
``critic_updates`` denoising steps of the critic on the same detached samples after each source
step (ProlificDreamer's order and 1:1 ratio: the update uses the critic of the samples as they
were drawn), after ``critic_warmup`` steps on the initial samples, so the critic starts as the
fake score of the initial source, not of noise. A critic that is not an ``nn.Module`` is a
function returning the current exact critic (the particles' own mixture), rebuilt every step.
An objective whose ``generator_loss`` takes ``progress`` (HiFA's annealed ``t``) gets
``step / steps``. A ``prior()`` (e.g. the field's weighted total variation) is added to the
source's loss every step and logged as ``prior``.

Shared utilities (``train.common``): the non-finite guard, JSONL logs, atomic checkpoints with
RNG states. The learning rate is a function of the step (no scheduler state), so a resumed run is
bit-for-bit the uninterrupted one. One process: a single object is optimised (no DDP).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import LearningRate, NonNegativeFloat, NonNegativeInt, PositiveInt, Range, Seed
from ..objectives._ingredients import accepts
from .common import (
    AdamBeta,
    JsonlLogger,
    check_finite,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["Batch", "OptimizeLoopConfig", "optimize"]


@dataclass(frozen=True)
class OptimizeLoopConfig:
    """Loop hyper-parameters; method defaults live in the objective and the preset."""

    steps: PositiveInt = 600  # source updates
    batch_size: NonNegativeInt = 4  # cameras (3-D) or particles per step (0: all particles)
    lr: LearningRate = 0.05  # Adam on the source's raw parameters
    lr_decay: bool = False  # linear decay to 0 over ``steps``
    beta1: AdamBeta = 0.9
    beta2: AdamBeta = 0.99  # threestudio's Adam betas for the geometry
    # ProlificDreamer's LoRA lr (threestudio configs/prolificdreamer.yaml: guidance lr 1e-4)
    lr_critic: LearningRate = 1e-4
    critic_updates: NonNegativeInt = 1  # critic steps per source step (ProlificDreamer 1:1)
    critic_warmup: NonNegativeInt = 100  # critic steps on the initial samples before step 0
    grad_clip: NonNegativeFloat = 0.0  # max gradient norm of the source; 0 disables
    # steps between evaluations
    eval_every: Annotated[int, Range(0, note="0: only at the end, by the caller")] = 0
    checkpoint_every: PositiveInt = 200
    log_every: PositiveInt = 25
    seed: Seed = 0


class Batch(NamedTuple):
    """One step's samples: ``x (B, *D)`` differentiable in the source's parameters, the teacher's
    labels ``cond``, the critic's labels ``critic_cond`` (camera bins / None), and keyword
    arguments the objective takes besides (``camera=``, ``noise=``, ``view=``...)."""

    x: Tensor
    cond: Tensor | None
    critic_cond: Tensor | None
    extra: dict[str, Any]


DrawFn = Callable[[torch.Generator], Batch]


def _lr_factor(cfg: OptimizeLoopConfig, step: int) -> float:
    return 1.0 - step / cfg.steps if cfg.lr_decay else 1.0


def _steps_fixed(cfg: OptimizeLoopConfig) -> str:
    """Why ``steps`` may not change on resume ("" when it may)."""
    if not cfg.lr_decay:
        return ""
    return "lr_decay=true: the rate decays to 0 over steps, the steps taken would have used others"


def _step(loss: Tensor, opt: torch.optim.Optimizer, params: list[Tensor], clip: float) -> float:
    """Backward, clip, step; returns the pre-clip gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    opt.step()
    return float(norm)


def _critic_steps(
    objective: Any,
    critic: nn.Module,
    opt: torch.optim.Optimizer,
    batch: Batch,
    n: int,
    rng,
    step: int,
) -> dict[str, float]:
    """``n`` denoising steps of the critic on the batch's detached samples (step -1: warm-up)."""
    x = batch.x.detach()
    logs: dict[str, float] = {}
    for _ in range(n):
        loss = objective.critic_loss(x, batch.critic_cond, critic=critic, rng=rng)
        check_finite(loss.value, step, "critic loss")
        norm = _step(loss.value, opt, list(critic.parameters()), 0.0)
        logs = {"critic_loss": loss.value.item(), "critic_grad_norm": norm}
    return logs


class _State(NamedTuple):
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    rngs: dict[str, torch.Generator]


def _setup(cfg: OptimizeLoopConfig, source: nn.Module, critic: Any) -> _State:
    rng = torch.Generator().manual_seed(cfg.seed + 7919)
    modules: dict[str, nn.Module] = {"source": source}
    optims = {"source": torch.optim.Adam(source.parameters(), cfg.lr, (cfg.beta1, cfg.beta2))}
    if isinstance(critic, nn.Module):
        modules["critic"] = critic
        optims["critic"] = torch.optim.Adam(critic.parameters(), cfg.lr_critic, (0.9, 0.999))
    return _State(modules, optims, {"loop": rng})


def _warm_up(
    cfg: OptimizeLoopConfig, objective: Any, critic: nn.Module, opt, draw: DrawFn, rng
) -> None:
    """Fit the critic to the initial source's samples (fresh draws, no source gradients)."""
    for _ in tqdm(range(cfg.critic_warmup), desc="critic warm-up", leave=False):
        with torch.no_grad():
            batch = draw(rng)
        _critic_steps(objective, critic, opt, batch, 1, rng, -1)


def optimize(
    cfg: OptimizeLoopConfig,
    *,
    source: nn.Module,
    objective: Any,
    teacher: Any,
    draw: DrawFn,
    evaluate: Callable[[nn.Module], dict[str, float]],
    out_dir: Path,
    resume: bool = False,
    critic: nn.Module | Callable[[], Any] | None = None,
    prior: Callable[[], Tensor] | None = None,
) -> dict[str, Any]:
    """Optimise ``source`` with ``objective`` against ``teacher``; returns logs and history.

    ``draw(rng) -> Batch`` produces the step's samples from ``source``; ``evaluate(source)`` runs
    every ``eval_every`` steps. Checkpoints go to ``out_dir/checkpoints``, logs to
    ``out_dir/metrics.jsonl``; ``resume`` continues from the last checkpoint.
    """
    state = _setup(cfg, source, critic)
    rng, opt = state.rngs["loop"], state.optimizers["source"]
    trained_critic = isinstance(critic, nn.Module)
    ckpt_dir, logger = out_dir / "checkpoints", JsonlLogger(out_dir / "metrics.jsonl")
    start, history = 0, []
    found = latest_checkpoint(ckpt_dir) if resume else None
    if found is not None:  # a restored critic is not warmed up again
        restored = load_checkpoint(
            found, **state._asdict(), config=cfg, steps_fixed=_steps_fixed(cfg)
        )
        start, history = restored["step"], restored["extra"].get("history", [])
    elif trained_critic:
        _warm_up(cfg, objective, critic, state.optimizers["critic"], draw, rng)
    if resume:  # no checkpoint: the old log restarts too
        logger.truncate_after(start)
    t0, logs = time.perf_counter(), {}
    annealed = accepts(objective, "progress")  # HiFA's annealed t
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="optimize")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(cfg, step)
        batch = draw(rng)
        current = critic if trained_critic or critic is None else critic()
        if trained_critic:
            critic.requires_grad_(False)
        when = {"progress": step / cfg.steps} if annealed else {}
        loss = objective.generator_loss(
            batch.x, batch.cond, teacher=teacher, critic=current, rng=rng, **batch.extra, **when
        )
        check_finite(loss.value, step, "generator loss")
        value, extra = loss.value, {}
        if prior is not None:
            penalty = prior()
            check_finite(penalty, step, "prior")
            value, extra = value + penalty, {"prior": penalty.item()}
        norm = _step(value, opt, list(source.parameters()), cfg.grad_clip)
        check_finite(torch.tensor(norm), step, "source gradient")  # finite loss, inf gradient
        logs = {"loss": loss.value.item(), "source_grad_norm": norm, **extra, **loss.logs}
        if trained_critic:
            critic.requires_grad_(True)
            opt_c, n_c = state.optimizers["critic"], cfg.critic_updates
            logs |= _critic_steps(objective, critic, opt_c, batch, n_c, rng, step)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            logger.log({"step": done, "wall_s": time.perf_counter() - t0, **logs})
            bar.set_postfix(g=f"{logs.get('grad_norm', norm):.3g}")
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            history.append({"step": done, **evaluate(source)})
            logger.log({"step": done, "eval": True, **history[-1]})
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(
                ckpt_dir, done, **state._asdict(), extra={"history": history}, config=asdict(cfg)
            )
    return {"history": history, "logs": logs, "wall_s": time.perf_counter() - t0}
