"""``--dry-run``'s network report on the exact testbeds (``runs.dry_run``): memory by hand, and
the consistency family's counts against the networks its run builds."""

from __future__ import annotations

import pytest
from torch import nn

from scoredistill.runs.dry_run import network_report


def test_memory_is_four_copies_of_what_trains_and_one_of_what_is_frozen():
    trunk, head = nn.Linear(10, 20), nn.Linear(20, 1)  # 220 and 21 parameters
    trunk.requires_grad_(False)
    report = network_report({"critic": nn.Sequential(trunk, head)}, {"ema (frozen)": 1000})
    assert report["params"] == {"teacher (exact mixture)": 0, "critic": 241, "ema (frozen)": 1000}
    mib = report["weights_and_optimizer_MiB"]
    assert mib["critic"] == pytest.approx(4 * (4 * 21 + 220) / 2**20, abs=1e-3)
    assert mib["ema (frozen)"] == pytest.approx(4 * 1000 / 2**20, abs=1e-3)
    assert mib["total"] == pytest.approx(mib["critic"] + mib["ema (frozen)"], abs=1e-3)


@pytest.mark.parametrize(
    ("preset", "critic"), [("scm-ring8", False), ("rcm-ring8", True), ("sana-sprint-ring8", True)]
)
def test_consistency_dry_run_counts_the_networks_the_run_builds(preset, critic):
    from scoredistill.runs.consistency import _build_critic, _build_student, param_report, resolve
    from scoredistill.teachers.testbeds import get_testbed
    from scoredistill.teachers.trigflow import mixture_sigma_data

    cfg, objective = resolve(preset, ["critic.init_steps=2", "critic.init_batch=16"])
    report = param_report(cfg, objective)
    testbed = get_testbed("ring8")
    student = _build_student(cfg, testbed, mixture_sigma_data(testbed.truth))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert report["params"]["student"] == count(student)
    assert report["params"].get("student EMA (frozen)") == count(student)  # the presets keep an EMA
    assert ("critic" in report["params"]) == critic
    if critic:
        built, _ = _build_critic(cfg, testbed, objective)  # after its (2-step) DSM fit
        assert report["params"]["critic"] == count(built)
        grad = sum(p.numel() for p in built.parameters() if p.requires_grad)
        frozen_trunk = preset.startswith("sana")  # SANA-Sprint: only the head trains
        assert (grad < count(built)) == frozen_trunk
        mib = 4 * (4 * grad + count(built) - grad) / 2**20
        assert report["weights_and_optimizer_MiB"]["critic"] == pytest.approx(mib, abs=1e-3)
