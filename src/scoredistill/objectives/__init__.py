"""Distillation objectives: how the update ``Δ(x)`` on student samples is computed.

Each method is a frozen dataclass of its hyperparameters with
``generator_loss(x, cond, *, teacher, critic, rng) -> Loss`` and
``critic_loss(x, cond, *, critic, rng) -> Loss``; networks come in as arguments.
"""

from __future__ import annotations

from ._ingredients import Loss
from .dmd import DMD
from .fdistill import FDistill
from .sfd import SFD
from .sid import SiD
from .sim import SIM
from .vsd import VSD

__all__ = ["DMD", "OBJECTIVES", "SFD", "SIM", "VSD", "FDistill", "Loss", "SiD"]

OBJECTIVES: dict[str, type] = {
    "dmd": DMD,
    "vsd": VSD,
    "sid": SiD,
    "fdistill": FDistill,
    "sim": SIM,
    "sfd": SFD,
}
