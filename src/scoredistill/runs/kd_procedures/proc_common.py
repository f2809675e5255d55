"""Small pieces shared by the KD procedures (online KD, LM distillation, sweeps, DisWOT).

Seeded model construction from a ``torch.Generator``, a cross-entropy/KD fit on top of
:func:`scoredistill.train.kd.train_kd`, test-split scores, rank correlation and the report
helpers. Nothing here holds state.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...kd.losses import ece
from ...train.kd import KDBatch, KDTrainConfig, train_kd
from ..family import single_thread  # re-exported: procedures pin one thread

__all__ = [
    "ce_loss",
    "class_scores",
    "fit",
    "mean_std",
    "seeded",
    "single_thread",
    "spearman",
    "sub_rng",
]


def sub_rng(rng: torch.Generator) -> torch.Generator:
    """A fresh generator seeded from ``rng`` (independent streams for independent parts)."""
    return torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=rng)))


@contextlib.contextmanager
def seeded(rng: torch.Generator) -> Iterator[None]:
    """Run a block (``nn.Module`` construction) under a global seed drawn from ``rng``.

    PyTorch's initialisers read the global RNG; forking it keeps the caller's state untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
        yield


def ce_loss(batch: KDBatch) -> Tensor:
    """Cross-entropy on the labelled rows (``labels >= 0``) of a :class:`KDBatch`."""
    count = int((batch.labels >= 0).sum())
    total = F.cross_entropy(batch.student_logits, batch.labels, ignore_index=-1, reduction="sum")
    return total / max(count, 1)


def fit(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 128,
    loss_fn: Callable[[KDBatch], Tensor] = ce_loss,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Train ``model`` in place with the supervised KD loop (no run folder); returns it."""
    loop = KDTrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, seed=seed, log_every=max(steps, 1)
    )
    with contextlib.redirect_stderr(io.StringIO()):  # the loop's progress bar, per call
        train_kd(loop, student=model, loss_fn=loss_fn, x=x, labels=labels, teacher=teacher)
    return model.eval()


@torch.no_grad()
def class_scores(
    model: nn.Module, x: Tensor, y: Tensor, teacher_pred: Tensor | None = None
) -> dict[str, float]:
    """Accuracy, ECE (15 bins), NLL and, given ``teacher_pred``, top-1 agreement."""
    model.eval()
    logits = model(x)
    pred = logits.argmax(-1)
    out = {
        "accuracy": float((pred == y).float().mean()),
        "ece": float(ece(logits.softmax(-1), y)),
        "nll": float(F.cross_entropy(logits, y)),
    }
    if teacher_pred is not None:
        out["agreement"] = float((pred == teacher_pred).float().mean())
    return out


def _ranks(values: Sequence[float]) -> Tensor:
    """Average ranks (ties share the mean rank), as float64."""
    v = torch.as_tensor(list(values), dtype=torch.float64)
    order = torch.argsort(v)
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(len(v), dtype=torch.float64)
    for value in v.unique():
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation ρ (Pearson correlation of average ranks); NaN if constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else math.nan


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    t = torch.as_tensor(list(values), dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(t) > 1 else 0.0
