"""``benchmarks/paired_draws.py``: the teacher's cell is chosen per metric on the selection draws
only, and the paired differences and their standard errors are those of the draws compared."""

from __future__ import annotations

import statistics

import pytest


@pytest.fixture(scope="module")
def paired(bench):
    return bench("paired_draws")


def _m(local: float, mmd: float, sw2: float) -> dict:
    return {"mmd_local": local, "mmd": mmd, "sw2": sw2}


def test_best_cell_is_chosen_per_metric_on_the_selection_draws_only(paired):
    cells = {
        # a: best on draws 0-1 for mmd, lucky on draw 2 for everything
        "a": [_m(0.5, 0.1, 0.5), _m(0.5, 0.1, 0.5), _m(0.0, 0.0, 0.0)],
        "b": [_m(0.1, 0.3, 0.2), _m(0.1, 0.3, 0.2), _m(0.9, 0.9, 0.9)],
    }
    assert paired._best_cells(cells, range(2)) == {"mmd_local": "b", "mmd": "a", "sw2": "b"}
    assert paired._best_cells(cells, range(3)) == {"mmd_local": "a", "mmd": "a", "sw2": "a"}


def test_summary_pairs_each_draw_with_its_own_teacher_value(paired):
    student = [0.30, 0.10, 0.20]
    teacher = [0.25, 0.15, 0.10]
    exact = [0.20, 0.12, 0.14]
    draws = [
        {
            "student": _m(s, s, s),
            "teacher": {k: {"value": t, "cell": "c"} for k in ("mmd_local", "mmd", "sw2")},
            "exact": _m(e, e, e),
        }
        for s, t, e in zip(student, teacher, exact, strict=True)
    ]
    out = paired._summary(draws)["sw2"]
    diff = [s - t for s, t in zip(student, teacher, strict=True)]  # 0.05, -0.05, 0.10
    assert out["diff_mean"] == pytest.approx(statistics.fmean(diff))
    assert out["diff_se"] == pytest.approx(statistics.stdev(diff) / 3**0.5)
    assert out["draws_below"] == 1
    assert out["exact_diff_mean"] == pytest.approx((-0.05 - 0.03 + 0.04) / 3)
    assert out["exact_mean"] == pytest.approx(statistics.fmean(exact))
    assert out["exact_std"] == pytest.approx(statistics.stdev(exact))


def test_table_calls_a_difference_only_when_two_standard_errors_from_zero(bench):
    table = bench("paired_table")
    assert table.verdict(-0.02, 0.01) == "below"
    assert table.verdict(0.021, 0.01) == "above"
    assert table.verdict(-0.019, 0.01) == "level"
    assert table.verdict(0.0, 0.0) == "level"
    assert table.verdict(0.1, 0.0) == "above"
    draws = [
        {
            "student": _m(s, s, s),
            "teacher": {k: {"value": 0.5, "cell": "c"} for k in ("mmd_local", "mmd", "sw2")},
            "exact": _m(0.5, 0.5, 0.5),
        }
        for s in (0.1, 0.2, 0.3)
    ]
    lines = table.rows({"run": "r", "select": 0, "draws": draws})
    assert len(lines) == 3
    # student - teacher: -0.4, -0.3, -0.2 (se 0.058); exact - teacher 0; student - exact as s - t
    assert lines[0] == (
        "| r | same 3 | mmd_local | -0.3 ± 0.06 below (3/3) | +0 ± 0 level | -0.3 ± 0.06 below |"
    )


def test_a_consistency_run_needs_its_step_count(paired, tmp_path):
    (tmp_path / "config.json").write_text('{"method": "rcm", "student": {"hidden": 64}}')
    with pytest.raises(SystemExit, match="consistency run: give --steps"):
        paired.load(tmp_path, None)


def test_consistency_sampler_draws_labels_then_noise_from_the_given_generator(paired):
    import torch

    from scoredistill.eval.baseline import draw_labels
    from scoredistill.teachers.testbeds import get_testbed

    class Echo:  # a student whose k-step sample is its noise scaled by k
        def sample(self, z, labels, *, steps, rng):
            return z * steps

    testbed = get_testbed("cond2d")
    x, labels = paired._consistency_sampler(Echo(), testbed, 3)(
        50, torch.Generator().manual_seed(4)
    )
    rng = torch.Generator().manual_seed(4)
    want_labels = draw_labels(testbed, 50, rng)
    assert torch.equal(labels, want_labels)
    assert torch.equal(x, 3 * torch.randn(50, testbed.dim, generator=rng))


def test_shape_means_are_the_student_and_exact_means_of_the_keys_every_draw_holds(paired):
    draws = [
        {
            "student": {"spread_ratio": 0.8, "logp": 1.5},
            "exact": {"spread_ratio": 1.0, "logp": 1.0},
        },
        {
            "student": {"spread_ratio": 0.6, "logp": 1.3},
            "exact": {"spread_ratio": 1.1, "logp": 0.9},
        },
    ]
    draws[1]["student"]["within_3std"] = 0.9  # held by one draw only: left out
    out = paired.shape_means(draws)
    assert set(out) == {"spread_ratio", "logp"}
    assert out["spread_ratio"] == pytest.approx((0.7, 1.05))
    assert out["logp"] == pytest.approx((1.4, 0.95))
