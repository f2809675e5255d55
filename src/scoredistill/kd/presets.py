"""Presets ``<method>-<task>`` for ``scoredistill kd`` (a plain dict of ``KDConfig`` overrides).

CPU budgets (1 core): teacher MLP(256, 256) (CNN(32, 32) for ACAM, a cross-encoder MLP(128, 128)
for retrieval), student MLP(32) unless stated, Adam 1e-2, 1000 steps of 128. Each preset's
``reference`` is the method the reference note's expected effect (d.2) compares against.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "QUICK"]

_RETRIEVAL: dict[str, Any] = {
    "task": "retrieval",
    "student_widths": [64],
    "teacher.widths": [128, 128],
    "teacher.steps": 1500,
    "teacher.batch_size": 32,  # 32 queries = 960 pairs per step
    "train.steps": 600,  # note d.1: keep ranking toys to <= 600 steps
}

PRESETS: dict[str, dict[str, Any]] = {
    "kd-digits": {"method": "kd", "task": "digits", "alpha": 0.5, "temperature": 4.0},
    # KD on every training input without labels vs CE on 50 labels (note d.2.1 (i))
    "kd-digits-unlabelled": {"method": "kd", "task": "digits", "alpha": 0.0, "n_labels": 50},
    # 40% symmetric label noise; 0.1·CE(noisy) + 0.9·KD (note d.1); the teacher saw clean labels
    "kd-digits-noisy": {"method": "kd", "task": "digits", "alpha": 0.1, "label_noise": 0.4},
    # offline stand-in: BD-KD's student loss against a frozen teacher (online mode: procedures)
    "bdkd-classification": {
        "method": "bdkd",
        "reference": "kd",
        "task": "classification",
        "alpha": 0.5,
    },
    # d.2.3: PLD(tau=4) vs 0.5·CE + 0.5·KD(T=4); PLD has no alpha
    "pld-digits": {"method": "pld", "reference": "kd", "temperature": 4.0},
    # d.2.3 diagnostic: tau = 1 with a saturated teacher (mean alpha_1 ~ 1) makes PLD equal CE
    "pld-digits-tau1": {"method": "pld", "reference": "kd", "temperature": 1.0},
    # d.2.17, token-free: GKD's JSD(0.5) and reverse KL in place of Hinton's forward KL
    "jsd-digits": {"method": "jsd", "reference": "kd", "beta": 0.5},
    "reversekl-digits": {"method": "reverse_kl", "reference": "kd"},
    # d.2.4: binary digits, teacher on the 2-class labels, student MLP(16), alpha = 0 (paper)
    "lelp-binary-digits": {
        "method": "lelp",
        "reference": "kd",
        "task": "binary-digits",
        "student_widths": [16],
        "alpha": 0.0,
    },
    "lelp-binary-digits-nonull": {
        "method": "lelp",
        "reference": "kd",
        "task": "binary-digits",
        "student_widths": [16],
        "alpha": 0.0,
        "lelp.null_space": False,
    },
    # d.1: oracle subclasses (the true digit) as the sanity upper bound of LELP
    "lelp-binary-digits-oracle": {
        "method": "lelp",
        "reference": "kd",
        "task": "binary-digits",
        "student_widths": [16],
        "alpha": 0.0,
        "lelp.oracle": True,
    },
    # d.2.6: a projector head on the student's first hidden layer; MLP(32, 32) student
    "ofa-digits": {"method": "ofa", "reference": "kd", "student_widths": [32, 32]},
    # d.2.6 closer to the note's heterogeneous pair: a CNN(32, 32) teacher, an MLP student
    "ofa-digits-hetero": {
        "method": "ofa",
        "reference": "kd",
        "student_widths": [32, 32],
        "teacher.kind": "cnn",
        "teacher.steps": 600,
    },
    # d.2.8: digits as (1, 8, 8) maps; CNN(32, 32) teacher, CNN(8) student; vs FitNet hints
    "acam-digits": {
        "method": "acam",
        "reference": "fitnet",
        "model": "cnn",
        "teacher.kind": "cnn",
        "train.steps": 400,  # the fusion attention makes a step ~10x an MLP step
        "train.batch_size": 64,
        "teacher.steps": 600,
    },
    # d.2.7: 30% noisy labels, linear student (650 parameters), clean validation of 100
    "kdaif-digits": {
        "method": "kdaif",
        "reference": "kd",
        "student_widths": [],
        "label_noise": 0.3,
        "alpha": 0.5,
    },
    # the same with an identity Hessian (TracIn-like influence), the cheap variant of d.2.7
    "kdaif-digits-identity": {
        "method": "kdaif",
        "reference": "kd",
        "student_widths": [],
        "label_noise": 0.3,
        "alpha": 0.5,
        "aif.hessian": "identity",
    },
    # d.2.5 (b): teacher scores with large per-query offsets; pure Margin-MSE vs pointwise MSE
    "marginmse-retrieval": {
        **_RETRIEVAL,
        "method": "margin_mse",
        "reference": "pointwise",
        "alpha": 0.0,
        "retrieval.offset_std": 5.0,
    },
    # the note's exact student: bias-free towers cannot absorb the per-query offset
    "marginmse-retrieval-nobias": {
        **_RETRIEVAL,
        "method": "margin_mse",
        "reference": "pointwise",
        "alpha": 0.0,
        "retrieval.offset_std": 5.0,
        "retrieval.student_bias": False,
    },
    # d.2.9: squashed (sigmoid) cross-encoder scores; ITC + CPRD vs ITC + score KD (T = 1)
    "cprd-retrieval": {
        **_RETRIEVAL,
        "method": "cprd",
        "reference": "kd",
        "temperature": 1.0,
        "retrieval.squash": True,
    },
}

# smoke budget: every preset finishes in a few seconds (checks the run, not the numbers)
QUICK: list[str] = [
    "train.steps=30",
    "teacher.steps=30",
    "train.log_every=10",
    "train.eval_every=10",
]
