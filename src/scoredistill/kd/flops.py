"""FLOPs of a forward pass, counted with forward hooks on ``nn.Linear`` and ``nn.Conv2d``.

One multiply–accumulate (MAC) counts as 2 FLOPs; biases, activations, pooling and
normalisation are not counted (the usual convention of NAS FLOPs budgets, which the dense and
convolutional layers dominate)::

    Linear:  FLOPs = 2 · in_features · out.numel()
    Conv2d:  FLOPs = 2 · (in_channels / groups) · k_h · k_w · out.numel()

The count is for the whole ``example_input``: pass a batch of one for per-example FLOPs.
Modules that are called without going through ``nn.Module.__call__`` (a weight-sharing
supernet that applies ``F.linear`` to sliced weights) are invisible to hooks; count those
analytically and check the formula against this counter on an equivalent plain network.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

__all__ = ["count_flops", "mlp_flops", "mlp_params"]


def _layer_flops(module: nn.Module, out: Tensor) -> int:
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * out.numel()
    if isinstance(module, nn.Conv2d):
        k_h, k_w = module.kernel_size
        return 2 * (module.in_channels // module.groups) * k_h * k_w * out.numel()
    raise TypeError(f"no FLOPs rule for {type(module).__name__}; expected Linear or Conv2d")


@torch.no_grad()
def count_flops(model: nn.Module, example_input: Tensor) -> int:
    """FLOPs (2 × MACs) of every ``nn.Linear``/``nn.Conv2d`` call in ``model(example_input)``.

    A module called twice is counted twice. The model's train/eval mode is left unchanged.
    """
    total = 0

    def hook(module: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        total += _layer_flops(module, out)

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        model(example_input)
    finally:
        for h in handles:
            h.remove()
    return total


def mlp_flops(in_dim: int, widths: tuple[int, ...] | list[int], classes: int) -> int:
    """Per-example FLOPs of ``MLP(in_dim, widths, classes)``: ``2 Σ_l d_{l-1} d_l``."""
    dims = [in_dim, *widths, classes]
    return 2 * sum(a * b for a, b in itertools.pairwise(dims))


def mlp_params(in_dim: int, widths: tuple[int, ...] | list[int], classes: int) -> int:
    """Parameters (weights and biases) of ``MLP(in_dim, widths, classes)``."""
    dims = [in_dim, *widths, classes]
    return sum((a + 1) * b for a, b in itertools.pairwise(dims))
