"""Knowledge distillation, the library: pure losses (logits, rankings, features), KD methods,
tasks, models and metrics. Runs, presets and the benchmark sit above it (``runs.kd``,
``runs.kd_procedures``, ``presets.kd``, ``bench.kd``); nothing here writes files.

- :mod:`.losses`: Hinton KD, forward/reverse KL, GKD's JSD(β), BD-KD, ECE;
- :mod:`.ranking`: PLD, ListMLE, Margin-MSE, CPRD, nDCG;
- :mod:`.feature`: OFA-KD (projector heads) and ACAM-KD (attention masks);
- :mod:`.subclass`: LELP pseudo-subclass targets;
- :mod:`.influence`: KD-AIF influence-function sample weights;
- :mod:`.methods`: one file per KD method (its config section, plan builder and metrics) and
  the ``METHODS`` registry the run looks methods up in;
- :mod:`.tasks`, :mod:`.models`, :mod:`.scoring`: data, small networks, test-split scores;
  :mod:`.markov` and :mod:`.minillm` (LM distillation), :mod:`.evolution` and :mod:`.flops`
  (student search).

Conventions: teacher inputs are detached (frozen teacher); ``reduction`` is ``"batchmean"``
(sum over classes, mean over samples) | ``"sum"`` | ``"none"``. Docstrings cite the paper and
the part of its method; [R] marks details reconstructed in reference/knowledge_distillation.md, which
are keyword arguments. Equation numbers were not checked against the papers, so none are given.
"""

from .feature import ACAMFusion, OFAProjector, acam_loss, acam_mask_loss, mask_diversity, ofa_loss
from .influence import influence_scores, influence_weights, per_sample_grads
from .losses import (
    bdkd_loss,
    bdkd_teacher_loss,
    bdkd_weights,
    ece,
    entropy,
    forward_kl,
    jsd,
    kd_loss,
    reverse_kl,
)
from .ranking import (
    cprd_loss,
    listmle,
    margin_mse,
    mine_hard_negatives,
    ndcg,
    pld_loss,
    pld_weights,
    suffix_logsumexp,
)
from .subclass import LELPProjection, fit_lelp, lelp_aggregate, lelp_targets

__all__ = [
    "ACAMFusion",
    "LELPProjection",
    "OFAProjector",
    "acam_loss",
    "acam_mask_loss",
    "bdkd_loss",
    "bdkd_teacher_loss",
    "bdkd_weights",
    "cprd_loss",
    "ece",
    "entropy",
    "fit_lelp",
    "forward_kl",
    "influence_scores",
    "influence_weights",
    "jsd",
    "kd_loss",
    "lelp_aggregate",
    "lelp_targets",
    "listmle",
    "margin_mse",
    "mask_diversity",
    "mine_hard_negatives",
    "ndcg",
    "ofa_loss",
    "per_sample_grads",
    "pld_loss",
    "pld_weights",
    "reverse_kl",
    "suffix_logsumexp",
]
