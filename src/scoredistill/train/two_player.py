"""The two-player loop: a generator and a critic (fake-score denoiser) against a frozen teacher.

One *iteration* is ``critic_updates`` critic steps on fresh generator samples followed by one
generator step (DMD2's ``dfake_gen_update_ratio = 5`` is ``critic_updates = 5``: five fake
updates per generator update; FastGen's ``student_update_freq = 5`` is ``critic_updates = 4``).
``steps`` counts iterations, i.e. generator updates. The loop runs on Hugging Face Accelerate,
so the same code serves one process, ``torchrun`` and ``accelerate launch``; the frozen teacher
is never wrapped. ``parallel="fsdp2"`` shards both players with FSDP2 instead of DDP
(``train.parallel``: why raw ``fully_shard``; checkpoints hold full tensors either way). EMA
(half-life in generator steps), gradient clipping, the non-finite guard, periodic exact
evaluation and atomic checkpoints with RNG states (deterministic resume) are the shared
utilities of ``train.common``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import LearningRate, NonNegativeFloat, PositiveInt, Range, Seed
from . import parallel
from .common import (
    AdamBeta,
    JsonlLogger,
    check_finite,
    cosine_factor,
    ema_decay,
    gather_rng_states,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["TwoPlayerConfig", "make_optimizer", "train_two_player"]


@dataclass(frozen=True)
class TwoPlayerConfig:
    """Loop hyper-parameters; method defaults live in the objective and the preset."""

    steps: PositiveInt = 2000  # generator updates
    batch_size: PositiveInt = 256  # per process
    lr_generator: LearningRate = 1e-4
    lr_critic: LearningRate = 1e-3
    # SiD's Adam (0, 0.999); DMD2's AdamW (0.9, 0.999, weight decay 0.01) is set by its presets
    beta1_generator: AdamBeta = 0.0
    beta1_critic: AdamBeta = 0.0
    beta2: AdamBeta = 0.999  # both players (adam, adamw)
    # adam: torch Adam (weight_decay = L2 penalty); adamw: decoupled decay; sgd: plain SGD
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: NonNegativeFloat = 0.0
    critic_updates: PositiveInt = 5  # critic steps per generator step (DMD2 TTUR 5:1)
    ema_halflife: NonNegativeFloat = 100.0  # in generator steps; 0 disables
    # cosine: both players' rates decay to 0 over `steps` (train.common.cosine_factor)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # few-step students: "random_step" is DMD2's backward simulation (a step k ~ U{1..K}, the
    # gradient through the k-th call only, the critic fits the mixture over steps); "last_step"
    # unrolls all K steps with the gradient through every call and both players see the final
    # sample only (K network calls with gradient per generator update)
    few_step_sample: Literal["random_step", "last_step"] = "random_step"
    grad_clip: NonNegativeFloat = 10.0  # max grad norm per player; 0 disables
    # generator steps between exact evaluations
    eval_every: Annotated[int, Range(0, note="0: only at the end")] = 500
    eval_samples: PositiveInt = 2000
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 25
    seed: Seed = 0
    # ddp: replicas (Accelerate); fsdp2: weights, gradients, moments sharded over the processes
    parallel: Literal["ddp", "fsdp2"] = "ddp"


class _DenoiserCall:
    """Expose a (possibly DDP-wrapped) denoiser module through ``.denoise`` via its forward."""

    def __init__(self, module: nn.Module, schedule: Any, sigma_data: float | None = None) -> None:
        self.module, self.schedule = module, schedule
        if sigma_data is not None:  # the critic's preconditioning (objectives' DSM weighting)
            self.sigma_data = sigma_data

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.module(x_t, t, cond)

    def logit(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The critic's discriminator head (DMD2 + GAN, f-distill)."""
        return self.module(x_t, t, cond, output="logit")


def make_optimizer(cfg: TwoPlayerConfig, module: nn.Module, player: str) -> torch.optim.Optimizer:
    """The optimizer of ``player`` ("generator" or "critic") over ``module``'s parameters.

    Sharded (DTensor) parameters use torch's multi-tensor kernels (``foreach``): the default
    per-tensor loop pays DTensor dispatch on every op (0.35 s against 0.045 s per Adam step of
    the test UNet on 2 CPU ranks, same numbers); checkpoints store the unsharded default."""
    lr = cfg.lr_generator if player == "generator" else cfg.lr_critic
    kw = {
        "weight_decay": cfg.weight_decay,
        "foreach": True if parallel.is_sharded(module) else None,
    }
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(module.parameters(), lr, **kw)
    beta1 = cfg.beta1_generator if player == "generator" else cfg.beta1_critic
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(module.parameters(), lr, betas=(beta1, cfg.beta2), **kw)


def _set_rates(cfg: TwoPlayerConfig, optims: dict[str, torch.optim.Optimizer], step: int) -> float:
    """Set both players' learning rates at generator step ``step`` under ``cfg.lr_schedule``;
    returns the generator's."""
    factor = cosine_factor(step, cfg.steps) if cfg.lr_schedule == "cosine" else 1.0
    for player, opt in optims.items():
        base = cfg.lr_generator if player == "generator" else cfg.lr_critic
        for group in opt.param_groups:
            group["lr"] = base * factor
    return cfg.lr_generator * factor


def _steps_fixed(cfg: TwoPlayerConfig) -> str:
    """Why ``steps`` may not change on resume ("" when it may)."""
    if cfg.lr_schedule == "constant":
        return ""
    return "lr_schedule=cosine decays to 0 over steps: the steps taken would have used other rates"


def _step(
    loss: Tensor, opt: torch.optim.Optimizer, module: nn.Module, clip: float, acc: Accelerator
) -> float:
    """Backward, clip, step; returns the pre-clip gradient norm."""
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    limit = clip if clip > 0 else float("inf")
    if parallel.is_sharded(module):  # DTensor gradients: the full gradient's norm
        norm = parallel.clip_grad_norm(module.parameters(), limit)
    else:
        norm = acc.clip_grad_norm_(module.parameters(), limit)
    opt.step()
    return float(norm)


def _generate(
    gen: nn.Module, z: Tensor, c: Tensor | None, k: int | None, rng: torch.Generator, unroll: bool
) -> Tensor:
    """One-step: ``gen(z, c)``; few-step: DMD2's backward simulation to student step ``k``, or
    (``unroll``) the whole rollout with the gradient through every step."""
    if k is None:
        return gen(z, c)
    return gen(z, c, rng=rng) if unroll else gen(z, c, rng=rng, k=k)


def _draw_step(
    cfg: TwoPlayerConfig, generator: nn.Module, rng: torch.Generator, few_step: bool
) -> int | None:
    """The student step the players see: None (one-step), ``U{1..K}`` or ``K`` (last_step)."""
    if not few_step:
        return None
    return generator.nfe if cfg.few_step_sample == "last_step" else generator.draw_step(rng)


def _student_step(objective: Any, generator: nn.Module, k: int | None) -> dict[str, Any]:
    """What a sampling-step-aware objective (``step_aware``: TDM, Phased DMD) is told about the
    sample it gets: the few-step student's ``step`` k and ``student_times``; others get nothing."""
    if k is None or not getattr(objective, "step_aware", False):
        return {}
    return {"step": k, "student_times": tuple(generator.ts)}


def _target(teacher: Any, step: int) -> Any:
    """The teacher of generator step ``step``: a path (DisBack's ``TeacherPath``) names one per
    step through ``at(step)``; any other teacher is its own target."""
    return teacher.at(step) if hasattr(teacher, "at") else teacher


def _batch(sample_latent, sample_cond, n: int, rng: torch.Generator):
    z = sample_latent(n, rng)
    return z, (sample_cond(n, rng) if sample_cond is not None else None)


def _memory() -> dict[str, float]:
    """The device's peak allocated memory so far (MiB), logged with each step on a GPU."""
    if not torch.cuda.is_available():
        return {}
    return {"cuda_max_mib": torch.cuda.max_memory_allocated() / 2**20}


def train_two_player(
    cfg: TwoPlayerConfig,
    *,
    objective: Any,
    generator: nn.Module,
    critic: nn.Module,
    teacher: Any,
    sample_latent: Callable[[int, torch.Generator], Tensor],
    sample_cond: Callable[[int, torch.Generator], Tensor] | None,
    evaluate: Callable[[nn.Module], dict[str, float]],
    out_dir: Path,
    resume: bool = False,
    sample_real: Callable[[int, torch.Generator], tuple[Tensor, Tensor | None]] | None = None,
    extra_generator_loss: Callable[[nn.Module, torch.Generator], Any] | None = None,
) -> dict[str, Any]:
    """Train ``generator`` with ``objective``; returns the final logs. Writes into ``out_dir``.

    ``sample_real(n, rng) -> (x, labels | None)`` draws teacher samples for objectives with
    ``needs_real`` (a GAN's real class), passed to ``critic_loss`` as ``real=``.
    ``extra_generator_loss(generator, rng) -> Loss`` is added to every generator step (DMD v1's
    regression on teacher noise/sample pairs).
    """
    needs_real = bool(getattr(objective, "needs_real", False))
    if needs_real and sample_real is None:
        raise ValueError(f"{type(objective).__name__} needs real samples: pass sample_real")
    acc = Accelerator(cpu=not torch.cuda.is_available())
    rng = torch.Generator().manual_seed(cfg.seed + 7919 * acc.process_index)
    # the few-step index k must agree across ranks (reference note b20.8): its own shared rng
    step_rng = torch.Generator().manual_seed(cfg.seed + 1)
    few_step = hasattr(generator, "draw_step")
    unroll = few_step and cfg.few_step_sample == "last_step"
    ema = copy.deepcopy(generator).requires_grad_(False)
    gen, crit, opt_g, opt_c = parallel.prepare_players(
        acc, cfg.parallel, generator, critic, lambda m, player: make_optimizer(cfg, m, player)
    )
    critic_call = _DenoiserCall(crit, critic.schedule, getattr(critic, "sigma_data", None))
    ckpt_dir, logger = out_dir / "checkpoints", JsonlLogger(out_dir / "metrics.jsonl")
    state = {"generator": generator, "critic": critic, "ema": ema}
    optims, rngs = {"generator": opt_g, "critic": opt_c}, {"loop": rng, "step": step_rng}
    start, history = 0, []
    found = latest_checkpoint(ckpt_dir) if resume else None
    if found is not None:
        modules, optimizers = parallel.checkpoint_views(state, optims, save=False)
        restored = load_checkpoint(
            found, modules=modules, optimizers=optimizers, rngs=rngs, config=cfg,
            rank=acc.process_index, world_size=acc.num_processes, steps_fixed=_steps_fixed(cfg),
        )  # fmt: skip
        start, history = restored["step"], restored["extra"].get("history", [])
    if resume and acc.is_main_process:  # no checkpoint: the old log restarts too
        logger.truncate_after(start)
    decay, t0 = ema_decay(cfg.ema_halflife), time.perf_counter()
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc="distill",
        disable=not acc.is_main_process,
    )
    logs: dict[str, float] = {}
    for step in bar:
        logs["lr_generator"] = _set_rates(cfg, optims, step)
        for _ in range(cfg.critic_updates):
            # a fresh student step per call (DMD2): the critic models the mixture over steps
            k = _draw_step(cfg, generator, step_rng, few_step)
            z, c = _batch(sample_latent, sample_cond, cfg.batch_size, rng)
            with torch.no_grad():
                x = _generate(gen, z, c, k, rng, unroll)
            kw = {"real": sample_real(cfg.batch_size, rng)} if needs_real else {}
            kw |= _student_step(objective, generator, k)
            loss_c = objective.critic_loss(x, c, critic=critic_call, rng=rng, **kw)
            check_finite(loss_c.value, step, "critic loss")
            logs["critic_grad_norm"] = _step(loss_c.value, opt_c, crit, cfg.grad_clip, acc)
        k = _draw_step(cfg, generator, step_rng, few_step)
        z, c = _batch(sample_latent, sample_cond, cfg.batch_size, rng)
        crit.requires_grad_(False)
        loss_g = objective.generator_loss(
            _generate(gen, z, c, k, rng, unroll),
            c,
            teacher=_target(teacher, step),
            critic=critic_call,
            rng=rng,
            **_student_step(objective, generator, k),
        )
        if extra_generator_loss is not None:
            extra = extra_generator_loss(gen, rng)
            loss_g = type(loss_g)(loss_g.value + extra.value, loss_g.logs | extra.logs)
        check_finite(loss_g.value, step, "generator loss")
        logs["generator_grad_norm"] = _step(loss_g.value, opt_g, gen, cfg.grad_clip, acc)
        crit.requires_grad_(True)
        check_finite(torch.tensor(logs["generator_grad_norm"]), step, "generator gradient")
        parallel.update_ema(ema, generator, decay if step > 0 else 0.0)  # gen's own module
        done = step + 1
        logs.update(
            {
                "critic_loss": loss_c.value.item(),
                "generator_loss": loss_g.value.item(),
                **{f"c/{k}": v for k, v in loss_c.logs.items()},
                **loss_g.logs,
            }
        )
        if acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.steps):
            logger.log({"step": done, "wall_s": time.perf_counter() - t0, **logs, **_memory()})
            bar.set_postfix(g=f"{logs['generator_loss']:.3g}", c=f"{logs['critic_loss']:.3g}")
        if (
            acc.is_main_process
            and cfg.eval_every
            and done % cfg.eval_every == 0
            and done < cfg.steps
        ):
            history.append({"step": done, **evaluate(ema)})
            logger.log({"step": done, "eval": True, **history[-1]})
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            rank_states = gather_rng_states(rngs)  # a collective: every rank keeps its noise
            modules, optimizers = parallel.checkpoint_views(state, optims, save=True)  # too
            if acc.is_main_process:
                save_checkpoint(
                    ckpt_dir,
                    done,
                    modules=modules,
                    optimizers=optimizers,
                    rngs=rngs,
                    extra={"history": history},
                    rank_states=rank_states,
                    config=asdict(cfg),
                )
    acc.wait_for_everyone()
    return {
        "ema": ema,
        "history": history,
        "logs": logs,
        "wall_s": time.perf_counter() - t0,
        "world_size": acc.num_processes,
        "is_main_process": acc.is_main_process,
    }
