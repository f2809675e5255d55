"""``--dry-run``'s network report (``distill``, ``distill-consistency``, ``optimize``, ``kd``,
``kd-procedure``, ``distill-system``): the networks' parameter counts and the memory their training holds, from the
networks the run would build (no DSM fit, no training).

Memory is fp32 weights plus what Adam/AdamW keep for a trained network (the gradient and two
moments: 4 copies), 1 copy for a frozen one (an EMA, DisBack's path snapshots); activations are
not included. An exact teacher is a closed-form mixture: it has no parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["count_params", "network_report", "param_report"]

_TRAINED_COPIES = 4  # weights, gradient, Adam's two moments


def count_params(module: nn.Module) -> int:
    """The number of parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def _mib(params: int, copies: int) -> float:
    return round(4 * params * copies / 2**20, 3)


def network_report(
    trained: Mapping[str, nn.Module],
    frozen: Mapping[str, nn.Module | int] | None = None,
    *,
    exact_teacher: bool = True,
) -> dict[str, Any]:
    """``{"params": ..., "weights_and_optimizer_MiB": ...}``: each trained network's parameters
    (4 fp32 copies of those that require grad, 1 of the rest: a frozen trunk) and each frozen
    network or parameter count (1 copy), the exact teacher's 0 first (``exact_teacher=False``: a family
    whose teacher is a network, counted among ``frozen``, leaves that entry out)."""
    frozen = {k: v if isinstance(v, int) else count_params(v) for k, v in (frozen or {}).items()}
    params = {"teacher (exact mixture)": 0} if exact_teacher else {}
    params |= {k: count_params(m) for k, m in trained.items()} | frozen
    mib = {}
    for key, module in trained.items():
        grad = sum(p.numel() for p in module.parameters() if p.requires_grad)
        mib[key] = round(_mib(grad, _TRAINED_COPIES) + _mib(params[key] - grad, 1), 3)
    mib |= {k: _mib(n, 1) for k, n in frozen.items()}
    mib["total"] = round(sum(mib.values()), 3)
    return {"params": params, "weights_and_optimizer_MiB": mib}


def param_report(cfg: Any, objective: Any) -> dict[str, Any]:
    """``{"params": {...}, "weights_and_optimizer_MiB": {...}}`` for ``cfg`` (a ``DistillConfig``)
    and its ``objective``; the student built as the run builds it (fresh, or a copy of the
    critic's architecture per expert, or MSD's smaller students unfitted, for
    ``generator.init=teacher``)."""
    from ..teachers.testbeds import get_testbed
    from .distill_generator import build_teacher_init, make_distill_critic, make_generator

    testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
    torch.manual_seed(cfg.train.seed)
    critic = make_distill_critic(cfg.critic, testbed, bool(getattr(objective, "needs_real", False)))
    if cfg.generator.init == "teacher":
        student = build_teacher_init(
            cfg.generator, cfg.critic, testbed, critic, cfg.train.seed, fit=False
        )
    else:
        student = make_generator(cfg.generator, testbed)
    # the loop keeps the EMA copy even at ema_halflife = 0 (it then copies the student)
    frozen: dict[str, nn.Module | int] = {"student EMA (frozen)": student}
    if cfg.backtrack.nodes:  # DisBack keeps s_0 .. s_N frozen (train.disback)
        frozen["backtrack path (frozen)"] = (cfg.backtrack.nodes + 1) * count_params(critic)
    return network_report({"student": student, "critic": critic}, frozen)
