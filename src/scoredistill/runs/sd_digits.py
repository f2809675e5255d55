"""What the digits classifier reads in a ``distill-sd`` run on 8×8 digit teachers: the digit each
prompt names (``prompt_digits``), whether a teacher's images can be scored that way
(``scorable_digits``), and SFD's forgetting metric (``prompt_forgetting``). Re-exported by
``runs.sd``."""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["prompt_digits", "prompt_forgetting", "scorable_digits"]


def prompt_digits(prompts: list[str]) -> torch.Tensor | None:
    """The digit each prompt names, when every prompt names exactly one; else None."""
    found = [re.findall(r"(?<![\w.])(\d)(?![\w.])", p) for p in prompts]
    return torch.tensor([int(d[0]) for d in found]) if all(len(d) == 1 for d in found) else None


def scorable_digits(teacher: Any) -> torch.Tensor | None:
    """The digit of each prompt when the decoded images are 8×8 digits the feature network
    reads (the bundled teacher); else None (the run keeps samples and wall times only)."""
    digits = prompt_digits(list(teacher.prompt_table.prompts))
    return digits if teacher.image_shape == (1, 8, 8) else None


def prompt_forgetting(
    generator: Any, teacher: Any, forget: int, safe: int, n: int, seed: int
) -> dict[str, float]:
    """How a student answers a forgotten prompt (SFD), by the digits classifier: ``n`` draws of
    prompt ``forget`` read as its digit (``forget_acc``) or the safe prompt's (``to_safe``);
    ``n // 4`` draws of every other prompt read as their digits (``retain_acc``), and of those
    naming the forgotten digit (``retain_same_digit_acc``: a leak to the concept's neighbours)."""
    from ..eval.features import load_digits_feature_net

    digits = scorable_digits(teacher)
    if digits is None:
        raise ValueError("prompt_forgetting needs 8x8 digit images and one digit per prompt")
    others = torch.tensor([i for i in range(len(digits)) if i != forget])
    labels = torch.cat([torch.full((n,), forget), others.repeat_interleave(max(1, n // 4))])
    rng = torch.Generator().manual_seed(seed + 4242)  # its own draw, apart from student_draw's
    with torch.no_grad():
        z = generator(generator.sample_latent(len(labels), rng), labels, rng=rng)
        pred = load_digits_feature_net().logits(teacher.decode(z).cpu().clamp(-1, 1)).argmax(dim=1)
    asked, read = labels == forget, pred == digits[labels]
    neighbours = ~asked & (digits[labels] == digits[forget])

    def share(hit: torch.Tensor) -> float:
        return float(hit.double().mean())

    return {
        "forget_acc": share(read[asked]),
        "to_safe": share(pred[asked] == digits[safe]),
        "retain_acc": share(read[~asked]),
        "retain_same_digit_acc": share(read[neighbours]) if bool(neighbours.any()) else None,
        "n_forget": n,
        "n_retain": int((~asked).sum()),
    }
