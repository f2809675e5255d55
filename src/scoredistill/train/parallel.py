"""How the two players are spread over processes: DDP (Accelerate) or FSDP2 (raw ``fully_shard``).

``ddp``: ``acc.prepare`` wraps generator and critic in ``DistributedDataParallel`` (full replicas,
all-reduced gradients). ``fsdp2``: every block of the network and the root are
``torch.distributed.fsdp.fully_shard`` units; weights, gradients and optimizer moments are
``DTensor`` shards (1/N per rank), gathered block by block in forward and backward. The frozen
teacher is replicated and never wrapped; the EMA copy stays a full replica.

Why raw FSDP2 and not Accelerate's FSDP plugin: ``torchrun`` on CPU needs
``Accelerator(cpu=True)``, and there Accelerate silently ignores the FSDP plugin (v1 or v2):
``distributed_type`` stays ``MULTI_CPU`` and the models come back DDP-wrapped. Raw
``fully_shard`` does run on CPU/gloo (``shared/reference/diffusers_integration.md`` §6 "FSDP",
both verified there), so the library shards with it and keeps Accelerate for process setup,
``backward`` and DDP. Checkpoints hold full tensors in DDP's format in either mode (through
``torch.distributed.checkpoint.state_dict``'s full state dicts, optimizer state by index).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .common import ema_update

__all__ = ["checkpoint_views", "clip_grad_norm", "full_state_dict", "is_sharded",
           "load_full_state_dict", "prepare_players", "shard", "update_ema"]  # fmt: skip


def is_sharded(module: Any) -> bool:
    """Whether ``module`` went through :func:`shard` (an FSDP2 module)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _blocks(module: nn.Module) -> Iterator[nn.Module]:
    """The FSDP units below the root: each ``nn.ModuleList`` element (UNet down/up blocks, DiT
    blocks) or child named ``*block`` (``mid_block``) that holds parameters, outermost first."""
    for name, child in module.named_children():
        block = isinstance(module, nn.ModuleList) or name.endswith("block")
        if block and next(child.parameters(), None) is not None:
            yield child
        elif not isinstance(module, nn.ModuleList):
            yield from _blocks(child)


def shard(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """``fully_shard`` each block (:func:`_blocks`), then the root, in place (on ``device``,
    from rank 0's weights); needs a process group. Returns ``module``, now an ``FSDPModule``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = device or torch.device("cpu")
    module.to(device)
    for tensor in [*module.parameters(), *module.buffers()]:  # rank 0's weights, as DDP's
        torch.distributed.broadcast(tensor.data, src=0)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in list(_blocks(module)):
        fully_shard(block, mesh=mesh)
    # the root too reshards after each forward (FSDP2's default keeps it gathered until the
    # backward): after a no-grad forward, ``requires_grad_`` and ``state_dict`` would otherwise
    # act on the gathered copies and leave the sharded parameters frozen
    fully_shard(module, mesh=mesh, reshard_after_forward=True)
    return module


def prepare_players(
    acc: Any, mode: Literal["ddp", "fsdp2"], generator: nn.Module, critic: nn.Module,
    make_optimizer: Callable[[nn.Module, str], Optimizer],
) -> tuple[nn.Module, nn.Module, Optimizer, Optimizer]:  # fmt: skip
    """``(gen, crit, opt_g, opt_c)`` for the loop: ``ddp`` (or one process) through Accelerate's
    ``prepare``; ``fsdp2``: sharded in place before ``make_optimizer(module, name)``, unprepared."""
    sharded = mode == "fsdp2" and acc.num_processes > 1
    if mode == "fsdp2" and not sharded:
        note = "train.parallel=fsdp2 with 1 process: nothing to shard, training unsharded"
        print(f"scoredistill: note: {note} (torchrun --nproc_per_node N shards)", file=sys.stderr)
    for module in (generator, critic) if sharded else ():
        shard(module, acc.device)
    opts = make_optimizer(generator, "generator"), make_optimizer(critic, "critic")
    return (generator, critic, *opts) if sharded else acc.prepare(generator, critic, *opts)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for ``DTensor`` gradients: the norm of the *full*
    gradient (each rank's partial norm reduced over the ranks), the same scale on every shard."""
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """:func:`train.common.ema_update` from ``model``'s full parameters; ``ema`` is a plain full
    module. Sharded: every unit is gathered for it (one all-gather per block, not per tensor),
    then resharded, so every rank calls it."""
    units = [m for m in model.modules() if is_sharded(m)]
    for unit in units:
        unit.unshard()
    try:
        ema_update(ema, model, decay)
    finally:
        for unit in units:
            unit.reshard()


# ----------------------------------------------------------------------------- checkpoints
def _full_options(**kw: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state_dict(module: nn.Module, *, everywhere: bool = False) -> dict[str, Tensor]:
    """``module``'s unsharded state dict of plain tensors (``state_dict()`` when not sharded).
    Sharded: a collective (every rank calls it) whose CPU tensors land on rank 0 only, or on
    every rank with ``everywhere``."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    options = _full_options(cpu_offload=not everywhere)
    return {k: v.cpu() for k, v in get_model_state_dict(module, options=options).items()}


def load_full_state_dict(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a full state dict (every rank passes all of it) into a possibly sharded module."""
    if not is_sharded(module):
        module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_full_options())


def _full_optimizer_state(module: nn.Module, opt: Optimizer) -> dict[str, Any]:
    """``opt.state_dict()`` as the unsharded optimizer gives it (state keyed by parameter
    index, not name); a collective whose CPU tensors land on rank 0 (other ranks get ``{}``)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(module, opt, options=_full_options(cpu_offload=True))
    if "param_groups" not in sd:
        return {}
    index = {name: i for i, (name, _) in enumerate(module.named_parameters())}
    # ``foreach`` (set for DTensors, ``two_player.make_optimizer``) is stored as unsharded
    groups = [{**g, "params": [index[n] for n in g["params"]], "foreach": None}
              for g in sd["param_groups"]]  # fmt: skip
    return {"state": {index[n]: s for n, s in sd["state"].items()}, "param_groups": groups}


def _load_full_optimizer_state(module: nn.Module, opt: Optimizer, state: dict[str, Any]) -> None:
    """The inverse of :func:`_full_optimizer_state`: each rank keeps its shards."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = [name for name, _ in module.named_parameters()]
    groups = [{**g, "params": [names[i] for i in g["params"]], "foreach": live["foreach"]}
              for g, live in zip(state["param_groups"], opt.param_groups, strict=True)]  # fmt: skip
    full = {"state": {names[i]: s for i, s in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(module, opt, full, options=_full_options())


class _View:
    """The ``state_dict``/``load_state_dict`` that the checkpoint functions call."""

    def __init__(self, state_dict: Callable[[], Any], load: Callable[[Any], None] | None = None):
        self.state_dict, self.load_state_dict = state_dict, load


def checkpoint_views(
    modules: dict[str, nn.Module], optimizers: dict[str, Optimizer], *, save: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``save_checkpoint``/``load_checkpoint`` get for ``modules`` and ``optimizers`` (an
    optimizer's parameters are those of the module of the same name). Unsharded ones pass as
    they are. Sharded ones: ``save``: their full state dicts, gathered now (a collective: every
    rank calls it; rank 0 writes); else views that load full state dicts into the shards and
    report the full shapes (meta tensors, no communication) for the shape check."""
    mods: dict[str, Any] = dict(modules)
    opts: dict[str, Any] = dict(optimizers)
    for name, module in ((n, m) for n, m in modules.items() if is_sharded(m)):
        opt = optimizers.get(name)
        if save:
            mods[name] = _View(partial(dict, full_state_dict(module)))
            if opt is not None:
                opts[name] = _View(partial(dict, _full_optimizer_state(module, opt)))
        else:
            sd = module.state_dict()  # DTensors: their shapes are the full ones
            meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in sd.items()}
            mods[name] = _View(partial(dict, meta), partial(load_full_state_dict, module))
            if opt is not None:
                opts[name] = _View(opt.state_dict, partial(_load_full_optimizer_state, module, opt))
    return mods, opts
