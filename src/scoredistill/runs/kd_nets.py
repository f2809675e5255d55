"""The networks of a ``scoredistill kd`` run, built untrained: the student (``make_net``), the
teacher (``teacher_net``) and the method's plan around the student (``build_plan``). Shared by
the run (``runs.kd``) and its ``--dry-run`` (``runs.kd_dry_run``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..kd.methods import METHODS, Plan
from ..kd.models import MLP, BiEncoder, CrossEncoder, SmallCNN
from ..kd.tasks import Task

__all__ = ["build_plan", "make_net", "teacher_net"]


def make_net(cfg: Any, task: Task, out_dim: int) -> nn.Module:
    """The run's student network, initialised from ``cfg.train.seed`` (same for every arm)."""
    torch.manual_seed(cfg.train.seed)
    if task.relevance_test is not None:
        q = task.query_dim
        rc = cfg.retrieval
        return BiEncoder(q, q, cfg.student_widths, rc.embed_dim, bias=rc.student_bias)
    if cfg.model == "cnn":
        return SmallCNN((1, 8, 8), cfg.student_channels, out_dim)
    return MLP(task.dim, cfg.student_widths, out_dim)


def teacher_net(cfg: Any, task: Task) -> nn.Module:
    """The run's teacher network, untrained, initialised from ``cfg.train.seed + 10_000``."""
    torch.manual_seed(cfg.train.seed + 10_000)
    t = cfg.teacher
    if task.relevance_test is not None:
        return CrossEncoder(task.query_dim, task.query_dim, t.widths)
    if t.kind == "cnn":
        return SmallCNN((1, 8, 8), t.channels, task.num_classes)
    return MLP(task.dim, t.widths, task.num_classes)


def build_plan(
    cfg: Any, task: Task, teacher: nn.Module, reference: nn.Module | None = None
) -> Plan:
    """The method's student, loss and hooks (``METHODS[cfg.method].build``)."""
    nets = lambda k: make_net(cfg, task, k)  # noqa: E731
    return METHODS[cfg.method].build(cfg, task, teacher, nets, reference)
