"""How ``scoredistill optimize`` builds its parts before any work: the testbed, the optimised
voxel field, the views teacher, the MLP critic (before its DSM fit) and what the objective asks
for (a critic, a ``camera=`` argument). Shared by the run (``runs.optimize``) and its
``--dry-run`` (``runs.optimize_dry_run``)."""

from __future__ import annotations

from typing import Any

import torch

from ..objectives._ingredients import accepts

__all__ = [
    "accepts",
    "fresh_mlp_critic",
    "load_testbed",
    "needs_critic",
    "views_critic_labels",
    "views_teacher",
    "voxel_field",
]


def needs_critic(objective: Any) -> bool:
    """Whether the objective trains a critic (VSD, ESD, ...)."""
    return bool(getattr(objective, "needs_critic", hasattr(objective, "critic_loss")))


def fresh_mlp_critic(
    cfg: Any, teacher: Any, num_classes: int, azimuth: bool = False
) -> torch.nn.Module:
    """The MLP critic before any fit (``--dry-run`` counts it), seeded by ``train.seed``."""
    from ..sources.critic import make_critic

    torch.manual_seed(cfg.train.seed)  # the critic's initial weights
    c = cfg.critic
    return make_critic(
        teacher.dim, schedule=teacher.schedule, num_classes=num_classes, hidden=c.hidden,
        depth=c.depth, azimuth_cond=azimuth,
    )  # fmt: skip


def voxel_field(cfg: Any) -> torch.nn.Module:
    """The optimised source on ``views``: a fresh ``VoxelField`` seeded by ``train.seed``."""
    from ..scene.field3d import VoxelField

    s = cfg.source
    return VoxelField(
        s.resolution, image_size=cfg.image_size, n_samples=s.n_samples,
        init_density=s.init_density, init_noise=s.init_noise,
        rng=torch.Generator().manual_seed(cfg.train.seed),
    )  # fmt: skip


def views_teacher(cfg: Any, testbed: Any) -> Any:
    """The ``teacher`` the config names on the views testbed (an exact mixture)."""
    return {"biased": testbed.teacher, "prompted": testbed.prompted}.get(
        cfg.teacher, testbed.camera_teacher
    )


def views_critic_labels(cfg: Any, objective: Any, teacher: Any) -> tuple[int, bool]:
    """The 3-D MLP critic's ``(num_classes, azimuth)``: camera bins, the teacher's labels, or a
    continuous azimuth (0 classes)."""
    camera_critic = accepts(objective, "camera")
    continuous = camera_critic and cfg.critic.camera == "azimuth"
    k = cfg.critic.camera_bins if camera_critic and not continuous else teacher.num_classes
    return (0 if continuous else k), continuous


def load_testbed(cfg: Any) -> Any:
    """``views`` (the 3-D testbed at ``image_size`` and ``kappa``) or a mixture testbed."""
    if cfg.testbed == "views":
        from ..teachers.views import build_views

        return build_views(0, cfg.schedule, image_size=cfg.image_size, kappa=cfg.kappa)
    from ..teachers.testbeds import get_testbed

    return get_testbed(cfg.testbed, schedule=cfg.schedule)
