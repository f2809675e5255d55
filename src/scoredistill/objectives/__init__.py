"""Distillation objectives: how the update ``Δ(x)`` on student samples is computed.

Each method is a frozen dataclass of its hyperparameters with
``generator_loss(x, cond, *, teacher, critic, rng) -> Loss`` and
``critic_loss(x, cond, *, critic, rng) -> Loss``; networks come in as arguments. The consistency
methods (``CONSISTENCY_OBJECTIVES``, the loop ``train.consistency``) instead take data ``x0`` and
the student: ``loss(x0, cond, *, student, target, teacher, rng, step) -> Loss``; rCM adds a
critic (``critic=``, ``critic_loss``), SANA-Sprint a discriminator (a head on a frozen trunk).
Sampling-step-aware objectives (``step_aware``: TDM, Phased DMD) also get the few-step student's
``step`` and ``student_times`` from the two-player loop.
"""

from __future__ import annotations

from ._ingredients import Loss
from .asd import ASD
from .bsd import BSD
from .cd import CD
from .cds import CDS
from .csd import CSD, CSM
from .dmd import DMD
from .esd import ESD
from .fdistill import FDistill
from .hifa import HiFA
from .hypersd import HyperSD
from .ism import ISM
from .phased_dmd import PhasedDMD
from .rcm import RCM
from .sana_sprint import SanaSprint
from .scm import SCM
from .sds import SDS
from .sfd import SFD
from .sid import SiD
from .sim import SIM
from .tdm import TDM
from .vsd import VSD

__all__ = [
    "ASD",
    "BSD",
    "CD",
    "CDS",
    "CONSISTENCY_OBJECTIVES",
    "CSD",
    "CSM",
    "DMD",
    "ESD",
    "ISM",
    "OBJECTIVES",
    "RCM",
    "SCM",
    "SCORE_OBJECTIVES",
    "SDS",
    "SFD",
    "SIM",
    "TDM",
    "VSD",
    "FDistill",
    "HiFA",
    "HyperSD",
    "Loss",
    "PhasedDMD",
    "SanaSprint",
    "SiD",
]

OBJECTIVES: dict[str, type] = {
    "dmd": DMD,
    "vsd": VSD,
    "sid": SiD,
    "fdistill": FDistill,
    "sim": SIM,
    "sfd": SFD,
    "tdm": TDM,
    "phased_dmd": PhasedDMD,
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
    "hifa": HiFA,
}

CONSISTENCY_OBJECTIVES: dict[str, type] = {
    "cd": CD,
    "scm": SCM,
    "rcm": RCM,
    "hypersd": HyperSD,
    "sana_sprint": SanaSprint,
}
