"""The teacher's best row per NFE budget, at a prompt accuracy, and its FD–accuracy front
(``eval.image_baseline``): hand-made rows whose answers are worked out by hand, and a brute-force
check of the front's defining property on random rows."""

from __future__ import annotations

import random

from scoredistill.eval.image_baseline import accuracy_front, best_at_accuracy, best_rows


def _row(name: str, nfe: int, fd: float, acc: float) -> dict:
    return {"sampler": name, "nfe": nfe, "fd": fd, "class_acc": acc}


ROWS = [
    _row("a", 2, 90.0, 0.99),
    _row("b", 4, 40.0, 0.90),  # the lowest FD at 4 NFE, least accurate
    _row("c", 4, 55.0, 0.97),
    _row("d", 4, 70.0, 0.999),
    _row("e", 3, 60.0, 0.97),  # Heun's odd budget counts within 4
    _row("f", 8, 30.0, 1.0),
]


def test_best_rows_takes_the_minimum_within_each_budget() -> None:
    best = best_rows(ROWS, [2, 4, 8])
    assert [best[k]["sampler"] for k in ("2", "4", "8")] == ["a", "b", "f"]


def test_best_at_accuracy_meets_the_student_at_its_accuracy() -> None:
    assert best_at_accuracy(ROWS, 4, 0.0)["sampler"] == "b"
    assert best_at_accuracy(ROWS, 4, 0.95)["sampler"] == "c"  # b is too inaccurate
    assert best_at_accuracy(ROWS, 4, 0.97)["sampler"] == "c"  # ties in accuracy count
    assert best_at_accuracy(ROWS, 4, 0.98)["sampler"] == "d"
    assert best_at_accuracy(ROWS, 2, 0.995) is None  # none within 2 NFE is that accurate
    assert best_at_accuracy(ROWS, 8, 0.98)["sampler"] == "f"


def test_front_by_hand() -> None:
    assert [r["sampler"] for r in accuracy_front(ROWS, 4)] == ["b", "c", "d"]  # e is beaten by c
    assert [r["sampler"] for r in accuracy_front(ROWS, 8)] == ["f"]  # f beats every row
    assert accuracy_front(ROWS, 1) == []


def test_front_is_exactly_the_undominated_rows() -> None:
    rng = random.Random(0)
    rows = [
        _row(str(i), rng.choice([1, 2, 4]), rng.uniform(10, 100), round(rng.uniform(0.8, 1), 2))
        for i in range(200)
    ]
    for budget in (1, 2, 4):
        within = [r for r in rows if r["nfe"] <= budget]
        undominated = {
            r["sampler"]
            for r in within
            if not any(
                o is not r and o["class_acc"] >= r["class_acc"] and o["fd"] <= r["fd"]
                for o in within
            )
        }
        front = accuracy_front(rows, budget)
        assert {r["sampler"] for r in front} == undominated
        accs = [r["class_acc"] for r in front]
        fds = [r["fd"] for r in front]
        assert accs == sorted(accs) and fds == sorted(fds)  # the trade-off rises both ways
        for r in front:  # each front row is what best_at_accuracy returns at its accuracy
            assert best_at_accuracy(rows, budget, r["class_acc"]) is r


def test_sid_lsg15_preset_is_sid_lsg_at_the_papers_fid_scale() -> None:
    """``sid-lsg15-sd`` (the student measured against the front) differs from ``sid-lsg-sd``
    only in the three LSG scales, which are SiD-LSG's 1.5 (arXiv 2406.01561)."""
    from scoredistill.config import to_dict
    from scoredistill.runs.sd import resolve_sd

    base = to_dict(resolve_sd("sid-lsg-sd", [])[0])
    lsg15 = to_dict(resolve_sd("sid-lsg15-sd", [])[0])
    scales = ("guidance", "guidance_fake", "guidance_critic")
    assert [base["objective"][k] for k in scales] == [2.0, 2.0, 2.0]
    assert [lsg15["objective"][k] for k in scales] == [1.5, 1.5, 1.5]
    for k in scales:
        lsg15["objective"][k] = 2.0
    base.pop("preset", None)
    lsg15.pop("preset", None)
    assert lsg15 == base
