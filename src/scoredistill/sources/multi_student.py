"""MSD — Song, Lorraine, Nie, Kreis & Lucas, "Multi-student Diffusion Distillation for Better
One-step Generators", 2024 (arXiv 2410.23274; reference note b11).

A conditional teacher is distilled into K one-step students, each responsible for one block of a
partition of the conditions, ``{0..C-1} = C_1 ∪ ... ∪ C_K`` (consecutive classes, as the paper's
ImageNet split). Sampling routes each condition to its owner ``F(c) = k  iff  c ∈ C_k``:

    G(z, c) = G_{F(c)}(z, c)
    min_{θ_k}  L_k = E_{c ~ p(c | C_k), z} [ L_DMD2(G_k(z, c); c) ]      k = 1..K, independently

The loss is DMD2's, unchanged; what differs is the student: the same capacity per student serves
C/K classes instead of C (the paper's "same-sized" students, K = 4: ImageNet-64 FID 1.20), or a
smaller one serves them at a lower cost (``hidden`` below the single student's).

``MultiStudent`` is that routed generator (``sources.experts.route``, the dispatch Phased DMD's
experts use, keyed by class instead of time). The two-player loop's losses are means over the
whole batch of B rows; the backward pass multiplies student k's rows by ``B / B_k`` (``B_k`` its
rows in the batch), so student k's gradient is the mean over its own rows: exactly its own
``L_k`` on that batch (``tests/test_msd.py``). A student without rows in a batch is not called
and gets no gradient (so, as ``PhaseExperts``, single-process runs only: DDP refuses a parameter
without gradient). One conditional critic serves every student: conditioned on ``c`` its target,
the fake score of ``G``, is the fake score of ``G_{F(c)}`` alone. The equations above restate
the paper's abstract and reference note b11 in this library's notation (no equation numbers:
the paper's method section was not read, and no official code was found).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..parametrization import NULL_LABEL
from .experts import route
from .generators import OneStepGenerator, draw_latent

__all__ = ["MultiStudent", "multi_student", "partition"]


def partition(num_classes: int, students: int) -> tuple[tuple[int, ...], ...]:
    """``students`` blocks of consecutive classes, sizes differing by at most one (larger first):
    ``partition(10, 4) = ((0, 1, 2), (3, 4, 5), (6, 7), (8, 9))``."""
    if not 1 <= students <= num_classes:
        raise ValueError(
            f"students={students} must lie in [1, num_classes={num_classes}] (one class or more "
            f"per student)"
        )
    blocks = torch.tensor_split(torch.arange(num_classes), students)
    return tuple(tuple(int(c) for c in b) for b in blocks)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies row ``i`` by ``scale[i]``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.reshape(-1, *([1] * (grad.dim() - 1))).to(grad.dtype), None


class MultiStudent(nn.Module):
    """``x = G_{F(c)}(z, c)``: one-step students routed by class (module docstring).

    ``students[k]`` owns the k-th block of ``partition(num_classes, len(students))``; every
    student maps ``(z: (B, dim), cond: (B,)) -> (B, dim)``. Every row needs a class in
    ``[0, num_classes)``: the null label has no owner. NFE 1.
    """

    def __init__(self, students: Sequence[nn.Module], num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(
                "a multi-student generator needs a conditional teacher (num_classes >= 1)"
            )
        self.blocks = partition(num_classes, len(students))
        dims = {int(s.dim) for s in students}
        if len(dims) != 1:
            raise ValueError(f"every student must have the same dim; got {sorted(dims)}")
        self.students = nn.ModuleList(students)
        self.dim, self.num_classes, self.nfe = dims.pop(), num_classes, 1
        owner = torch.cat([torch.full((len(b),), k) for k, b in enumerate(self.blocks)])
        self.register_buffer("owner_of_class", owner, persistent=False)

    def owner(self, cond: Tensor) -> Tensor:
        """``(B,)`` the student index of each row's class; ``cond: (B,)`` integer labels."""
        cond = cond.long().reshape(-1).to(self.owner_of_class.device)
        if bool(((cond < 0) | (cond >= self.num_classes)).any()):
            raise ValueError(
                f"every row needs a class in [0, {self.num_classes - 1}] to find its student "
                f"(the null label {NULL_LABEL} has none); got {cond.unique().tolist()}"
            )
        return self.owner_of_class[cond]

    def sample_latent(
        self, n: int, rng: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``z: (n, dim) ~ N(0, I)`` on the parameters' device."""
        return draw_latent(n, self.dim, rng, dtype, next(self.parameters()).device)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """``z: (B, dim)``, ``cond: (B,)`` labels -> ``x: (B, dim)``, row i from student F(c_i)."""
        if cond is None:
            raise ValueError("a multi-student generator routes by class: cond (B,) is required")
        idx = self.owner(cond).to(z.device)
        x = route(idx, self.students, z, cond)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return x
        counts = torch.bincount(idx, minlength=len(self.students)).to(z.dtype)
        return _ScaleGrad.apply(x, idx.shape[0] / counts[idx])  # student k: mean over its rows

    def extra_repr(self) -> str:
        spans = ", ".join(f"{b[0]}-{b[-1]}" if len(b) > 1 else f"{b[0]}" for b in self.blocks)
        return f"classes per student: {spans}"


def multi_student(
    dim: int, *, students: int, num_classes: int, hidden: int = 256, depth: int = 3
) -> MultiStudent:
    """``students`` fresh ``OneStepGenerator`` MLPs (each with the full class embedding), built in
    order from torch's global RNG: with one student it is the ``OneStepGenerator`` that the same
    seed builds."""
    partition(num_classes, students)  # the error names the counts before any network is built
    nets = [
        OneStepGenerator(dim, hidden=hidden, depth=depth, num_classes=num_classes)
        for _ in range(students)
    ]
    return MultiStudent(nets, num_classes)
