"""The expected effects of every KD preset (reference note, section d.2) as checkable claims.

A :class:`Claim` reads ``metric ⋈ against``: ``against`` is a metric of the same run, a constant,
or ``"<preset>:<metric>"`` of another preset's run with the same seed (``kd.bench`` pairs seeds
and gives the verdict). ``DERIVED`` adds metrics computed from a run's own ``metrics.json``
before the claims are checked. Thresholds are the note's, set before any run; where the note
gives none (e.g. "finishes in seconds") the constant is stated in the claim's text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DERIVED", "EXPECTED", "Claim", "with_derived"]


@dataclass(frozen=True)
class Claim:
    """An expected effect: ``metric ⋈ against`` (a metric name or a constant)."""

    text: str
    metric: str
    against: str | float
    kind: str  # ">" | "<" | ">=" | "~"


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

_LM_QUALITY = "teacher_nll_of_samples"  # quality: the teacher's NLL of the student's samples
PROCEDURE_EXPECTED: dict[str, list[Claim]] = {
    "bdkd-online-classification": [
        Claim(
            "d.2.2: online BD-KD: lower student ECE than DML",
            "ece",
            "dml-online-classification:ece",
            "<",
        ),
        Claim(
            "d.2.2: online BD-KD: accuracy similar to DML (not worse)",
            _ACC,
            "dml-online-classification:accuracy",
            ">=",
        ),
    ],
    "gkd-markov": [
        Claim(
            "d.2.17: GKD samples score better under the teacher than CE's",
            _LM_QUALITY,
            f"baseline_{_LM_QUALITY}",
            "<",
        ),
    ],
    "gkd-markov-fkl-onpolicy": [
        Claim(
            "d.2.17: on-policy (λ=1) lowers the teacher NLL of samples (β=0)",
            _LM_QUALITY,
            f"gkd-markov-fkl-offpolicy:{_LM_QUALITY}",
            "<",
        ),
    ],
    "gkd-markov-rkl-onpolicy": [
        Claim(
            "d.2.17: on-policy (λ=1) lowers the teacher NLL of samples (β=1)",
            _LM_QUALITY,
            f"gkd-markov-rkl-offpolicy:{_LM_QUALITY}",
            "<",
        ),
    ],
    "gkd-markov-rkl-offpolicy": [
        Claim(
            "d.2.17: β=1 (reverse) gives lower sample entropy than β=0",
            "sample_entropy",
            "gkd-markov-fkl-offpolicy:sample_entropy",
            "<",
        ),
        Claim(
            "d.2.17: β=1 gives higher precision: lower KL(q ‖ true) than β=0",
            "reverse_kl_true",
            "gkd-markov-fkl-offpolicy:reverse_kl_true",
            "<",
        ),
    ],
    "gkd-markov-fkl-offpolicy": [
        Claim(
            "d.2.17: β=0 (forward) covers better: lower KL(true ‖ q) than β=1",
            "kl_true",
            "gkd-markov-rkl-offpolicy:kl_true",
            "<",
        ),
    ],
    "minillm-markov": [
        Claim(
            "§18: MiniLLM is more precise than CE: lower KL(q ‖ true)",
            "reverse_kl_true",
            "baseline_reverse_kl_true",
            "<",
        ),
        Claim(
            "§18: MiniLLM is more precise than forward-KL KD on data (β=0, λ=0)",
            "reverse_kl_true",
            "gkd-markov-fkl-offpolicy:reverse_kl_true",
            "<",
        ),
    ],
    "sweep-digits": [
        Claim(
            "d.2.16: the smallest student gains most from KD (smallest vs largest width)",
            "gain_small_minus_large",
            0.0,
            ">",
        ),
        Claim(
            "d.2.16: teacher-logit noise σ=5 collapses the gains (accuracy drops)",
            "noise_drop",
            0.0,
            "<",
        ),
        Claim(
            "d.2.16: agreement is not monotonic in accuracy: Spearman ρ < 0.9 (constant ours)",
            "spearman_accuracy_agreement",
            0.9,
            "<",
        ),
    ],
    "diswot-digits": [
        Claim(
            "d.2.10: DisWOT score ranks students better than parameter count (Spearman)",
            "spearman",
            "baseline_spearman",
            ">",
        ),
        Claim("d.2.10: DisWOT score ranks better than random (ρ > 0)", "spearman", 0.0, ">"),
        Claim(
            "d.2.10: evolutionary search over ~50 candidates finishes in seconds (< 10 s)",
            "search_s",
            10.0,
            "<",
        ),
        Claim(
            "d.2.10: the searched student (KD) ≥ the largest one in the same params budget",
            "search_accuracy",
            "baseline_search_accuracy",
            ">=",
        ),
    ],
    "autodistil-digits": [
        Claim(
            "d.2.11: few-shot supernets (K=2) rank subnets better than K=1 (Kendall τ)",
            "kendall_tau",
            "baseline_kendall_tau",
            ">",
        ),
        Claim(
            "d.2.11: pick under the FLOPs budget within ~1 pt of the best standalone subnet",
            "regret",
            0.01,
            "<",
        ),
    ],
    "cvdd-digits": [
        Claim("d.2.12: far above chance (tens of points): accuracy > 0.3", _ACC, 0.3, ">"),
        Claim(
            "d.2.12: CV-DD beats random real images at the same IPC", _ACC, "baseline_accuracy", ">"
        ),
        Claim("d.2.12: committee ≥ single model", _ACC, "single_accuracy", ">="),
        Claim(
            "d.2.12: BSSL (train-mode BN) ≥ eval-mode relabel", _ACC, "eval_relabel_accuracy", ">="
        ),
    ],
    "knfu-digits": [
        Claim("d.2.13: KnFu ≥ uniform averaging at α=0.1 (ALMA)", _ACC, "uniform_accuracy", ">="),
        Claim(
            "d.2.13 caveat: local-only can beat both at α=0.1 (local-mix accuracy)",
            "baseline_local_accuracy",
            "local_accuracy",
            ">=",
        ),
    ],
    "knfu-digits-alpha1": [
        Claim(
            "d.2.13: the KnFu−uniform gap shrinks at α=1.0", "fed_gap", "knfu-digits:fed_gap", "<"
        ),
    ],
    "edgefd-digits": [
        Claim(
            "d.2.14: most OOD proxy rows rejected by all clients (> 90%)", "ood_rejection", 0.9, ">"
        ),
        Claim(
            "d.2.14: filtered FD beats unfiltered FD under strong non-IID (ALMA)",
            _ACC,
            "uniform_accuracy",
            ">",
        ),
        Claim(
            "d.2.14: a client's KMeans fit takes milliseconds (< 100 ms, constant ours)",
            "kmeans_fit_ms",
            100.0,
            "<",
        ),
    ],
    "comd-digits": [
        Claim(
            "d.2.15: accuracy rises across rounds (round 4 > round 1)",
            _ACC,
            "first_round_accuracy",
            ">",
        ),
        Claim(
            "d.2.15: beats one-shot KD with the same training steps", _ACC, "baseline_accuracy", ">"
        ),
        Claim(
            "d.2.15: reverse transfer keeps the student's label somewhere",
            "reversed_labels",
            0.0,
            ">",
        ),
    ],
}
EXPECTED.update(PROCEDURE_EXPECTED)


def _fed_gap(m: dict[str, Any]) -> float | None:
    """|ALMA(method) − ALMA(uniform averaging)| of a federated run."""
    if "uniform_accuracy" not in m or "accuracy" not in m:
        return None
    return abs(m["accuracy"] - m["uniform_accuracy"])


def _gain_small_minus_large(m: dict[str, Any]) -> float | None:
    """KD gain of the smallest swept width minus that of the largest (``gain_w<width>`` keys)."""
    gains = {int(k[6:]): v for k, v in m.items() if k.startswith("gain_w") and k[6:].isdigit()}
    if len(gains) < 2:
        return None
    return gains[min(gains)] - gains[max(gains)]


DERIVED: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "fed_gap": _fed_gap,
    "gain_small_minus_large": _gain_small_minus_large,
}


def with_derived(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus every ``DERIVED`` metric that applies to it."""
    extra = {k: f(metrics) for k, f in DERIVED.items()}
    return {**metrics, **{k: v for k, v in extra.items() if v is not None}}
