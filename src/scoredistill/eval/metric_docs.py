"""What each metric key of ``eval.metrics.evaluate`` means (shown in reports and tables)."""

from __future__ import annotations

__all__ = ["METRIC_DOCS"]

METRIC_DOCS: dict[str, str] = {
    "mmd": "unbiased MMD^2, sum of 5 RBF bandwidths around the reference median distance; "
    "lower is better, 0 within noise for exact samples (can be slightly negative)",
    "mmd_local": "unbiased MMD^2 with kernels exp(-d^2 / (c m)), c = 0.01, 0.1, 1, m the median "
    "squared distance of the reference: small scales see within-mode blur that 'mmd' misses",
    "within_3std": "fraction of samples within 3 std (Mahalanobis) of their most responsible "
    "component; higher is better, 1 - exp(-9/2) = 0.989 for exact 2-D samples",
    "sw2": "sliced Wasserstein-2 distance to the reference; lower is better",
    "energy": "energy distance to the reference (unbiased); lower is better, 0 within noise",
    "mode_coverage": "fraction of modes holding >= 10% of their expected on-mode samples; "
    "higher is better, 1 ideal",
    "mode_tv": "total variation between sample and true mode weights, off-mode mass counted "
    "as error; lower is better",
    "mode_tv_assigned": "total variation between the true mode weights and the fraction of "
    "samples whose most probable component lies in each mode, off-mode samples included (mode "
    "weights even when samples are blurred); lower is better",
    "spread_ratio": "within-component spread, sqrt(mean Mahalanobis^2 / D); 1 is best, "
    "< 1 mode seeking, > 1 blur",
    "off_mode": "(mode_stats only) fraction of samples beyond the chi2(D) 0.999 quantile of "
    "their component; lower is better, 0.001 for exact samples",
    "logp": "mean exact log p_0(x) of the samples; higher means more mass-concentrated, "
    "exact samples give minus the data entropy",
    "class_acc": "fraction of samples whose exact posterior argmax class is their label; "
    "higher is better, the Bayes accuracy for exact samples",
    "n": "number of samples",
    "forget_mass": "(score forgetting) fraction of samples asked for the forgotten class that "
    "the exact posterior assigns to it; lower is better, 0 ideal",
    "forget_to_safe": "(score forgetting) fraction of those assigned to the safe class; 1 ideal",
    "retain_acc": "(score forgetting) class accuracy on the other labels; the teacher's Bayes "
    "accuracy is ideal",
}
