"""``nasa.*`` keys of ``distill-sd``: SNOOPI's NASA-T (``sources.nasa_student``).

- ``nasa.alpha_range: [low, high]`` turns NASA-T on: the student runs NASA in its
  cross-attention with ``negative_prompt``'s embedding and ``alpha ~ U(low, high)`` per call
  (SNOOPI Sec. 6.1: ``U(0, 1)``); the teacher's guidance already takes ``negative_prompt`` as
  its unconditional branch (eq. 5). null: off.
- ``nasa.critic_negative``: false (SNOOPI's choice, Table 5): the critic's null is the empty
  prompt, so only the teacher is steered away from the negative; true: the critic shares the
  teacher's negative null (the paper's ablation row "Teacher + LoRA teacher").
- ``nasa.negatives: FILE`` (one negative prompt per line; "": off): SNOOPI's list of negatives
  (its 10K, Sec. 6.1). Each training call of the student draws one uniformly, with ``alpha``,
  and it is the teacher's guidance null for that step (and the critic's with
  ``critic_negative``); ``negative_prompt`` stays the negative of evaluation and NASA-I.
- ``nasa.eval_alpha``: the NASA-I scale of the run's evaluation draws and ``samples.npz``
  (0: the plain student, the paper's "NASA-T" rows; SNOOPI's SD 1.5 value is 0.1). The export
  is the plain student; NASA-I at inference is ``sources.nasa_attention.enable_nasa``.

Refused, naming the key: a range without a negative prompt, a bad range, a missing or empty
``nasa.negatives`` file (or one beside ``negative_prompt_2``/``_3``, whose per-encoder negatives
a drawn text does not have), and a teacher without cross-attention layers (SD3/Flux joint
attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..config import ConfigError, NonNegativeFloat

__all__ = ["NasaKeys", "check_nasa", "nasa_export_note", "nasa_players", "read_negatives"]


@dataclass(frozen=True)
class NasaKeys:
    alpha_range: tuple[float, ...] | None = None  # [low, high]; SNOOPI: [0, 1]; null: off
    critic_negative: bool = False  # SNOOPI: the LoRA teacher without the negative prompt
    eval_alpha: NonNegativeFloat = 0.0  # NASA-I at evaluation (0: the plain student)
    negatives: str = ""  # a file of negative prompts drawn per training call ("": negative_prompt)


def check_nasa(cfg: Any) -> None:
    """The ``nasa.*`` keys against each other and ``negative_prompt`` (no network loaded)."""
    keys = cfg.nasa
    if keys.alpha_range is None:
        for name in ("critic_negative", "eval_alpha", "negatives"):
            if getattr(keys, name) != getattr(NasaKeys(), name):
                raise ConfigError(f"config key 'nasa.{name}': acts only with nasa.alpha_range set")
        return
    lo_hi = keys.alpha_range
    if (
        len(lo_hi) != 2
        or not all(math.isfinite(a) and a >= 0 for a in lo_hi)
        or lo_hi[0] > lo_hi[1]
    ):
        raise ConfigError(
            f"config key 'nasa.alpha_range': {list(lo_hi)}; valid: [low, high] with 0 <= low <= high "
            "(SNOOPI: [0, 1])"
        )
    if not cfg.negative_prompt:
        raise ConfigError(
            "config key 'negative_prompt': NASA-T (nasa.alpha_range) steers the student away "
            "from a negative prompt; set one (e.g. --set negative_prompt='low quality')"
        )
    if keys.negatives:
        read_negatives(cfg)


def read_negatives(cfg: Any) -> list[str]:
    """``nasa.negatives``' lines, refused beside per-encoder negatives (``ConfigError``)."""
    from .sd_prompts import read_prompts

    texts = read_prompts(cfg.nasa.negatives, key="nasa.negatives")
    per_encoder = [k for k in ("negative_prompt_2", "negative_prompt_3") if getattr(cfg, k, "")]
    if per_encoder:
        raise ConfigError(
            f"config key 'nasa.negatives': a drawn negative has no {per_encoder[0]}; "
            f"unset {per_encoder[0]} (each encoder then reads the drawn text)"
        )
    return texts


def nasa_players(cfg: Any, teacher: Any, gen: Any, critic: Any) -> Any:
    """The student wrapped for NASA-T (``NasaStudent``) and, unless ``critic_negative``, the
    critic given the teacher's prompt rows with the empty prompt's null; ``gen`` unchanged when
    NASA-T is off. The teacher's table holds the negative prompt's null, which is the student's
    negative (its ``null``: ``(1, L, E)``)."""
    keys = cfg.nasa
    if keys.alpha_range is None:
        return gen
    from ..sources.nasa_attention import nasa_layers
    from ..sources.nasa_student import NasaStudent, NegativeDraw

    if not hasattr(teacher.model, "set_attn_processor") or not nasa_layers(teacher.model):
        raise ConfigError(
            f"config key 'nasa.alpha_range': NASA-T needs a UNet with cross-attention; "
            f"{type(teacher.model).__name__} has none (SD3/Flux joint attention is not supported)"
        )
    table = teacher.prompt_table
    if not keys.critic_negative:
        empty = teacher.encode_prompts(list(table.prompts[:1]), "")  # its null: the empty prompt's
        critic.denoiser.prompt_table = replace(
            table, null=empty.null, null_pooled=empty.null_pooled
        )
    draw = None
    if keys.negatives:
        holders = [teacher, critic.denoiser] if keys.critic_negative else [teacher]
        default = (table.null, table.null_pooled)  # negative_prompt's rows, encoded already
        draw = NegativeDraw(
            read_negatives(cfg), cfg.negative_prompt, default, teacher.encode_null, holders
        )
    return NasaStudent(gen, table.null, tuple(keys.alpha_range), draw)


def nasa_export_note(cfg: Any) -> str:
    """The exported README's lines on NASA-I for a NASA-T student ("" when NASA-T is off): the
    export is the plain student; the negative is applied at inference by ``enable_nasa``."""
    if cfg.nasa.alpha_range is None:
        return ""
    lo, hi = cfg.nasa.alpha_range
    return (
        f"Trained with SNOOPI's NASA-T (NASA in the cross-attention, alpha ~ U({lo:g}, {hi:g}), "
        f"negative {cfg.negative_prompt!r}). These weights are the plain student; to steer away "
        "from a negative prompt at inference (NASA-I), after loading: "
        "`from scoredistill.sources.nasa_attention import enable_nasa; "
        "enable_nasa(pipe.unet, alpha, negative=neg)` with `neg` the negative's prompt "
        "embeddings (1, L, E) (SD 1.5: `neg = pipe.encode_prompt([NEGATIVE], pipe.device, 1, "
        "False)[0]`); SNOOPI's SD 1.5 value: alpha = 0.1."
    )
