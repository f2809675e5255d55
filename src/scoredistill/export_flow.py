"""Helpers shared by the flow-matching students (``export_sd3``, ``export_flux``): a starting
index of Stable Diffusion's table as a flow level, the stock ``FlowMatchEulerDiscreteScheduler``
started there, and a plain copy of a full student's network (module docstring of
``export_sd3``: "Starting level").
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .schedules import get_schedule, log_snr

__all__ = [
    "SD_REFERENCE",
    "TOP_ATOL",
    "flow_level",
    "plain_copy",
    "save_transformer_lora",
    "start_scheduler",
]

SD_REFERENCE = "vp-scaled-linear"  # SD 1.x/2.x's table: what SiD-LSG's init_timestep indexes
TOP_ATOL = 1e-5  # a first sigma this close to 1 is the stock grid's top (log-SNR -inf, clamped)


def flow_level(teacher: Any, init_timestep: int) -> float:
    """The native flow level ``s`` of ``teacher`` with the log-SNR of index ``init_timestep``
    of Stable Diffusion's table (``SD_REFERENCE``)."""
    ref = get_schedule(SD_REFERENCE)
    if not 1 <= init_timestep <= ref.n - 1:
        raise ValueError(
            f"init_timestep must lie in [1, {ref.n - 1}] (SD's table), got {init_timestep}"
        )
    lam = log_snr(ref, torch.tensor([init_timestep / (ref.n - 1)], dtype=torch.float64))
    return float(teacher.native_level(lam)[1][0])


def start_scheduler(teacher: Any, top: float) -> Any:
    """The teacher's ``FlowMatchEulerDiscreteScheduler`` config started at flow level ``top``:
    the teacher's own for ``top`` = 1, else exponential sigmas from ``sigma_max = top``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not 0 < top <= 1 + TOP_ATOL:
        raise ValueError(f"a flow student's first level must lie in (0, 1], got {top}")
    if top >= 1 - TOP_ATOL:
        return teacher.scheduler
    cfg = dict(teacher.scheduler.config)
    sched = FlowMatchEulerDiscreteScheduler.from_config(
        cfg, use_exponential_sigmas=True, use_karras_sigmas=False, use_beta_sigmas=False
    )
    sched.register_to_config(sigma_max=float(top))  # read by _convert_to_exponential
    return sched


def plain_copy(model: nn.Module) -> nn.Module:
    """A frozen float32 deep copy of a full student's network; one carrying LoRA layers is
    refused (an adapter added before the copy would be saved into its weights)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError("the full student carries LoRA layers: build it before any adapter")
    return copy.deepcopy(model).float().eval().requires_grad_(False)


def save_transformer_lora(
    pipeline_cls: Any, denoiser: nn.Module, sched: Any, folder: Any, prefix: str = ""
) -> None:
    """``folder/pytorch_lora_weights.safetensors`` of a LoRA student on a flow transformer,
    written by ``pipeline_cls.save_lora_weights`` (diffusers' ``transformer.`` keys, the
    ``LoraConfig`` as metadata), and its stock scheduler in ``folder/scheduler``. ``prefix``: a
    wrapper's module prefix to strip from the adapter's keys (``FluxNetwork``: "transformer.")."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    from .sources.lora import lora_state_dict

    weights, meta = lora_state_dict(denoiser)  # lora.down/up: back to lora_A/B
    weights = convert_unet_state_dict_to_peft(
        {k.removeprefix(prefix): v for k, v in weights.items()}
    )
    pipeline_cls.save_lora_weights(
        folder, transformer_lora_layers=weights, transformer_lora_adapter_metadata=meta,
        safe_serialization=True,
    )  # fmt: skip
    sched.save_pretrained(folder / "scheduler")
