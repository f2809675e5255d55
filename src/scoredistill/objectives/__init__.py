"""Distillation objectives: how the update ``Δ(x)`` on student samples is computed.

Each method is a frozen dataclass of its hyperparameters with
``generator_loss(x, cond, *, teacher, critic, rng) -> Loss`` and
``critic_loss(x, cond, *, critic, rng) -> Loss``; networks come in as arguments.
"""

from __future__ import annotations

from ._ingredients import Loss
from .asd import ASD
from .bsd import BSD
from .cds import CDS
from .csd import CSD, CSM
from .dmd import DMD
from .esd import ESD
from .fdistill import FDistill
from .ism import ISM
from .sds import SDS
from .sfd import SFD
from .sid import SiD
from .sim import SIM
from .vsd import VSD

__all__ = [
    "ASD",
    "BSD",
    "CDS",
    "CSD",
    "CSM",
    "DMD",
    "ESD",
    "ISM",
    "OBJECTIVES",
    "SCORE_OBJECTIVES",
    "SDS",
    "SFD",
    "SIM",
    "VSD",
    "FDistill",
    "Loss",
    "SiD",
]

OBJECTIVES: dict[str, type] = {
    "dmd": DMD,
    "vsd": VSD,
    "sid": SiD,
    "fdistill": FDistill,
    "sim": SIM,
    "sfd": SFD,
}

SCORE_OBJECTIVES: dict[str, type] = {
    "sds": SDS,
    "vsd": VSD,
    "esd": ESD,
    "csd": CSD,
    "csm": CSM,
    "cds": CDS,
    "asd": ASD,
    "bsd": BSD,
    "ism": ISM,
}
