"""Weight variants of a component folder (``diffusion_pytorch_model.fp16.safetensors``).

``save_pretrained(..., variant="fp16")`` (diffusers and transformers alike) writes
``<stem>.<variant>.safetensors`` (sharded: ``<stem>.<variant>-00001-of-0000N.safetensors`` with
``<stem>.safetensors.index.<variant>.json``), and ``from_pretrained`` finds those files **only**
when given ``variant=``: a folder downloaded with ``--include "*fp16*"`` holds no standard
weights, and a plain ``from_pretrained`` fails on it ("no file named
diffusion_pytorch_model.bin"). ``pick_variant`` decides, per component folder, what to pass:

- the asked variant where the folder has its files (a component without them, e.g. a VAE kept
  in fp32, loads its standard weights, as ``DiffusionPipeline.from_pretrained(variant=)`` does);
- nothing where the folder has standard weights;
- the one variant present where there are no standard weights (the fp16-only download);
- an error naming the variants where there are several and none was asked.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["folder_variants", "has_standard_weights", "pick_variant"]

_STEMS = r"(?:diffusion_pytorch_model|model|pytorch_model)"
_SHARD = r"(?:-\d{5}-of-\d{5})?"
_STANDARD = re.compile(
    rf"^{_STEMS}{_SHARD}\.(?:safetensors|bin)$|^{_STEMS}\.(?:safetensors|bin)\.index\.json$"
)
_VARIANT = re.compile(
    rf"^{_STEMS}\.(?P<v>[A-Za-z0-9_]+){_SHARD}\.(?:safetensors|bin)$"
    rf"|^{_STEMS}\.(?:safetensors|bin)\.index\.(?P<w>[A-Za-z0-9_]+)\.json$"
)


def _names(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def has_standard_weights(folder: Path) -> bool:
    """Whether ``folder`` holds weights ``from_pretrained`` finds without ``variant``."""
    return any(_STANDARD.match(name) for name in _names(folder))


def folder_variants(folder: Path) -> list[str]:
    """The weight variants in ``folder`` (``["fp16"]``), sorted."""
    found = {m.group("v") or m.group("w") for name in _names(folder) if (m := _VARIANT.match(name))}
    return sorted(found)


def pick_variant(folder: Path, wanted: str = "") -> str | None:
    """The ``variant=`` to load ``folder`` with (None: the standard weights; module docstring).
    ``ValueError`` when the folder holds only several variants and ``wanted`` names none."""
    variants = folder_variants(folder)
    if wanted and wanted in variants:
        return wanted
    if has_standard_weights(folder) or not variants:
        return None  # no weights at all: from_pretrained's own error names what is missing
    if len(variants) == 1 and not wanted:
        return variants[0]
    asked = f"variant {wanted!r} is not among them" if wanted else "none was asked"
    raise ValueError(
        f"holds only variant weights {variants} and {asked}; set the config key 'variant' to one"
    )
