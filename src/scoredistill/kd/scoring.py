"""Test-split scores of KD runs (classification and retrieval).

Classification: accuracy, ECE (15 bins), NLL, mean predictive entropy and top-1 agreement with
the teacher. Retrieval (one row = a query and its candidates): nDCG@10 against the graded
relevance, MRR of the most relevant candidate, top-1 accuracy (the most relevant candidate
ranked first) and top-1 agreement with the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import ece
from .ranking import ndcg
from .tasks import Task

__all__ = ["HEADLINE", "headline", "predict", "scores"]

# the metric the benchmark and the report lead with, per task kind
HEADLINE = {
    "classification": ("accuracy", "ece", "nll"),
    "retrieval": ("ndcg@10", "mrr", "accuracy"),
}


def headline(task: Task) -> tuple[str, ...]:
    """Metric names shown first for ``task`` (``HEADLINE``)."""
    return HEADLINE["retrieval" if task.relevance_test is not None else "classification"]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Class logits / candidate scores in eval mode, on the CPU (``model.predict`` if present)."""
    model.eval()
    fn = getattr(model, "predict", model)
    return fn(x.to(next(model.parameters()).device)).cpu()


def _mrr(scores: Tensor, target: Tensor) -> Tensor:
    """Mean reciprocal rank of ``target (B,)`` under ``scores (B, N)``."""
    rank = (scores > scores.gather(-1, target.unsqueeze(-1))).sum(-1) + 1
    return (1.0 / rank.float()).mean()


@torch.no_grad()
def scores(model: nn.Module, task: Task, teacher_pred: Tensor | None) -> dict[str, float]:
    """Test-split metrics of ``model`` (see the module docstring)."""
    logits = predict(model, task.x_test)
    pred = logits.argmax(-1)
    out = {"accuracy": float((pred == task.y_test).float().mean())}
    if task.relevance_test is not None:
        out["ndcg@10"] = float(ndcg(logits, task.relevance_test, k=10))
        out["mrr"] = float(_mrr(logits, task.y_test))
    else:
        probs = logits.softmax(-1)
        out["ece"] = float(ece(probs, task.y_test))
        out["nll"] = float(F.cross_entropy(logits, task.y_test))
        out["entropy"] = float(-(probs * logits.log_softmax(-1)).sum(-1).mean())
    if teacher_pred is not None:
        out["agreement"] = float((pred == teacher_pred).float().mean())
    return out
