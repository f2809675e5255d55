"""A teacher's pre-flight: one denoiser call before any training (``check_forward``).

diffusers builds some configs it cannot run; the run families, ``optimize``, ``sample`` and
``baseline`` call this when they load a teacher, so such a folder fails in one line (exit 2,
``--dry-run`` too) instead of a traceback at step 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .diffusers import DiffusersTeacher, _fail

__all__ = ["check_forward"]


@torch.no_grad()
def check_forward(teacher: DiffusersTeacher, where: Path | str, cond: Tensor | None = None) -> None:
    """One denoiser call on a single zero sample at mid time, before any training:
    diffusers builds some configs it cannot run (a ``sample_size`` its down- and up-sampling
    does not return to), which would otherwise stop a run at step 1 with a traceback.
    ``TeacherFolderError`` naming ``where``, the input shape and the network's error."""
    p = next(teacher.parameters(), None)
    x = torch.zeros(1, teacher.dim, device=None if p is None else p.device)
    try:
        teacher.denoise(
            x, torch.tensor(0.5, dtype=torch.float64), cond if cond is None else cond.to(x.device)
        )
    except (RuntimeError, ValueError) as err:  # shape errors; diffusers' own config checks
        what = f"the network cannot run on one {tuple(teacher.shape)} input: a config diffusers"
        why = "builds but cannot run, e.g. a sample_size its down/up blocks do not return to"
        raise _fail(where, f"{what} {why}", err) from None
