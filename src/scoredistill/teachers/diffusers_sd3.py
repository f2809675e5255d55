"""``StableDiffusion3Pipeline`` folders as latent teachers: a flow-matching transformer on VAE
latents (Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image
Synthesis", SD3).

The network is ``DiffusersTeacher``'s flow family (reference note ``diffusers_integration.md``
§1.4): ``x_s = (1 - s) x0 + s eps``, the transformer predicts ``v = eps - x0`` at timestep
``s · 1000``, so ``x0 = x_s - s v``; the scheduler's static ``shift`` is the teacher's schedule
(``ShiftedFlowSchedule``: ``s = k t / (1 + (k - 1) t)``, uniform ``t`` is diffusers' grid).
``diffusers_latent.load_latent_teacher`` builds a ``LatentDiffusersTeacher`` (VAE latents,
``TextCond``, prompt cache, prompt ids) with the transformer as its network and
``SD3TextEncoder`` as its text encoder (composition, no subclass). ``pipeline_times`` gives the
library times of ``FlowMatchEulerDiscreteScheduler.set_timesteps(n)``, so ``samplers.ddim`` on
them is the pipeline's Euler loop (DDIM's step on a flow path is ``x' = (1 - s') D + s' eps``,
diffusers' ``x + (s' - s) v``). Flux's resolution-dependent ``use_dynamic_shifting`` is refused.

The text condition mirrors ``StableDiffusion3Pipeline.encode_prompt`` (diffusers 0.42,
``pipeline_stable_diffusion_3.py``, ``_get_clip_prompt_embeds`` / ``_get_t5_prompt_embeds``):

- CLIP-L and CLIP-G (``CLIPTextModelWithProjection``): ids padded and truncated to the *first*
  tokenizer's ``model_max_length`` (both), the penultimate hidden state ``hidden_states[-2]``
  (``clip_skip=k``: ``[-(k + 2)]``, ``diffusers_clip_skip``), the pooled ``text_embeds``
  (output 0, whatever ``clip_skip``); CLIP-L reads ``prompt``, CLIP-G ``prompt_2``, T5
  ``prompt_3`` (each ``or prompt``; ``diffusers_prompts``);
- T5: ids padded to ``max_sequence_length`` (the pipeline's 256), output 0; without
  ``text_encoder_3`` (``[null, null]`` in ``model_index.json``) zeros ``(256, joint_attention_dim)``;
- ``encoder_hidden_states = cat_L(pad_E(cat_E(clip_l, clip_g), joint_attention_dim), t5)`` and
  ``pooled_projections = cat(pooled_l, pooled_g)``, cached per prompt as a ``TextCond`` with
  ``pooled``; the empty (or negative) prompt is the null row for guidance, as on SD.

Latents: ``z = (E(x) - shift_factor) · scaling_factor`` (the pipeline's l. 1141 inverts it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diffusers import (
    _fail,
    component_config,
)
from .diffusers_parts import check_components, folder_text_encoder, load_pipeline_parts

__all__ = ["SD3TextEncoder", "load_sd3_parts", "pipeline_times", "width_problem"]
PIPELINE_T5_LENGTH = 256  # StableDiffusion3Pipeline.__call__'s max_sequence_length

PARTS = {  # model_index.json key: the library its class must come from
    "transformer": "diffusers",
    "vae": "diffusers",
    "scheduler": "diffusers",
    "text_encoder": "transformers",
    "tokenizer": "transformers",
    "text_encoder_2": "transformers",
    "tokenizer_2": "transformers",
}
T5_PARTS = {"text_encoder_3": "transformers", "tokenizer_3": "transformers"}  # or both null
SCHEDULER, TRANSFORMER = "FlowMatchEulerDiscreteScheduler", "SD3Transformer2DModel"
GRID_KEYS = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def _static_shift(cfg: dict[str, Any]) -> str | None:
    """Why a FlowMatch scheduler config has no static shift (None when it has)."""
    if cfg.get("use_dynamic_shifting"):
        return (
            "use_dynamic_shifting (Flux's resolution-dependent shift mu) is not supported yet; "
            "valid: false (a static shift)"
        )
    return None


def pipeline_times(scheduler: Any, steps: int) -> Tensor:
    """``(steps,)`` float64 library times of ``scheduler.set_timesteps(steps).sigmas[:-1]``.

    diffusers spaces ``u`` uniformly from its table's ends ``sigma_max = 1`` to ``sigma_min``
    (the table is shifted already: ``sigma_min = shift(1/N)``) and shifts ``u`` again
    (``scheduling_flow_match_euler_discrete.py``, ``set_timesteps``); ``ShiftedFlowSchedule``
    maps ``t = u`` to the same ``s``."""
    cfg = dict(scheduler.config)
    if type(scheduler).__name__ != SCHEDULER or (why := _static_shift(cfg)):
        raise ValueError(why or f"{type(scheduler).__name__} is no {SCHEDULER}")
    if bad := [k for k in GRID_KEYS if cfg.get(k)]:
        raise ValueError(f"scheduler {bad[0]}={cfg[bad[0]]!r}: grid not reproduced; valid: off")
    n, k = int(cfg["num_train_timesteps"]), float(cfg["shift"])
    sigma_min = k / n / (1 + (k - 1) / n)
    return torch.linspace(1.0, sigma_min, steps, dtype=torch.float64)


def width_problem(clip: Sequence[tuple[int, int]], t5: int | None, tcfg: dict[str, Any]) -> str:
    """Why the text encoders' widths do not fit the transformer ("" when they do): ``clip``
    ``(hidden_size, projection_dim)`` of CLIP-L and CLIP-G, ``t5`` T5's ``d_model`` or None."""
    joint, pooled = tcfg.get("joint_attention_dim"), tcfg.get("pooled_projection_dim")
    hidden, proj = sum(h for h, _ in clip), sum(p for _, p in clip)
    if t5 is not None and t5 != joint:
        return f"joint_attention_dim={joint} but text_encoder_3 has d_model={t5}; must be equal"
    if not isinstance(joint, int) or hidden > joint:
        return f"joint_attention_dim={joint} is below the CLIP widths' sum {hidden}"
    if proj != pooled:
        return f"pooled_projection_dim={pooled} but the CLIP projection_dims sum to {proj}"
    return ""


class SD3TextEncoder(nn.Module):
    """The text encoder of an SD3 ``LatentDiffusersTeacher``: CLIP-L, CLIP-G and T5 (the T5 pair
    may be None) with their tokenizers; ``encode_texts`` gives the pipeline's embeddings."""

    def __init__(
        self,
        text_encoders: Sequence[nn.Module | None],
        tokenizers: Sequence[Any],
        transformer_config: Any,
        max_sequence_length: int = PIPELINE_T5_LENGTH,
    ) -> None:
        super().__init__()
        if len(text_encoders) != 3 or len(tokenizers) != 3:
            raise ValueError("SD3 needs three text encoders and tokenizers (CLIP-L, CLIP-G, T5)")
        if (text_encoders[2] is None) != (tokenizers[2] is None):
            raise ValueError("text_encoder_3 and tokenizer_3 must both be given or both None")
        cfgs = [getattr(e, "config", None) for e in text_encoders]
        clip = [(getattr(c, "hidden_size", 0), getattr(c, "projection_dim", 0)) for c in cfgs[:2]]
        if why := width_problem(clip, getattr(cfgs[2], "d_model", None), transformer_config):
            raise ValueError(why)
        self.encoders = nn.ModuleList([e for e in text_encoders if e is not None])
        self.tokenizers, self.has_t5 = tuple(tokenizers), text_encoders[2] is not None
        # without T5 its rows are zeros whatever prompt_3: refused (diffusers_prompts)
        self.prompt_args = ("prompt", "prompt_2", "prompt_3")[: 3 if self.has_t5 else 2]
        self.max_sequence_length = max_sequence_length
        self.joint_attention_dim = int(transformer_config["joint_attention_dim"])

    @property
    def max_clip_skip(self) -> int:
        """The largest ``clip_skip`` ``hidden_states[-(k + 2)]`` can index in both CLIPs."""
        return min(int(e.config.num_hidden_layers) for e in self.encoders[:2]) - 1

    def encode_texts(
        self,
        texts: Sequence[str],
        clip_skip: int = 0,
        texts_2: Sequence[str] | None = None,
        texts_3: Sequence[str] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(encoder_hidden_states (N, L_clip + L_t5, joint), pooled_projections (N, P))`` at
        ``clip_skip`` (0: None; ``_get_clip_prompt_embeds``; T5 unaffected); CLIP-G reads
        ``texts_2``, T5 ``texts_3`` (``prompt_2``, ``prompt_3``; None: ``texts``)."""
        streams = (texts, texts if texts_2 is None else texts_2)
        (emb_l, pool_l), (emb_g, pool_g) = (self._clip(i, streams[i], clip_skip) for i in (0, 1))
        t5 = self._t5(texts if texts_3 is None else texts_3)
        clip = torch.cat([emb_l, emb_g], dim=-1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat([pool_l, pool_g], dim=-1)

    def _clip(self, i: int, texts: Sequence[str], clip_skip: int) -> tuple[Tensor, Tensor]:
        encoder = self.encoders[i]
        ids = self.tokenizers[i](
            list(texts),
            padding="max_length",
            max_length=self.tokenizers[0].model_max_length,  # the pipeline's tokenizer_max_length
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
        return out.hidden_states[-(clip_skip + 2)], out[0]  # [-2]: clip_skip None; text_embeds

    def _t5(self, texts: Sequence[str]) -> Tensor:
        device = next(self.encoders.parameters()).device
        if not self.has_t5:  # the pipeline's zeros when text_encoder_3 is None
            shape = (len(texts), self.max_sequence_length, self.joint_attention_dim)
            return torch.zeros(shape, device=device)
        ids = self.tokenizers[2](
            list(texts),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        return self.encoders[2](ids.to(device))[0]


def _t5_present(path: Path, index: dict[str, Any]) -> bool:
    """Whether ``model_index.json`` lists T5 (``[null, null]`` for both keys: no T5)."""
    entries = [index.get(k) for k in T5_PARTS]
    if all(e == [None, None] for e in entries):
        return False
    if any(e == [None, None] for e in entries):
        what = "text_encoder_3 and tokenizer_3 must both be [null, null] or both be classes"
        raise _fail(path / "model_index.json", f"{what}; got {entries}")
    check_components(path, index, T5_PARTS)
    return True


def _check_configs(path: Path, t5: bool) -> None:
    """The transformer, scheduler, VAE and text widths fit, before any weights are read."""
    tcfg, scfg = (
        component_config(path, "transformer"),
        component_config(path, "scheduler", "scheduler_config.json"),
    )
    if (name := tcfg.get("_class_name")) != TRANSFORMER:
        raise _fail(path / "transformer" / "config.json",
                    f"_class_name {name!r} is not supported yet; valid: {TRANSFORMER}")  # fmt: skip
    sched_path = path / "scheduler" / "scheduler_config.json"
    if (name := scfg.get("_class_name")) != SCHEDULER or _static_shift(scfg):
        raise _fail(sched_path, _static_shift(scfg) or f"_class_name {name!r}; valid: {SCHEDULER}")
    latent, inputs = component_config(path, "vae").get("latent_channels"), tcfg.get("in_channels")
    if latent != inputs:
        what = f"latent_channels={latent} but transformer/config.json has in_channels={inputs}"
        raise _fail(path / "vae" / "config.json", f"{what}; must be equal")
    clips = [component_config(path, k) for k in ("text_encoder", "text_encoder_2")]
    clip = [(c.get("hidden_size", 0), c.get("projection_dim", 0)) for c in clips]
    width = component_config(path, "text_encoder_3").get("d_model") if t5 else None
    if why := width_problem(clip, width, tcfg):
        raise _fail(path / "transformer" / "config.json", why)


def load_sd3_parts(
    path: Path,
    index: dict[str, Any],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    variant: str = "",
) -> tuple[nn.Module, nn.Module, Any, SD3TextEncoder]:
    """``(transformer, vae, scheduler, SD3TextEncoder)`` of a ``StableDiffusion3Pipeline`` folder
    whose ``model_index.json`` is ``index``, for ``diffusers_latent.load_latent_teacher``: every
    config checked before weights load; the transformer in ``dtype``, the rest float32."""
    check_components(path, index, PARTS)
    t5 = _t5_present(path, index)
    _check_configs(path, t5)
    transformer, vae, sched, text = load_pipeline_parts(
        path,
        index,
        "transformer",
        [*PARTS, *(T5_PARTS if t5 else ())],
        device=device,
        dtype=dtype,
        variant=variant,
    )
    encoders = [text.get(k) for k in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    encoder = folder_text_encoder(
        path,
        lambda: SD3TextEncoder(
            [None if e is None else e.to(device) for e in encoders],
            [text.get(k) for k in ("tokenizer", "tokenizer_2", "tokenizer_3")],
            transformer.config,
        ),
    )
    return transformer, vae, sched, encoder
