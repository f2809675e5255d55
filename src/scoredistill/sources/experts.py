"""Phase experts: one denoiser network per phase of a few-step student (Phased DMD, Fan et al. 2025).

``PhaseExperts(experts, bounds)`` is itself a denoiser ``(x_t, t, cond) -> D`` that sends each
sample to the expert of its phase: with decreasing boundary times ``bounds``, expert ``j`` serves
``bounds[j] < t <= bounds[j-1]`` (the first expert every ``t`` above ``bounds[0]``, the last every
``t`` at or below ``bounds[-1]``). A boundary time belongs to the phase below it: it is the first
step of the next expert (LightX2V's ``match_step_index``). ``phased_experts`` builds a
``FewStepGenerator`` over given expert networks (copies of the teacher: the paper initialises
its experts from the base model), one per phase of ``steps / experts`` consecutive steps;
``phased_student`` over fresh MLP experts. Under DDP the idle experts get no gradient in a
step, which DDP's default (``find_unused_parameters=False``) refuses: experts are for
single-process runs for now.

``route(idx, experts, *args)`` is the dispatch both routers share: each expert runs once, on its
own rows. ``PhaseExperts`` keys it by time, ``multi_student.MultiStudent`` (MSD) by condition.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..schedules import Schedule, get_schedule
from ..teachers.neural import MLPDenoiserNet, NeuralDenoiser
from .generators import FewStepGenerator

__all__ = ["PhaseExperts", "phased_experts", "phased_student", "route"]


def route(idx: Tensor, experts: Sequence[nn.Module], *args: Tensor | None) -> Tensor:
    """``out[i] = experts[idx[i]](*args)[i]``, each expert called once on its rows only.

    ``idx: (B,)`` expert indices; ``args`` are row-aligned ``(B, ...)`` tensors or None (passed
    through). When every row has one expert (a student step, one partition) that expert gets the
    whole batch as given: no gather, bit for bit its own output. Experts without rows are not
    called, so they get no gradient."""
    first = int(idx[0])
    if bool((idx == first).all()):
        return experts[first](*args)
    out = None
    for j, expert in enumerate(experts):
        rows = (idx == j).nonzero(as_tuple=True)[0]
        if rows.numel():
            y = expert(*(None if a is None else a[rows] for a in args))
            out = y.new_zeros((idx.shape[0], *y.shape[1:])) if out is None else out
            out = out.index_copy(0, rows, y.to(out.dtype))
    return out


class PhaseExperts(nn.Module):
    """Denoisers routed by time: ``len(experts) = len(bounds) + 1`` (module docstring)."""

    def __init__(self, experts: Sequence[nn.Module], bounds: Sequence[float]) -> None:
        super().__init__()
        bounds = tuple(float(b) for b in bounds)
        if len(experts) != len(bounds) + 1 or any(a <= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(
                f"need one expert more than boundaries, boundaries strictly decreasing; got "
                f"{len(experts)} experts and bounds {bounds}"
            )
        self.experts, self.bounds = nn.ModuleList(experts), bounds
        first = experts[0]
        self.schedule = first.schedule
        self.dim, self.num_classes = first.dim, int(getattr(first, "num_classes", 0))

    def phase(self, t: Tensor) -> Tensor:
        """``(B,)`` expert index of each time: the number of boundaries at or above it."""
        b = torch.tensor(self.bounds, dtype=t.dtype, device=t.device)
        return (t[:, None] <= b[None, :]).sum(1)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``D(x_t, t, cond)`` of each sample's expert; ``x_t: (B, *D)``, ``t: (B,)`` or scalar."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        return route(self.phase(t), self.experts, x_t, t, cond)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self(x_t, t, cond)

    def extra_repr(self) -> str:
        return f"bounds={tuple(round(b, 4) for b in self.bounds)}"


def phased_experts(
    nets: Sequence[nn.Module],
    *,
    steps: int,
    ts: Sequence[float] | None = None,
    sigma_init: float | None = None,
) -> FewStepGenerator:
    """A ``steps``-step student whose ``len(nets)`` denoisers (``NeuralDenoiser``s on one
    schedule) each serve a phase of ``steps / len(nets)`` consecutive steps of the grid a single
    network would have (``FewStepGenerator``: ``ts``, else the default grid from ``sigma_init``)."""
    experts = len(nets)
    if experts < 1 or steps % experts:
        raise ValueError(f"experts={experts} must be >= 1 and divide steps={steps}")
    grid = FewStepGenerator(nets[0], steps=steps, ts=ts, sigma_init=sigma_init).ts
    m = steps // experts
    return FewStepGenerator(PhaseExperts(nets, [grid[j * m] for j in range(1, experts)]), ts=grid)


def phased_student(
    dim: int,
    schedule: Schedule | str,
    *,
    steps: int,
    experts: int,
    hidden: int = 256,
    depth: int = 4,
    num_classes: int = 0,
    sigma_data: float = 0.5,
    ts: Sequence[float] | None = None,
    sigma_init: float | None = None,
) -> FewStepGenerator:
    """A ``steps``-step student with ``experts`` fresh MLP denoisers (``phased_experts``), on the
    default student grid (``default_student_times``), from ``sigma_init``, or at ``ts``."""
    if experts < 1 or steps % experts:
        raise ValueError(f"experts={experts} must be >= 1 and divide steps={steps}")
    sched = get_schedule(schedule) if isinstance(schedule, str) else schedule
    nets = [
        NeuralDenoiser(
            MLPDenoiserNet(dim, hidden, depth, num_classes), sched, "edm", sigma_data, num_classes
        )
        for _ in range(experts)
    ]
    return phased_experts(nets, steps=steps, ts=ts, sigma_init=sigma_init)
