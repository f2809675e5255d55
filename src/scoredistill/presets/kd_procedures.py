"""Presets of the KD procedures (``scoredistill kd --preset NAME``): online KD, LM
distillation, the fidelity sweep, DisWOT, federated KD, CV-DD, CoMD, AutoDistil.

``PROCEDURE_PRESETS`` maps ``<procedure>-<task>`` to a plain dict: ``"procedure"`` names the
entry of ``runs.kd_procedures.PROCEDURES`` (its config dataclass, runner and report), the other
keys are config fields, and ``"quick"`` holds the overrides of the seconds-long smoke variant
(``--quick``). ``DESCRIPTIONS`` has one line per preset and ``EXPECTED`` the note's expected
effects (section d.2) as claims the KD bench checks.
"""

from __future__ import annotations

from typing import Any

from .kd import Claim

__all__ = ["DESCRIPTIONS", "EXPECTED", "PROCEDURE_PRESETS"]

_FED_QUICK = {"n_clients": 3, "rounds": 2, "local_steps": 3, "distill_steps": 3}
_LM_QUICK = {
    "n_train": 64,
    "n_test": 64,
    "teacher_steps": 20,
    "steps": 10,
    "batch_size": 16,
    "language": {"length": 8},
}

PROCEDURE_PRESETS: dict[str, dict[str, Any]] = {
    # note d.2 item 2: MLP(256) + MLP(32) from scratch on make_classification, ~30 epochs
    "bdkd-online-classification": {
        "procedure": "online",
        "method": "bdkd",
        "task": "classification",
        "quick": {"steps": 20, "checkpoint_every": 10},
    },
    "dml-online-classification": {
        "procedure": "online",
        "method": "dml",
        "task": "classification",
        "quick": {"steps": 20, "checkpoint_every": 10},
    },
    # note d.2 item 17: GKD (TRL defaults β = 0.5, λ = 0.5) and MiniLLM (reverse KL, policy gradient)
    "gkd-markov": {"procedure": "lm", "method": "gkd", "quick": _LM_QUICK},
    "minillm-markov": {"procedure": "lm", "method": "minillm", "quick": _LM_QUICK},
    # the note's λ ∈ {0, 1} × β ∈ {0, 1} corners (forward / reverse KL; data / student samples)
    **{
        f"gkd-markov-{div}-{policy}": {
            "procedure": "lm",
            "method": "gkd",
            "beta": beta,
            "lmbda": lmbda,
            "quick": _LM_QUICK,
        }
        for div, beta in (("fkl", 0.0), ("rkl", 1.0))
        for policy, lmbda in (("offpolicy", 0.0), ("onpolicy", 1.0))
    },
    # note d.2 item 16: width {8, 32, 128} × T {1, 2, 5} × σ {0, 1, 2, 5} on digits
    "sweep-digits": {
        "procedure": "sweep",
        "task": "digits",
        "quick": {
            "widths": [8, 32],
            "temperatures": [2.0],
            "noises": [0.0, 5.0],
            "teacher_steps": 20,
            "steps": 10,
        },
    },
    # note d.2 item 10: 12 MLP candidates, one batch of 64 at init, short KD each
    "diswot-digits": {
        "procedure": "diswot",
        "task": "digits",
        "quick": {"n_candidates": 4, "teacher_steps": 20, "steps": 10},
    },
    # note d.2 items 13/14: 8 clients, Dirichlet α = 0.1, 20% proxy set, 10 rounds
    "knfu-digits": {"procedure": "federated", "method": "knfu", "quick": _FED_QUICK},
    "knfu-digits-alpha1": {
        "procedure": "federated",
        "method": "knfu",
        "dirichlet_alpha": 1.0,
        "quick": _FED_QUICK,
    },
    # EdgeFD: the proxy set gets as many pixel-shuffled (OOD) rows as half its size
    "edgefd-digits": {
        "procedure": "federated",
        "method": "edgefd",
        "ood_fraction": 0.5,
        "quick": _FED_QUICK,
    },
    # note d.2 item 12: committee of BN CNNs, IPC 10, 300 recovery steps, BSSL, T = 3
    "cvdd-digits": {
        "procedure": "cvdd",
        "task": "digits",
        "relabel_crops": 8,  # FKD-style: 8 stored views per image, each shifted ≤ 1 px
        "crop_pad": 1,
        "quick": {
            "committee_widths": [4, 4],
            "member_steps": 5,
            "ipc": 2,
            "recover_steps": 5,
            "student_steps": 5,
        },
    },
    # note d.2 item 15: assess / augment / retrain rounds with reverse transfer, 4 rounds
    "comd-digits": {
        "procedure": "comd",
        "task": "digits",
        "quick": {"pool_size": 40, "rounds": 2, "steps_per_round": 5, "teacher_steps": 20},
    },
    # note d.2 item 11: SuperMLP widths {16..128} x depths {1, 2}, K = 2 vs K = 1, sandwich KD
    "autodistil-digits": {
        "procedure": "autodistil",
        "task": "digits",
        "quick": {
            "widths": [8, 16],
            "super_steps": 5,
            "standalone_steps": 5,
            "teacher_steps": 20,
        },
    },
}

DESCRIPTIONS: dict[str, str] = {
    "bdkd-online-classification": "online BD-KD: MLP(256) teacher and MLP(32) student trained "
    "together from scratch (d.2.2)",
    "dml-online-classification": "deep mutual learning, BD-KD's online reference arm (d.2.2)",
    "gkd-markov": "GKD (TRL defaults beta = 0.5, lambda = 0.5) on a Markov language (d.2.17)",
    "minillm-markov": "MiniLLM: reverse KL by policy gradient on the Markov language (§18)",
    "gkd-markov-fkl-offpolicy": "GKD corner beta = 0 (forward KL), lambda = 0 (data samples)",
    "gkd-markov-fkl-onpolicy": "GKD corner beta = 0 (forward KL), lambda = 1 (student samples)",
    "gkd-markov-rkl-offpolicy": "GKD corner beta = 1 (reverse KL), lambda = 0 (data samples)",
    "gkd-markov-rkl-onpolicy": "GKD corner beta = 1 (reverse KL), lambda = 1 (student samples)",
    "sweep-digits": "KD fidelity sweep: width {8, 32, 128} × T {1, 2, 5} × logit noise (d.2.16)",
    "diswot-digits": "DisWOT: rank 12 MLP students at init by a training-free score (d.2.10)",
    "knfu-digits": "KnFu federated KD: 8 clients, Dirichlet alpha = 0.1, 10 rounds (d.2.13)",
    "knfu-digits-alpha1": "KnFu with milder non-IID data, Dirichlet alpha = 1 (d.2.13)",
    "edgefd-digits": "EdgeFD: federated KD with pixel-shuffled OOD proxy rows filtered (d.2.14)",
    "cvdd-digits": "CV-DD dataset distillation: BN-CNN committee, 10 images per class (d.2.12)",
    "comd-digits": "CoMD: assess / augment / retrain rounds with reverse transfer (d.2.15)",
    "autodistil-digits": "AutoDistil: few-shot supernets (K = 2 vs 1), sandwich KD (d.2.11)",
}

_ACC = "accuracy"
_LM_QUALITY = "teacher_nll_of_samples"  # quality: the teacher's NLL of the student's samples
EXPECTED: dict[str, list[Claim]] = {
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
