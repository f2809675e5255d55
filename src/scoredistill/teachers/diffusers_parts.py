"""Component folders of the latent pipelines (``diffusers_latent``, ``diffusers_sd3``,
``diffusers_sdxl``, ``diffusers_flux``): each ``model_index.json`` component checked, then loaded
offline with its weight variant (``diffusers.variant_kwargs``), the network in the asked dtype and
the VAE and text parts in float32. Every problem is a ``TeacherFolderError`` naming the folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .diffusers import (
    TeacherFolderError,
    _diffusers_class,
    _fail,
    _scheduler_class,
    variant_kwargs,
)

__all__ = [
    "check_components",
    "folder_text_encoder",
    "guidance_embedding_problem",
    "load_pipeline_parts",
    "load_text_parts",
]


def _load(where: Path, cls: Any, variant: str = "", **kwargs: Any) -> Any:
    """``cls.from_pretrained(where)`` offline, with the weight variant ``variant_kwargs`` finds
    (``variant``: the one asked, "" none); every failure names the folder."""
    extra = variant_kwargs(where, variant)
    try:
        return cls.from_pretrained(where, local_files_only=True, **extra, **kwargs)
    except Exception as err:
        raise _fail(where, f"cannot load {cls.__name__}", err) from None


def check_components(path: Path, index: dict[str, Any], parts: dict[str, str]) -> None:
    """Every ``parts`` key is ``[library, CLASS]`` in ``model_index.json`` with its folder."""
    for key, library in parts.items():
        entry = index.get(key)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == library):
            want = f"['{library}', CLASS]; a latent teacher needs {', '.join(parts)}"
            raise _fail(path / "model_index.json", f"key {key!r} is {entry!r}; valid: {want}")
        if not (path / key).is_dir():
            raise _fail(path / key, f"no such folder, though model_index.json lists {key!r}")


def load_text_parts(
    path: Path, index: dict[str, Any], keys: Sequence[str], variant: str = ""
) -> dict[str, Any]:
    """The transformers components ``keys`` of a pipeline folder (float32, eval mode; weight
    ``variant`` as ``_load``)."""
    try:
        import transformers
    except ImportError as err:
        what = "text_encoder/tokenizer need the transformers package (pip install transformers)"
        raise _fail(path / "model_index.json", what, err) from None
    text = {}
    for key in keys:
        cls = getattr(transformers, index[key][1], None)
        if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
            raise _fail(
                path / "model_index.json", f"{key}: {index[key][1]!r} is no transformers class"
            )
        text[key] = _load(path / key, cls, variant)
    return text


def load_pipeline_parts(
    path: Path,
    index: dict[str, Any],
    network: str,
    parts: Sequence[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    variant: str = "",
) -> tuple[nn.Module, nn.Module, Any, dict[str, Any]]:
    """``(network, vae, scheduler, text parts)`` of a checked latent pipeline folder: the
    ``network`` component (``unet`` / ``transformer``) in ``dtype``, the VAE and the text parts
    of the family's ``parts`` (its ``text_encoder*`` and ``tokenizer*``) in float32, each with
    the weight ``variant`` ``_load`` picks; every class is resolved before any weights load."""
    text_keys = [k for k in parts if k.startswith(("text", "tok"))]
    sched_cls = _scheduler_class(path / "scheduler" / "scheduler_config.json")
    net_cls = _diffusers_class(path / network, index[network][1], "ModelMixin")
    vae_cls = _diffusers_class(path / "vae", index["vae"][1], "ModelMixin")
    text = load_text_parts(path, index, text_keys, variant)
    net = _load(path / network, net_cls, variant, torch_dtype=dtype).to(device)
    vae = _load(path / "vae", vae_cls, variant, torch_dtype=torch.float32).to(device)
    return net, vae, _load(path / "scheduler", sched_cls), text


def folder_text_encoder(path: Path, build: Callable[[], Any]) -> Any:
    """``build()`` (a family's text encoder), its config mismatches as one ``TeacherFolderError``
    line naming the folder."""
    try:
        return build()
    except (ValueError, AttributeError) as err:
        raise TeacherFolderError(f"{path}: {err}".replace("\n", " ")) from None


def guidance_embedding_problem(ucfg: dict[str, Any]) -> str:
    """Why a UNet with ``time_cond_proj_dim`` (a guidance-embedding UNet, e.g. LCM-distilled)
    cannot be a teacher here ("" if it has none): the SD and SDXL pipelines call it with
    ``timestep_cond`` (an embedding of ``guidance_scale − 1``) and skip CFG, a call this adapter
    does not make."""
    if (dim := ucfg.get("time_cond_proj_dim")) is None:
        return ""
    return (
        f"time_cond_proj_dim={dim}: a guidance-embedding UNet (LCM-distilled), which the pipeline "
        "calls with timestep_cond and without CFG, is not supported yet; valid: null"
    )
