"""Benchmarks: one runner (:mod:`.runner`), one ``SUITES`` dict, one table writer per family.

``scoredistill bench --suite NAME`` and the scripts in ``benchmarks/`` call :func:`run_suite`.
Suites: ``onestep`` and ``fdistill`` (distill presets beside the teacher's sampler rows),
``unet`` (students of the bundled diffusers teacher beside its best sampler per NFE), ``sds3d``
and ``particles`` (optimize presets), ``kd`` (KD method and procedure presets with the
reference note's claims and paired verdicts).
"""

from __future__ import annotations

from . import distill, kd, optimize, unet
from .runner import SEEDS, Suite, run_cell, run_suite

__all__ = ["SEEDS", "SUITES", "Suite", "run_cell", "run_suite"]

SUITES: dict[str, Suite] = {
    **{
        name: Suite(presets, lambda _: "distill", distill.table, "distill presets")
        for name, presets in distill.DISTILL_SUITES.items()
    },
    **{
        name: Suite(presets, lambda _: "optimize", optimize.table, "optimize presets")
        for name, presets in optimize.OPTIMIZE_SUITES.items()
    },
    "unet": Suite(
        unet.UNET_PRESETS,
        lambda _: "distill-unet",
        unet.table,
        "diffusers students",
        optional=unet.OPTIONAL_PRESETS,
    ),
    "kd": Suite(
        tuple(kd.suite_presets()),
        kd.family_of,
        kd.table,
        "KD method and procedure presets with the note's claims and paired verdicts",
        cell=kd.cell,
        folder=kd.folder,
        takes_set=False,
    ),
}
