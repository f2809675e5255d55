"""The prompt files of the ``distill-sd`` and ``optimize-sd`` families: ``--prompts FILE`` and,
per text encoder, ``prompts_2`` / ``prompts_3`` (diffusers' ``prompt_2`` / ``prompt_3``) with the
negatives ``negative_prompt_2`` / ``negative_prompt_3`` (``teachers.diffusers_prompts``).

``prompts_2=FILE`` holds one prompt per non-blank line, as many as ``--prompts``: line ``i`` is
the ``prompt_2`` of prompt ``i`` (SDXL: ``text_encoder_2``, OpenCLIP-G; SD3: CLIP-G; Flux: T5),
``prompts_3=FILE`` SD3's T5 ``prompt_3``; empty keys are the pipelines' ``None`` (the main
prompt in every encoder). A key the folder's pipeline has no encoder for (``prompts_2`` on an SD
1.x folder, ``prompts_3`` beside SDXL, Flux, or an SD3 folder without T5), a missing or empty
file and a line count other than ``--prompts``'s are one ``ConfigError`` naming the key, read
from ``model_index.json`` before any weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError

__all__ = ["BUNDLED_SD", "prompt_streams", "read_prompts", "sd_paths"]

BUNDLED_SD = Path(__file__).resolve().parents[3] / "assets" / "teachers" / "digits-sd"
STREAM_KEYS = {"prompts_2": "prompt_2", "prompts_3": "prompt_3"}  # config key: diffusers'
NEGATIVE_KEYS = {"negative_prompt_2": "prompt_2", "negative_prompt_3": "prompt_3"}


def sd_paths(cfg: Any) -> tuple[Path, str]:
    """``(teacher folder, prompt file)``: the given ones, else the bundled digits teacher and
    its 30 prompts (``assets/teachers/digits-sd``)."""
    if cfg.teacher:
        if not cfg.prompts:
            raise ConfigError("config key 'prompts': pass --prompts FILE (one prompt per line)")
        return Path(cfg.teacher), cfg.prompts
    if not (BUNDLED_SD / "pipeline").is_dir():
        raise ConfigError(
            f"no bundled text-to-image teacher at {BUNDLED_SD}; pass --teacher DIR --prompts "
            "FILE, or train one: scoredistill train-teacher --arch sd --data digits --out DIR"
        )
    return BUNDLED_SD / "pipeline", cfg.prompts or str(BUNDLED_SD / "prompts.txt")


def read_prompts(path: str, key: str = "prompts") -> list[str]:
    """The non-blank lines of ``path``, stripped; a missing or empty file is a ``ConfigError``
    naming config key ``key``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config key {key!r}: {p} is not a file")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as err:
        raise ConfigError(f"config key {key!r}: {p} is not UTF-8 text ({err})") from None
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise ConfigError(f"config key {key!r}: {p} holds no prompt (one per line)")
    return prompts


def prompt_streams(cfg: Any, folder: Path, prompt_file: str, n_prompts: int) -> dict[str, Any]:
    """``set_prompt_labels``' per-encoder keywords (``prompt_2=[...]``, ``negative_prompt_2=``,
    ...) from ``cfg``'s keys, checked against ``folder``'s ``model_index.json`` and the ``n_prompts``
    lines of ``prompt_file`` before any weights load; {} when none is set."""
    from ..teachers.diffusers_folders import index_folder
    from ..teachers.diffusers_prompts import index_prompt_args, stream_problem

    keys = {**STREAM_KEYS, **NEGATIVE_KEYS}
    given = {key: value for key in keys if (value := getattr(cfg, key, ""))}
    if not given:
        return {}
    _, index = index_folder(folder)
    args, name = index_prompt_args(index), index.get("_class_name")
    for key in given:
        if why := stream_problem(args, keys[key], name):
            raise ConfigError(f"config key {key!r}: {why}; valid: '' (the main prompt)")
    out: dict[str, Any] = {}
    for key, arg in STREAM_KEYS.items():
        if key not in given:
            continue
        lines = read_prompts(given[key], key)
        if len(lines) != n_prompts:
            raise ConfigError(
                f"config key {key!r}: {given[key]} holds {len(lines)} prompts but --prompts "
                f"{prompt_file} holds {n_prompts}; line i is the {arg} of prompt i, so the "
                "counts must be equal"
            )
        out[arg] = lines
    out.update({f"negative_{arg}": given[k] for k, arg in NEGATIVE_KEYS.items() if k in given})
    return out
