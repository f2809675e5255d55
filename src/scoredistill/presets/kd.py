"""Presets ``<method>-<task>`` of ``scoredistill kd``: plain dicts of ``KDConfig`` overrides.

Each preset carries a one-line description (``DESCRIPTIONS``) and the expected effect from the
reference note, section d.2, as checkable claims (``EXPECTED``; the KD bench gives the verdicts).
CPU budgets (1 core): teacher MLP(256, 256) (CNN(32, 32) for ACAM, a cross-encoder MLP(128, 128)
for retrieval), student MLP(32) unless stated, Adam 1e-2, 1000 steps of 128. Each preset's
``reference`` is the method the note's expected effect compares against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DESCRIPTIONS", "EXPECTED", "PRESETS", "QUICK", "Claim"]

_RETRIEVAL: dict[str, Any] = {
    "task": "retrieval",
    "student_widths": [64],
    "teacher.widths": [128, 128],
    "teacher.steps": 1500,
    "teacher.batch_size": 32,  # 32 queries = 960 pairs per step
    "train.steps": 600,  # note d.1: keep ranking toys to <= 600 steps
}
_LELP: dict[str, Any] = {
    "method": "lelp",
    "reference": "kd",
    "task": "binary-digits",
    "student_widths": [16],
    "alpha": 0.0,  # the paper's pure distillation
}
# d.2.7: 30% noisy labels, linear student (650 parameters), clean validation of 100
_KDAIF: dict[str, Any] = {
    "method": "kdaif",
    "reference": "kd",
    "student_widths": [],
    "label_noise": 0.3,
    "alpha": 0.5,
}
_MARGIN_MSE: dict[str, Any] = {
    **_RETRIEVAL,
    "method": "margin_mse",
    "reference": "pointwise",
    "alpha": 0.0,
    "retrieval.offset_std": 5.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "kd-digits": {"method": "kd", "task": "digits", "alpha": 0.5, "temperature": 4.0},
    "kd-digits-unlabelled": {"method": "kd", "task": "digits", "alpha": 0.0, "n_labels": 50},
    # the teacher saw clean labels
    "kd-digits-noisy": {"method": "kd", "task": "digits", "alpha": 0.1, "label_noise": 0.4},
    # offline stand-in for BD-KD (its online mode is a procedure preset)
    "bdkd-classification": {
        "method": "bdkd",
        "reference": "kd",
        "task": "classification",
        "alpha": 0.5,
    },
    "pld-digits": {"method": "pld", "reference": "kd", "temperature": 4.0},
    "pld-digits-tau1": {"method": "pld", "reference": "kd", "temperature": 1.0},
    "jsd-digits": {"method": "jsd", "reference": "kd", "beta": 0.5},
    "reversekl-digits": {"method": "reverse_kl", "reference": "kd"},
    "lelp-binary-digits": _LELP,
    "lelp-binary-digits-nonull": {**_LELP, "lelp.null_space": False},
    "lelp-binary-digits-oracle": {**_LELP, "lelp.oracle": True},
    "ofa-digits": {"method": "ofa", "reference": "kd", "student_widths": [32, 32]},
    "ofa-digits-hetero": {
        "method": "ofa",
        "reference": "kd",
        "student_widths": [32, 32],
        "teacher.kind": "cnn",
        "teacher.steps": 600,
    },
    "acam-digits": {
        "method": "acam",
        "reference": "fitnet",
        "model": "cnn",
        "teacher.kind": "cnn",
        "train.steps": 400,  # the fusion attention makes a step ~10x an MLP step
        "train.batch_size": 64,
        "teacher.steps": 600,
    },
    "kdaif-digits": _KDAIF,
    "kdaif-digits-identity": {**_KDAIF, "aif.hessian": "identity"},
    "marginmse-retrieval": _MARGIN_MSE,
    # bias-free towers cannot absorb the per-query offset
    "marginmse-retrieval-nobias": {**_MARGIN_MSE, "retrieval.student_bias": False},
    "cprd-retrieval": {
        **_RETRIEVAL,
        "method": "cprd",
        "reference": "kd",
        "temperature": 1.0,
        "retrieval.squash": True,
    },
}

DESCRIPTIONS: dict[str, str] = {
    "kd-digits": "Hinton KD, 0.5·CE + 0.5·KD(T=4), on digits with every label (note d.2.1 (ii))",
    "kd-digits-unlabelled": "KD on every training input, no labels, vs CE on 50 labels (d.2.1 (i))",
    "kd-digits-noisy": "0.1·CE + 0.9·KD with 40% symmetric label noise (note d.1, d.2.1 (iii))",
    "bdkd-classification": "BD-KD's student term against a frozen teacher, vs KD (offline, d.2.2)",
    "pld-digits": "Plackett-Luce distillation, tau = 4, no alpha, vs 0.5·CE + 0.5·KD(T=4) (d.2.3)",
    "pld-digits-tau1": "PLD with tau = 1 and a saturated teacher: equals CE (d.2.3 diagnostic)",
    "jsd-digits": "GKD's JSD(0.5), token-free, in place of Hinton's forward KL (d.2.17)",
    "reversekl-digits": "reverse KL (mode-seeking), token-free, in place of forward KL (d.2.17)",
    "lelp-binary-digits": "LELP pseudo-subclasses, 2-class digits, student MLP(16), alpha 0 (d.2.4)",
    "lelp-binary-digits-nonull": "LELP without the null-space projection: the ablation (d.2.4)",
    "lelp-binary-digits-oracle": "LELP with the true digit as subclass: the upper bound (d.1)",
    "ofa-digits": "OFA-KD, a projector head on the MLP(32, 32) student's first layer (d.2.6)",
    "ofa-digits-hetero": "OFA-KD from a CNN(32, 32) teacher to an MLP student (d.2.6)",
    "acam-digits": "ACAM-KD on (1, 8, 8) digit maps, CNN teacher and student, vs FitNet (d.2.8)",
    "kdaif-digits": "KD-AIF influence weights, 30% noisy labels, linear student (d.2.7)",
    "kdaif-digits-identity": "KD-AIF with an identity Hessian (TracIn-like), the cheap variant",
    "marginmse-retrieval": "Margin-MSE vs pointwise MSE, teacher scores with per-query offsets",
    "marginmse-retrieval-nobias": "Margin-MSE vs pointwise MSE, the note's bias-free student",
    "cprd-retrieval": "ITC + CPRD vs ITC + score KD (T = 1), squashed teacher scores (d.2.9)",
}


@dataclass(frozen=True)
class Claim:
    """An expected effect ``metric ⋈ against``: ``against`` is a metric of the same run, a
    constant, or ``"<preset>:<metric>"`` of another preset's run with the same seed. Thresholds
    are the note's, set before any run; where the note gives none the constant is in the text."""

    text: str
    metric: str
    against: str | float
    kind: str  # ">" | "<" | ">=" | "~" (the verdict rule: scoredistill.bench.kd)


_ACC, _NDCG = "accuracy", "ndcg@10"
EXPECTED: dict[str, list[Claim]] = {
    "kd-digits": [Claim("d.2.1 (ii): KD+CE ≥ CE", _ACC, "baseline_accuracy", ">=")],
    "kd-digits-unlabelled": [
        Claim(
            "d.2.1 (i): KD, no labels ≫ CE on 50 labels (+15–19 pts)",
            _ACC,
            "baseline_accuracy",
            ">",
        )
    ],
    "kd-digits-noisy": [
        Claim("d.2.1 (iii): 40% noise, KD+CE ≫ CE (+19 pts)", _ACC, "baseline_accuracy", ">")
    ],
    "bdkd-classification": [
        Claim("d.2.2: BD-KD term gives lower student ECE than KD", "ece", "reference_ece", "<")
    ],
    "pld-digits": [Claim("d.2.3: PLD(τ=4) ≥ KD+CE, no α", _ACC, "reference_accuracy", ">=")],
    "pld-digits-tau1": [
        Claim("d.2.3: PLD(τ=1), saturated teacher, equals CE", _ACC, "baseline_accuracy", "~")
    ],
    "jsd-digits": [
        Claim("d.2.17 (token-free): JSD(0.5) matches KD", _ACC, "reference_accuracy", ">=")
    ],
    "reversekl-digits": [
        Claim(
            "d.2.17 (token-free): reverse KL is mode-seeking: lower entropy than KD",
            "entropy",
            "reference_entropy",
            "<",
        )
    ],
    "lelp-binary-digits": [
        Claim("d.2.4: LELP > KD by +0.5–1 pt (2 classes)", _ACC, "reference_accuracy", ">")
    ],
    "lelp-binary-digits-nonull": [
        Claim("d.2.4: no null-space projection: LELP ≈ KD", _ACC, "reference_accuracy", "~")
    ],
    "lelp-binary-digits-oracle": [
        Claim("d.1 sanity bound: oracle subclasses > KD", _ACC, "reference_accuracy", ">")
    ],
    "ofa-digits": [Claim("d.2.6: OFA ≥ KD (small margin)", _ACC, "reference_accuracy", ">=")],
    "ofa-digits-hetero": [
        Claim("d.2.6: OFA ≥ KD, CNN teacher → MLP student", _ACC, "reference_accuracy", ">=")
    ],
    "acam-digits": [
        Claim("d.2.8: ACAM ≥ FitNet hints (small)", _ACC, "reference_accuracy", ">="),
        Claim("d.2.8: masks stay diverse: pairwise cosine < 0.9", "acam_mask_cosine", 0.9, "<"),
        Claim(
            "d.2.8: L_mask decreases (first vs last)",
            "acam_mask_loss_last",
            "acam_mask_loss_first",
            "<",
        ),
        Claim(
            "d.2.8: masks change across training: mean abs(ΔM) > 0", "acam_mask_change", 0.0, ">"
        ),
        Claim(
            "no mask collapses: smallest spatial mask mean > 0.01 (constant ours)",
            "acam_min_spatial_mask_mean",
            0.01,
            ">",
        ),
    ],
    "kdaif-digits": [
        Claim("d.2.7: weighted KD+CE > unweighted (a few pts)", _ACC, "reference_accuracy", ">"),
        Claim("d.2.7: weights separate noisy labels, AUROC > 0.8", "aif_auroc", 0.8, ">"),
    ],
    "kdaif-digits-identity": [
        Claim("d.2.7 (identity Hessian): weighted > unweighted", _ACC, "reference_accuracy", ">"),
        Claim("d.2.7 (identity Hessian): AUROC > 0.8", "aif_auroc", 0.8, ">"),
    ],
    "marginmse-retrieval": [
        Claim(
            "d.2.5 (b): Margin-MSE ≥ pointwise MSE under per-query offsets",
            _NDCG,
            "reference_ndcg@10",
            ">=",
        )
    ],
    "marginmse-retrieval-nobias": [
        Claim(
            "d.2.5 (b), bias-free student: Margin-MSE ≥ pointwise MSE",
            _NDCG,
            "reference_ndcg@10",
            ">=",
        )
    ],
    "cprd-retrieval": [
        Claim(
            "d.2.9: ITC+CPRD ≥ ITC+score-KD (squashed teacher)", _NDCG, "reference_ndcg@10", ">="
        ),
        Claim("d.2.9: ITC+CPRD ≥ ITC alone", _NDCG, "baseline_ndcg@10", ">="),
    ],
}

# ``--quick``: seconds per run; checks that the run works, not the numbers
QUICK: list[str] = [
    "train.steps=30",
    "teacher.steps=30",
    "train.log_every=10",
    "train.eval_every=10",
]
