"""Phase experts: one denoiser network per phase of a few-step student (Phased DMD, Fan et al. 2025).

``PhaseExperts(experts, bounds)`` is itself a denoiser ``(x_t, t, cond) -> D`` that sends each
sample to the expert of its phase: with decreasing boundary times ``bounds``, expert ``j`` serves
``bounds[j] < t <= bounds[j-1]`` (the first expert every ``t`` above ``bounds[0]``, the last every
``t`` at or below ``bounds[-1]``). A boundary time belongs to the phase below it: it is the first
step of the next expert (LightX2V's ``match_step_index``). ``phased_student`` builds a
``FewStepGenerator`` over fresh MLP experts, one per phase of ``steps / experts`` consecutive
steps. Under DDP the idle experts get no gradient in a step, which DDP's default
(``find_unused_parameters=False``) refuses: experts are for single-process runs for now.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..schedules import Schedule, get_schedule
from ..teachers.neural import MLPDenoiserNet, NeuralDenoiser
from .generators import FewStepGenerator, default_student_times

__all__ = ["PhaseExperts", "phased_student"]


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
        idx = self.phase(t)
        if bool((idx == idx[0]).all()):  # one phase (a student step): no gather, cond untouched
            return self.experts[int(idx[0])](x_t, t, cond)
        out = torch.zeros_like(x_t)
        for j, expert in enumerate(self.experts):
            rows = (idx == j).nonzero(as_tuple=True)[0]
            if rows.numel():
                c = None if cond is None else cond[rows]
                out = out.index_copy(0, rows, expert(x_t[rows], t[rows], c).to(out.dtype))
        return out

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self(x_t, t, cond)

    def extra_repr(self) -> str:
        return f"bounds={tuple(round(b, 4) for b in self.bounds)}"


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
) -> FewStepGenerator:
    """A ``steps``-step student with ``experts`` fresh MLP denoisers, one per phase of
    ``steps / experts`` consecutive steps on the default student grid (``default_student_times``)."""
    if experts < 1 or steps % experts:
        raise ValueError(f"experts={experts} must be >= 1 and divide steps={steps}")
    sched = get_schedule(schedule) if isinstance(schedule, str) else schedule
    ts = default_student_times(sched, steps)
    m = steps // experts
    nets = [
        NeuralDenoiser(
            MLPDenoiserNet(dim, hidden, depth, num_classes), sched, "edm", sigma_data, num_classes
        )
        for _ in range(experts)
    ]
    return FewStepGenerator(PhaseExperts(nets, [ts[j * m] for j in range(1, experts)]), ts=ts)
