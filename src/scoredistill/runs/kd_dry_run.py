"""``scoredistill kd --dry-run``: the teacher's, the student's (with the method's training-only
extras: projectors, fusion heads) and the reference student's parameters and memory
(``runs.dry_run``), built as the run builds them; the teacher is built untrained (the run trains
it, or reloads it from its folder or the teacher cache), nothing is trained.

The teacher is frozen while the students train (1 fp32 copy); each student trains (4 copies).
The no-teacher baseline (the plain student network, trained after the student) is not listed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .dry_run import network_report

__all__ = ["param_report"]


def param_report(cfg: Any) -> dict[str, Any]:
    """``{"params": ..., "weights_and_optimizer_MiB": ...}`` for ``cfg`` (a ``KDConfig``)."""
    from ..kd.models import TeacherScores
    from ..kd.tasks import load_task
    from .kd_nets import build_plan, teacher_net

    task = load_task(
        cfg.task, seed=cfg.data_seed, n_labels=cfg.n_labels, label_noise=cfg.label_noise
    )
    teacher = teacher_net(cfg, task)
    if task.relevance_test is not None:  # as ``_teacher`` wraps it (a buffer, no parameters)
        rc = cfg.retrieval
        teacher = TeacherScores(teacher, squash=rc.squash, offset_std=rc.offset_std)
    teacher = teacher.eval()
    trained: dict[str, nn.Module] = {}
    reference = None
    if cfg.reference:
        ref_cfg = dataclasses.replace(cfg, method=cfg.reference, reference="")
        reference = build_plan(ref_cfg, task, teacher).student
    trained[f"student ({cfg.method})"] = build_plan(cfg, task, teacher, reference).student
    if reference is not None:
        trained[f"reference ({cfg.reference})"] = reference
    return network_report(trained, {"teacher (frozen)": teacher}, exact_teacher=False)
