"""The KD benchmark's claim machinery: derived metrics and claims against another preset."""

from __future__ import annotations

import pytest

from scoredistill.bench.kd import EXPECTED, _claims, verdict, with_derived


def test_derived_metrics_from_a_run() -> None:
    fed = with_derived({"accuracy": 0.41, "uniform_accuracy": 0.91})
    assert fed["fed_gap"] == pytest.approx(0.5)
    sweep = with_derived({"gain_w8": 0.03, "gain_w32": 0.5, "gain_w128": 0.01})
    assert sweep["gain_small_minus_large"] == pytest.approx(0.02)  # width 8 minus width 128
    assert "gain_small_minus_large" not in with_derived({"gain_w8": 0.03})  # one width: none
    assert with_derived({"accuracy": 0.9}) == {"accuracy": 0.9}


def test_cross_preset_claim_pairs_runs_by_seed() -> None:
    # online BD-KD's ECE against DML's, seed by seed: 3 paired differences of -0.02 ± 0.001
    bdkd = [{"ece": e, "accuracy": 0.6} for e in (0.080, 0.081, 0.079)]
    dml = [{"ece": e, "accuracy": 0.6} for e in (0.100, 0.100, 0.100)]
    out = _claims("bdkd-online-classification", bdkd, {"dml-online-classification": dml})
    ece = out[0]
    assert ece["diff_mean"] == pytest.approx(-0.02) and ece["verdict"] == "holds"
    assert out[1]["verdict"] == "holds"  # equal accuracy is "not worse"
    swapped = _claims("bdkd-online-classification", dml, {"dml-online-classification": bdkd})
    assert swapped[0]["verdict"] == "does not hold here"
    missing = _claims("bdkd-online-classification", bdkd, {})
    assert missing[0]["verdict"] == "not measured"


def test_constant_claims_and_the_verdict_rule() -> None:
    # EdgeFD's "> 90 % rejected": 0.95 ± small holds, 0.5 does not
    claim = EXPECTED["edgefd-digits"][0]
    assert claim.metric == "ood_rejection" and claim.against == 0.9
    assert verdict([0.05, 0.06, 0.04], ">") == "holds"
    assert verdict([-0.4, -0.3, -0.5], ">") == "does not hold here"
    assert verdict([0.1, -0.1, 0.05], "~") == "holds"
    assert verdict([0.1], ">") == "n/a (1 seed)"
