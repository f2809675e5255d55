"""KD methods, one file each: its config section, its plan builder (student, loss, hooked
features) and its post-training metrics together (:mod:`.base` says what a method provides).

``METHODS`` is the plain registry the run looks a method up in by name (``--set method=NAME``);
``SECTIONS`` collects the methods' own config dataclasses by section name, which the run's config
holds (``lelp.subclasses``, ``acam.div_weight``, …). Adding a method: its file here, its line in
``METHODS``, and its preset (``presets/kd.py``).
"""

from __future__ import annotations

from . import (
    acam,
    bdkd,
    ce,
    cprd,
    fitnet,
    jsd,
    kd,
    kdaif,
    lelp,
    margin_mse,
    ofa,
    pld,
    pointwise,
    reverse_kl,
)
from .acam import ACAMConfig
from .base import Method, Plan, RetrievalConfig
from .kdaif import AIFConfig
from .lelp import LELPConfig
from .ofa import OFAConfig

__all__ = [
    "METHODS",
    "SECTIONS",
    "ACAMConfig",
    "AIFConfig",
    "LELPConfig",
    "Method",
    "OFAConfig",
    "Plan",
    "RetrievalConfig",
]

METHODS: dict[str, Method] = {
    "ce": ce.METHOD,  # no teacher: the baseline (on retrieval: in-list ITC)
    "kd": kd.METHOD,  # Hinton et al. 2015 (on retrieval: logit/score KD)
    "reverse_kl": reverse_kl.METHOD,  # mode-seeking KL(p_s || p_t)
    "jsd": jsd.METHOD,  # GKD's JSD(beta), token-free
    "bdkd": bdkd.METHOD,  # BD-KD's student term against a frozen teacher (offline)
    "pld": pld.METHOD,  # Bassam et al. 2025: Plackett-Luce distillation, tau = temperature
    "pointwise": pointwise.METHOD,  # retrieval: MSE on scores
    "margin_mse": margin_mse.METHOD,  # retrieval: Hofstaetter et al. 2020
    "cprd": cprd.METHOD,  # retrieval: ITC + contrastive partial ranking (Chen et al. 2024)
    "lelp": lelp.METHOD,  # Loo et al. 2024: pseudo-subclass targets
    "ofa": ofa.METHOD,  # Hao et al. 2023: projector heads to logit space
    "acam": acam.METHOD,  # Lan & Tian 2025: cross-attention fusion + masks
    "fitnet": fitnet.METHOD,  # Romero et al. 2015: the feature-hint comparison for ACAM
    "kdaif": kdaif.METHOD,  # Wu et al. 2025: influence-weighted KD
}


def _sections() -> dict[str, type]:
    """Section name -> config dataclass, in ``METHODS`` order (methods may share a section)."""
    out: dict[str, type] = {}
    for name, method in METHODS.items():
        if method.section is None:
            continue
        key, cls = method.section
        if out.setdefault(key, cls) is not cls:
            raise TypeError(f"method {name!r} declares section {key!r} as {cls}, not {out[key]}")
    return out


SECTIONS: dict[str, type] = _sections()
