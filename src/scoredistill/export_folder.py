"""The folder every latent student export writes: ``OUT/lora/`` for a LoRA student (an
``AdapterView`` denoiser), ``OUT/pipeline/`` for a full one, written atomically with a
``README.md``; the family's writers (``export_sd3``, ``export_sdxl``, ``export_flux``) fill it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .io import atomic_folder
from .sources.diffusers import DiffusersGenerator
from .sources.lora import AdapterView

__all__ = ["write_student"]


def write_student(
    generator: DiffusersGenerator,
    out_dir: str | Path,
    *,
    full: Callable[[Path], None],
    lora: Callable[[Path], None],
    readme: Callable[[bool], str],
    note: str = "",
) -> Path:
    """Write ``out_dir/lora/`` (``lora(tmp)``) or ``out_dir/pipeline/`` (``full(tmp)``) with
    ``readme(is_lora)`` and ``note`` as its README, atomically; return the folder."""
    is_lora = isinstance(generator.denoiser, AdapterView)
    final = Path(out_dir) / ("lora" if is_lora else "pipeline")
    with atomic_folder(final) as tmp:
        (lora if is_lora else full)(tmp)
        text = readme(is_lora) + (f"\n{note}\n" if note else "")
        (tmp / "README.md").write_text(text, encoding="utf-8")
    return final
