"""Runs: one module per family, registered in one plain dict (see :mod:`.family`).

``FAMILIES`` maps a family name to its :class:`~.family.Family`; ``COMMANDS`` maps a CLI command
to the families it runs (``kd`` runs method presets and procedure presets alike: the preset
decides). The CLI, the bench and ``scoredistill presets`` read only these two dicts.
"""

from __future__ import annotations

from ..config import ConfigError
from . import (
    consistency,
    consistency_unet,
    distill,
    kd,
    kd_procedures,
    optimize,
    optimize_sd,
    sd,
    systems,
    unet,
)
from .family import Family, Resolved

__all__ = ["COMMANDS", "FAMILIES", "Family", "Resolved", "family_of"]

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        distill.FAMILY,
        unet.FAMILY,
        sd.FAMILY,
        consistency.FAMILY,
        consistency_unet.FAMILY,
        systems.FAMILY,
        optimize.FAMILY,
        optimize_sd.FAMILY,
        kd.FAMILY,
        kd_procedures.FAMILY,
    )
}
COMMANDS: dict[str, tuple[str, ...]] = {
    "distill": (
        "distill",
        "distill-unet",
        "distill-sd",
        "distill-consistency",
        "distill-consistency-unet",
        "distill-system",
    ),
    "optimize": ("optimize", "optimize-sd"),
    "kd": ("kd", "kd-procedure"),
}


# the families behind --teacher (the first when no preset is named)
TEACHER_FAMILIES: dict[str, tuple[str, ...]] = {
    "distill": ("distill-unet", "distill-sd", "distill-consistency-unet"),
    "optimize": ("optimize-sd",),
}


def family_of(command: str, preset: str | None, *, teacher: bool = False) -> Family:
    """The family that runs ``preset`` under ``command``; without a preset the command's first
    (``teacher=True``: the first that takes a diffusers folder). An unknown preset goes to the
    first, whose resolver names the valid presets."""
    names = COMMANDS[command]
    if teacher and command not in TEACHER_FAMILIES:
        raise ConfigError(f"--teacher is not a flag of {command!r}")
    found = next((FAMILIES[n] for n in names if preset in FAMILIES[n].presets), None)
    if not teacher:
        return found or FAMILIES[names[0]]
    wanted = [FAMILIES[n] for n in TEACHER_FAMILIES[command]]
    if found is not None and found not in wanted:
        valid = ", ".join(p for f in wanted for p in f.presets)
        raise ConfigError(
            f"--teacher takes a diffusers folder, but preset {preset!r} distils an exact testbed;"
            f" presets for --teacher: {valid}"
        )
    return found or wanted[0]
