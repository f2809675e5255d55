"""Sources: what turns trainable parameters into samples ``x: (B, dim)``, and the critic.

Every source is an ``nn.Module`` whose ``forward`` returns flattened samples (DDP routes only
``forward``); noise comes from a ``torch.Generator`` named ``rng``.
"""

from __future__ import annotations

from .critic import copy_teacher_as_critic, make_critic
from .experts import PhaseExperts, phased_student
from .generators import (
    FewStepGenerator,
    OneStepGenerator,
    TeacherInitGenerator,
    default_student_times,
    draw_latent,
)

__all__ = [
    "FewStepGenerator",
    "OneStepGenerator",
    "PhaseExperts",
    "TeacherInitGenerator",
    "copy_teacher_as_critic",
    "default_student_times",
    "draw_latent",
    "make_critic",
    "phased_student",
]
