"""DMD v1's regression term in a ``distill`` run (Yin et al. 2023: ``lambda_reg
E ||G(z) - y||^2`` on pairs ``(z, y)`` with ``y`` the teacher's ODE sample from ``z``), and its
extension to every step of a few-step student (``regression_steps="all"``; ours). The objective
supplies ``regression_loss``; this module draws the pairs once and returns the per-step term
that ``train_two_player`` adds to the generator's loss. ``cfg`` is a ``runs.distill.DistillConfig``
(typed ``Any``: this module is imported by that one)."""

from __future__ import annotations

from typing import Any

import torch

from ..config import ConfigError
from ..eval.baseline import draw_labels
from ..samplers import sample
from ..teachers.pf_ode import pf_ode_map

__all__ = ["check_regression", "later_step_pairs", "regression_term"]


def check_regression(cfg: Any, objective: Any) -> None:
    """DMD v1's regression needs a deterministic map ``z -> x`` to regress (``regression_term``);
    every step's regression needs one few-step network."""
    weight = getattr(objective, "regression_weight", 0.0)
    on = weight > 0
    if on and cfg.generator.kind not in ("one_step", "few_step"):
        raise ConfigError(
            "objective.regression_weight > 0 needs generator.kind=one_step or few_step, got "
            f"{cfg.generator.kind}"
        )
    g = cfg.generator
    if cfg.regression_steps == "all" and not (on and g.kind == "few_step" and g.experts == 1):
        raise ConfigError(
            "regression_steps=all regresses each step of one few-step network: it needs "
            "objective.regression_weight > 0, generator.kind=few_step and generator.experts=1 "
            f"(got {weight}, {g.kind}, {g.experts})"
        )


def regression_term(cfg: Any, objective: Any, testbed, gen):
    """DMD v1's regression loss on ``regression_pairs`` (noise, teacher-ODE sample) pairs drawn
    once with DPM-Solver++(2M) at ``regression_nfe``; None when the objective has no such term.

    A few-step student regresses its **first** step's output ``D(sigma_1 z, t_1)`` (the one
    deterministic map from ``z``; later steps re-noise with fresh noise), the role split of
    DP-DMD (Wu et al. 2026, arXiv 2602.03139: a teacher-derived target for the first step, DMD
    for the rest), here with DMD v1's ODE-endpoint target rather than its v-prediction one.
    ``regression_steps="all"`` regresses every step ``k`` on pairs at its own time (our
    extension, ``later_step_pairs``); the term is then the mean over the K steps, each on
    ``batch_size // K`` rows, so its weight and cost per generator step are the first-step form's."""
    if getattr(objective, "regression_weight", 0.0) <= 0:
        return None
    first_step = {"k": 1} if cfg.generator.kind == "few_step" else {}
    rng = torch.Generator().manual_seed(cfg.train.seed + 555)
    n = cfg.regression_pairs
    labels = draw_labels(testbed, n, rng) if testbed.conditional else None
    z = gen.sample_latent(n, rng)
    y, _ = sample(testbed.teacher, "dpmpp-2m", cfg.regression_nfe, n, rng=rng, cond=labels, z=z)
    if cfg.regression_steps == "all":
        return _all_steps_term(
            cfg, objective, (z, y, labels), later_step_pairs(testbed, gen, y, labels, rng)
        )

    def term(generator, step_rng: torch.Generator):
        idx = torch.randint(n, (cfg.train.batch_size,), generator=step_rng)
        c = labels[idx] if labels is not None else None
        return objective.regression_loss(generator(z[idx], c, **first_step), y[idx])

    return term


def later_step_pairs(testbed, gen, y: torch.Tensor, labels, rng: torch.Generator) -> list:
    """``[(x_k, y_k)]`` for steps ``k = 2..K`` of a few-step student: ``x_k = alpha_k y +
    sigma_k eps`` the teacher's own marginal at the student's time ``t_k`` (``y`` its ODE samples,
    fresh ``eps``), ``y_k = Phi(x_k, t_k -> 0)`` the exact PF-ODE map to the schedule's end
    (``teachers.pf_ode``). If step ``k - 1`` samples the teacher's law, step ``k``'s input is
    distributed as ``x_k`` and this target carries it to the teacher's law again: each step is
    fitted on the input it would see at the optimum, not on the student's current one."""
    sched, pairs = testbed.teacher.schedule, []
    for t_k in gen.ts[1:]:
        t = torch.full((len(y),), t_k, dtype=torch.float64)
        alpha, sigma = (v.to(y.dtype)[:, None] for v in sched.alpha_sigma(t))
        x_k = alpha * y + sigma * torch.randn(y.shape, generator=rng, dtype=y.dtype)
        y_k = pf_ode_map(testbed.teacher, x_k, t, torch.zeros_like(t), cond=labels)
        pairs.append((x_k, y_k))
    return pairs


def _all_steps_term(cfg: Any, objective: Any, first: tuple, later: list):
    """The regression of every step of a few-step student (``regression_term``): step 1 on
    ``(z, y)``, step ``k >= 2`` on ``later[k - 2]``; the mean of the K losses."""
    z, y, labels = first
    steps = 1 + len(later)
    rows = max(cfg.train.batch_size // steps, 1)

    def term(generator, step_rng: torch.Generator):
        losses = []
        for k, (x_in, target) in enumerate([(z, y), *later], start=1):
            idx = torch.randint(len(target), (rows,), generator=step_rng)
            c = labels[idx] if labels is not None else None
            given = {"k": 1} if k == 1 else {"k": k, "x_t": x_in[idx]}
            losses.append(objective.regression_loss(generator(z[idx], c, **given), target[idx]))
        logs = {
            f"regression_mse_{k}": loss.logs["regression_mse"] for k, loss in enumerate(losses, 1)
        }
        value = torch.stack([loss.value for loss in losses]).mean()
        return type(losses[0])(value, {"regression_mse": losses[0].logs["regression_mse"], **logs})

    return term
