"""``scoredistill optimize --dry-run``: the optimised source's, the critic's and the reward
classifier's parameters and memory (``runs.dry_run``), built as the run builds them: no DSM fit of
the critic, no training of the classifier, no optimisation.

The source (``N`` particles or the voxel field) and an MLP critic train (4 fp32 copies); the view
classifier of ``reward.weight > 0`` is frozen once trained (1 copy). The teachers are exact
mixtures and an exact critic (``critic.kind=exact``) is the source's own mixture: no parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .dry_run import network_report

__all__ = ["param_report"]


def _reward_classifier(cfg: Any, testbed: Any) -> nn.Module:
    """The untrained ``ViewClassifier`` that ``_view_classifier`` fits (same input size: one
    ground-truth render)."""
    from ..train.view_classifier import ViewClassifier

    with torch.no_grad():
        image = testbed.gt_field(testbed.cameras(torch.zeros(1, dtype=torch.float64)))[0]
    return ViewClassifier(image.numel(), cfg.reward.bins)


def param_report(cfg: Any, objective: Any) -> dict[str, Any]:
    """``{"params": ..., "weights_and_optimizer_MiB": ...}`` for ``cfg`` (an ``OptimizeConfig``)
    and its ``objective``."""
    from ..sources.particles import Particles
    from . import optimize_build as opt

    testbed = opt.load_testbed(cfg)
    trained: dict[str, nn.Module] = {}
    frozen: dict[str, nn.Module] = {}
    mlp_critic = opt.needs_critic(objective) and cfg.critic.kind == "mlp"
    if cfg.testbed == "views":
        teacher = opt.views_teacher(cfg, testbed)
        trained["source (voxel field)"] = opt.voxel_field(cfg)
        if mlp_critic:
            labels = opt.views_critic_labels(cfg, objective, teacher)
            trained["critic"] = opt.fresh_mlp_critic(cfg, teacher, *labels)
        if cfg.reward.weight > 0:
            frozen["reward classifier (frozen)"] = _reward_classifier(cfg, testbed)
    else:
        n = cfg.source.n_particles
        trained["source (particles)"] = Particles(n, (testbed.dim,), init_std=cfg.source.init_std)
        if mlp_critic:
            camera = opt.accepts(objective, "camera")  # ESD: one label per particle
            trained["critic"] = opt.fresh_mlp_critic(cfg, testbed.teacher, n if camera else 0)
    return network_report(trained, frozen)
