"""``scoredistill distill --dry-run`` on an exact testbed: the student's and the critic's parameter
counts and the memory their training holds, from the networks the run would build (no DSM fit,
no training).

Memory is fp32 weights plus what Adam/AdamW keep for a trained network (the gradient and two
moments: 4 copies), 1 copy for each frozen DisBack path snapshot; activations are not included.
The exact teacher is a closed-form mixture: it has no parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["param_report"]

_TRAINED_COPIES = 4  # weights, gradient, Adam's two moments


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _mib(params: int, copies: int) -> float:
    return round(4 * params * copies / 2**20, 3)


def param_report(cfg: Any, objective: Any) -> dict[str, Any]:
    """``{"params": {...}, "weights_and_optimizer_MiB": {...}}`` for ``cfg`` (a ``DistillConfig``)
    and its ``objective``; the student built as the run builds it (fresh, or a copy of the
    critic's architecture per expert for ``generator.init=teacher``)."""
    from ..teachers.testbeds import get_testbed
    from .distill_generator import make_distill_critic, make_generator, teacher_init_generator

    testbed = get_testbed(cfg.testbed, schedule=cfg.schedule)
    torch.manual_seed(cfg.train.seed)
    critic = make_distill_critic(cfg.critic, testbed, bool(getattr(objective, "needs_real", False)))
    if cfg.generator.init == "teacher":
        student = teacher_init_generator(cfg.generator, critic)
    else:
        student = make_generator(cfg.generator, testbed)
    params = {"teacher (exact mixture)": 0, "student": _count(student), "critic": _count(critic)}
    mib = {
        "student": _mib(params["student"], _TRAINED_COPIES),
        "critic": _mib(params["critic"], _TRAINED_COPIES),
    }
    if cfg.backtrack.nodes:  # DisBack keeps s_0 .. s_N frozen (train.disback)
        params["backtrack path (frozen)"] = (cfg.backtrack.nodes + 1) * params["critic"]
        mib["backtrack path (frozen)"] = _mib(params["backtrack path (frozen)"], 1)
    mib["total"] = round(sum(mib.values()), 3)
    return {"params": params, "weights_and_optimizer_MiB": mib}
