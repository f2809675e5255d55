"""LoRA students and critics on the teacher's own network, through PEFT (one base in memory).

ProlificDreamer and SwiftBrush keep a single pretrained UNet: the frozen base is the teacher,
the same base with a LoRA adapter is the fake score (critic), and — here — a second adapter can
be the student. ``add_lora`` injects a named adapter with ``peft.inject_adapter_in_model`` (any
``nn.Module``: ``UNet2DModel``, ``UNet2DConditionModel``, a DiT), ``AdapterView`` is the denoiser
that runs the teacher with one adapter switched on, and the base's resting state has every
adapter **off**, so ``teacher.denoise`` is the teacher.

PEFT's switches (``BaseTunerLayer.set_adapter`` / ``enable_adapters``, peft 0.21
``tuners/tuners_utils.py``) also set ``requires_grad`` on adapter weights; the training loop
freezes and unfreezes players itself (``train.two_player``), so ``adapter_on`` restores every
flag before it returns. Autograd's ``AccumulateGrad`` does not write to a leaf whose
``requires_grad`` is False at backward time, so a frozen critic stays frozen although PEFT
switched it on for its forward.

Limits, each refused with a clear error where it would go wrong: gradient checkpointing (a
recomputation in backward would run whichever adapter is on by then) and FSDP2 (the players'
parameters live inside the shared base, which is not theirs to shard).

``deepcopy`` of a view (the loop's EMA copy) adds an adapter ``<name>_copyN`` holding a copy
of the weights on the same base: an EMA of a LoRA student costs LoRA weights, not a UNet.

Targets (``default_targets``) are those of diffusers' own LoRA scripts for the network:
the attention projections on a UNet (``train_text_to_image_lora.py``), both streams of the joint
attention on SD3 (``train_dreambooth_lora_sd3.py``), attention and feed-forward of both streams
on Flux (``train_dreambooth_lora_flux.py``, extended to the single blocks' MLP and output).

Export: ``lora_state_dict`` gives diffusers' key layout (``convert_state_dict_to_diffusers``
of ``get_peft_model_state_dict``, as diffusers' ``train_text_to_image_lora.py`` saves it; no
PEFT ``base_model.model.`` prefix), which ``pipe.load_lora_weights(dir)`` loads.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FLUX_LORA_TARGETS",
    "LORA_TARGETS",
    "SD3_LORA_TARGETS",
    "AdapterView",
    "adapter_on",
    "add_lora",
    "default_targets",
    "lora_config",
    "lora_parameters",
    "lora_state_dict",
]

# PEFT matches each target as a module-name suffix. UNets: the attention projections
# diffusers' examples/text_to_image/train_text_to_image_lora.py (and _sdxl) adapt
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# SD3: examples/dreambooth/train_dreambooth_lora_sd3.py, the --lora_layers default: the image
# stream's (to_*) and the text stream's (add_*_proj, to_add_out) joint-attention projections
SD3_LORA_TARGETS = (
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
)  # fmt: skip
# Flux: examples/dreambooth/train_dreambooth_lora_flux.py, the target_modules it uses when
# --lora_layers is not given (both streams' attention and feed-forward in the joint blocks;
# attn.to_q/k/v also hit the single blocks' attention; the single blocks' proj_mlp / proj_out
# are not in that list)
FLUX_LORA_TARGETS = (
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)  # fmt: skip
_copies = itertools.count(1)


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def lora_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The weights of adapter ``name`` in ``model`` (``lora_A``/``lora_B`` …), in module order."""
    key = f".{name}."
    return [p for n, p in model.named_parameters() if "lora_" in n and key in f".{n}."]


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The targets of diffusers' LoRA script for ``model``'s family (the constants above):
    ``SD3_LORA_TARGETS`` on an ``SD3Transformer2DModel``, ``FLUX_LORA_TARGETS`` on a
    ``FluxTransformer2DModel`` (also inside a wrapper such as ``FluxNetwork``), ``LORA_TARGETS``
    otherwise (UNets)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    for m in model.modules():
        if isinstance(m, SD3Transformer2DModel):
            return SD3_LORA_TARGETS
        if isinstance(m, FluxTransformer2DModel):
            return FLUX_LORA_TARGETS
    return LORA_TARGETS


def lora_config(rank: int, alpha: float | None = None, targets: Sequence[str] = LORA_TARGETS):
    """``peft.LoraConfig``: rank ``r``, ``lora_alpha`` (default ``r``: scale 1), the target
    projections; ``B = 0`` at init (PEFT's default), so a new adapter leaves the network as it
    was: the critic starts as the teacher, the student as the teacher at its time."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets))


def add_lora(
    model: nn.Module,
    name: str,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] | None = None,
) -> list[nn.Parameter]:
    """Inject adapter ``name`` into ``model`` (in place) and return its trainable weights; every
    adapter of ``model`` is left off (the base answers as before). ``targets``: module-name
    suffixes (PEFT's ``target_modules``); None: ``default_targets(model)``."""
    from peft import inject_adapter_in_model

    targets = default_targets(model) if targets is None else tuple(targets)

    if any(name in getattr(m, "lora_A", {}) for m in _tuner_layers(model)):
        raise ValueError(f"the model already has an adapter named {name!r}")
    flags = {id(p): p.requires_grad for p in model.parameters()}
    try:
        with warnings.catch_warnings():  # a second adapter on one base is the design here
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(lora_config(rank, alpha, targets), model, adapter_name=name)
    except ValueError as err:  # no target module matched
        what = f"cannot add a LoRA adapter to {type(model).__name__}: {err}"
        raise ValueError(what.replace("\n", " ")) from None
    _rest(model, flags)
    return lora_parameters(model, name)


def _rest(model: nn.Module, flags: dict[int, bool]) -> None:
    """Every adapter off; each parameter's ``requires_grad`` as in ``flags`` (new ones: True)."""
    for layer in _tuner_layers(model):
        layer.enable_adapters(False)
    for p in model.parameters():
        p.requires_grad_(flags.get(id(p), True))


@contextmanager
def adapter_on(model: nn.Module, name: str) -> Iterator[None]:
    """Run ``model`` with adapter ``name`` on (the others off); restores the resting state
    (all off) and every ``requires_grad`` flag on exit (module docstring)."""
    layers = _tuner_layers(model)
    flags = [(p, p.requires_grad) for n, p in model.named_parameters() if "lora_" in n]
    try:
        for layer in layers:
            layer.set_adapter(name)
            layer.enable_adapters(True)
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(False)
        for p, flag in flags:
            p.requires_grad_(flag)


class AdapterView(nn.Module):
    """``denoise(x_t, t, c)`` of ``teacher`` with adapter ``name`` on. Its parameters are the
    adapter's weights only (optimizers, clipping, checkpoints and the EMA see nothing else);
    the teacher is held outside the module tree, and other attributes (``schedule``, ``model``,
    ``shape`` …) are the teacher's. A ``prompt_table`` set on the view replaces the teacher's
    for the view's calls (a critic with another null prompt: ``runs.sd_nasa``)."""

    def __init__(self, teacher: Any, name: str) -> None:
        super().__init__()
        self.__dict__["_teacher"] = teacher  # not a submodule: its base is not this view's
        self.name = name
        params = lora_parameters(teacher.model, name)
        if not params:
            raise ValueError(f"the teacher's network has no adapter named {name!r}")
        self.lora = nn.ParameterList(params)

    def __getattr__(self, attr: str) -> Any:
        try:
            return super().__getattr__(attr)
        except AttributeError:
            return getattr(self.__dict__["_teacher"], attr)

    @property
    def teacher(self) -> Any:
        return self.__dict__["_teacher"]

    def denoise(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        with adapter_on(self.teacher.model, self.name), _own_prompts(self):
            return self.teacher.denoise(x_t, t, cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.denoise(x_t, t, cond)

    def __deepcopy__(self, memo: dict[int, Any]) -> AdapterView:
        """A new adapter ``<name>_copyN`` on the same base, holding a copy of these weights."""
        model, new = self.teacher.model, f"{self.name}_copy{next(_copies)}"
        cfg = copy.deepcopy(_config_of(model, self.name))
        flags = {id(p): p.requires_grad for p in model.parameters()}
        from peft import inject_adapter_in_model

        inject_adapter_in_model(cfg, model, adapter_name=new)
        _rest(model, flags)
        view = AdapterView(self.teacher, new)
        if "prompt_table" in self.__dict__:
            view.prompt_table = self.prompt_table
        with torch.no_grad():
            for mine, theirs in zip(view.lora, self.lora, strict=True):
                mine.copy_(theirs)
                mine.requires_grad_(theirs.requires_grad)
        memo[id(self)] = view
        return view


@contextmanager
def _own_prompts(view: AdapterView) -> Iterator[None]:
    """The view's own ``prompt_table`` (set on the view: its labels' rows, e.g. another null
    prompt) in place of the teacher's for one call; nothing to do when the view has none."""
    own = view.__dict__.get("prompt_table")
    if own is None:
        yield
        return
    teacher = view.teacher
    before, teacher.prompt_table = teacher.prompt_table, own
    try:
        yield
    finally:
        teacher.prompt_table = before


def _config_of(model: nn.Module, name: str) -> Any:
    configs = getattr(model, "peft_config", {})
    if name not in configs:
        raise ValueError(f"no LoRA config named {name!r} on {type(model).__name__}")
    return configs[name]


def lora_state_dict(view: AdapterView) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(weights, metadata)`` of the view's adapter in diffusers' layout (keys without PEFT's
    ``base_model.model.`` prefix or adapter name), float32 on the CPU; ``metadata`` is the
    ``LoraConfig`` as ``save_lora_weights(..., unet_lora_adapter_metadata=)`` stores it, so a
    ``lora_alpha`` other than the rank reloads with its scale."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    model = view.teacher.model
    state = get_peft_model_state_dict(model, adapter_name=view.name)
    state = convert_state_dict_to_diffusers(state)
    weights = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    cfg = _config_of(model, view.name)
    meta = {k: v for k, v in cfg.to_dict().items() if k != "peft_type"}
    meta["target_modules"] = sorted(cfg.target_modules)
    return weights, meta
