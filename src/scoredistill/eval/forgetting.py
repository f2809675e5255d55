"""How a student trained to forget a class (SFD) answers, from the exact class posterior."""

from __future__ import annotations

from torch import Tensor

from ..teachers.analytic import GaussianMixtureTeacher
from .metrics import _flat64

__all__ = ["forgetting_metrics"]


def forgetting_metrics(
    truth: GaussianMixtureTeacher, x: Tensor, labels: Tensor, forget_class: int, safe_class: int
) -> dict[str, float]:
    """How a student trained to forget ``forget_class`` (SFD) answers: ``forget_mass``,
    ``forget_to_safe`` and ``retain_acc`` (``METRIC_DOCS``) from the exact class posterior."""
    x = _flat64("x", x)
    pred = truth.class_posterior(x).argmax(dim=1)
    labels = labels.to(pred.device)
    asked = labels == forget_class
    if not bool(asked.any()) or bool(asked.all()):
        raise ValueError(f"labels must include class {forget_class} and at least one other")
    return {
        "forget_mass": float((pred[asked] == forget_class).double().mean()),
        "forget_to_safe": float((pred[asked] == safe_class).double().mean()),
        "retain_acc": float((pred[~asked] == labels[~asked]).double().mean()),
    }
