"""Pipeline folders of the latent teachers: where ``model_index.json`` is, which family it names
(``diffusers_latent.load_latent_teacher`` dispatches on it), and the ``StableDiffusionPipeline``
layout's checks (``unet/`` ``UNet2DConditionModel``, ``vae/``, ``text_encoder/`` +
``tokenizer/``, ``scheduler/``) before any weights are read. SD3, SDXL and Flux folders are
checked by ``diffusers_sd3``, ``diffusers_sdxl`` and ``diffusers_flux``. Every problem is a
one-line ``TeacherFolderError`` naming the file and key.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from .diffusers import _diffusers_class, _fail, _read_json
from .diffusers_flux import is_flux_index
from .diffusers_parts import check_components, guidance_embedding_problem
from .diffusers_sdxl import is_sdxl_index

__all__ = ["COMPONENTS", "check_sd_configs", "index_folder"]

COMPONENTS = {  # model_index.json key: the library its class must come from
    "unet": "diffusers",
    "vae": "diffusers",
    "text_encoder": "transformers",
    "tokenizer": "transformers",
    "scheduler": "diffusers",
}


def index_folder(path: Path) -> tuple[Path, dict[str, Any]]:
    """``(pipeline folder, model_index.json)``; every component present (module docstring)."""
    if not path.is_dir():
        raise _fail(path, "no such folder" if not path.exists() else "is a file, not a folder")
    if not (path / "model_index.json").is_file() and (path / "pipeline").is_dir():
        path = path / "pipeline"  # a run folder
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise _fail(index_path, "not found; a StableDiffusionPipeline folder has model_index.json")
    index = _read_json(index_path)
    if is_sdxl_index(index):
        return path, index  # diffusers_sdxl checks its components
    if is_flux_index(index):
        return path, index  # diffusers_flux checks its class and components
    if "unet" not in index and "transformer" in index:
        if index.get("_class_name") == "StableDiffusion3Pipeline" or "text_encoder_3" in index:
            return path, index  # diffusers_sd3 checks its components
        name, valid = index.get("_class_name"), "StableDiffusion3Pipeline, FluxPipeline"
        what = "a transformer pipeline other than SD3/Flux is not supported yet"
        raise _fail(index_path, f"{what} for _class_name {name!r}; valid: {valid}")
    if "unet" in index and "vae" not in index and "text_encoder" not in index:
        if parts := sorted(set(_components(index)) - {"unet", "scheduler"}):  # Kandinsky's movq
            name, valid = index.get("_class_name"), ", ".join(LATENT_PIPELINES)
            what = f"_class_name {name!r} (components unet, scheduler, {', '.join(parts)})"
            raise _fail(index_path, f"{what} is not supported; valid: {valid}")
        what = "is a pixel-space pipeline (a UNet, no VAE or text encoder)"
        raise _fail(index_path, f"{what}; valid here: a text-to-image (latent) pipeline; pixel "
                    "teachers distil with: scoredistill distill --preset dmd2-unet --teacher DIR")  # fmt: skip
    check_components(path, index, COMPONENTS)
    return path, index


LATENT_PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusion3Pipeline",
    "FluxPipeline",
)


def _components(index: dict[str, Any]) -> list[str]:
    """The non-null components a ``model_index.json`` names."""
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]]


def check_sd_configs(path: Path) -> None:
    """The UNet takes text and the VAE's latents, before any weights are read."""
    ucfg_path, vcfg_path = path / "unet" / "config.json", path / "vae" / "config.json"
    for p in (ucfg_path, vcfg_path, path / "scheduler" / "scheduler_config.json"):
        if not p.is_file():
            raise _fail(p, "not found; every component folder holds its config")
    ucfg, vcfg = _read_json(ucfg_path), _read_json(vcfg_path)
    cls = _diffusers_class(ucfg_path, ucfg.get("_class_name"), "ModelMixin")
    if "encoder_hidden_states" not in inspect.signature(cls.forward).parameters:
        what = "takes no encoder_hidden_states; valid: UNet2DConditionModel"
        raise _fail(ucfg_path, f"{cls.__name__} {what}")
    if (extra := ucfg.get("addition_embed_type")) not in (None, "text"):
        what = "needs added_cond_kwargs: valid in a StableDiffusionXLPipeline folder (with"
        valid = "text_encoder_2, tokenizer_2); valid here: null, 'text'"
        raise _fail(ucfg_path, f"addition_embed_type {extra!r} {what} {valid}")
    if why := guidance_embedding_problem(ucfg):
        raise _fail(ucfg_path, why)
    latent, inputs = vcfg.get("latent_channels"), ucfg.get("in_channels")
    if latent != inputs:
        what = f"latent_channels={latent} but unet/config.json has in_channels={inputs}"
        raise _fail(vcfg_path, f"{what}; the VAE's latents must be the UNet's input")
    tcfg_path = path / "text_encoder" / "config.json"
    arch = (
        (_read_json(tcfg_path).get("architectures") or [None])[0] if tcfg_path.is_file() else None
    )
    if arch == "CLIPTextModelWithProjection":  # the stock pipeline fails on it as well
        what = "returns one pooled embedding per prompt; valid: CLIPTextModel (per-token"
        raise _fail(tcfg_path, f"{arch} {what} embeddings, what the UNet cross-attends to)")
