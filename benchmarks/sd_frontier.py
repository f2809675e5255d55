"""One-step text-to-image students against the teacher's FD–accuracy front, at a larger n.

Issue 12's target is "a one-step student below the teacher's best 4-NFE FD *at equal prompt
accuracy*". A run's own teacher rows are at the student's guidance scale, where the teacher
reads its prompts less well (κ = 1.25: 0.88–0.93 against the student's 0.975), and at n = 256,
where FD moves by ±8 between evaluations. This script samples the teacher over guidance scales
× every sampler × grid × NFE (``eval.image_baseline.image_rows``, the run family's own rows) at
``--n`` samples, re-draws each finished run's EMA student (its last checkpoint) at the same n,
and compares each student with the teacher's best row within each NFE budget **whose prompt
accuracy is at least the student's** (``best_at_accuracy``). FD is computed against the 450
held-out digits (``fd``, the runs' metric) and against all 1797 (``fd_all``: a 4× larger
reference that includes the teacher's training images)::

    OMP_NUM_THREADS=1 python benchmarks/sd_frontier.py runs/sd2-sidlsg-k125-s{0,1,2} \\
        --n 1000 --cache runs/s30/sd_frontier_teacher.json --json runs/s30/sd_frontier.json \\
        --plot runs/s30/sd_frontier.png

Teacher rows are cached in ``--cache`` (keyed by guidance, n, seed, NFEs and samplers) so more
runs can be scored later without re-sampling the teacher. Every run must share one teacher and
prompt list (that of the first run, or ``--teacher-run``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from scoredistill.config import from_dict
from scoredistill.data import load_digits_images
from scoredistill.eval.features import image_metrics
from scoredistill.eval.image_baseline import accuracy_front, best_at_accuracy, image_rows
from scoredistill.runs.sd import (
    SDDistillConfig,
    _Guided,
    build_players,
    load_teacher,
    scorable_digits,
)
from scoredistill.runs.unet import student_draw
from scoredistill.train.common import latest_checkpoint, module_state

KEEP = ("fd", "precision", "recall", "class_acc", "n", "n_ref")


def run_config(run: Path) -> SDDistillConfig:
    data = json.loads((run / "config.json").read_text())
    data.pop("preset", None)
    return from_dict(SDDistillConfig, data)


def make_scorer(teacher: Any):
    """``score(teacher, z, labels, seed)``: decoded latents against the held-out digits and
    against all digits (``*_all``)."""
    digits = scorable_digits(teacher)
    if digits is None:
        raise SystemExit("the teacher's decoded images are not 8×8 digits named by the prompts")
    everything = load_digits_images("all").x

    def score(_t: Any, z: torch.Tensor, labels: torch.Tensor | None, seed: int) -> dict:
        with torch.no_grad():
            images = teacher.decode(z)
        y = None if labels is None else digits[labels.clamp(min=0)]
        held = image_metrics(images, y, seed=seed)
        full = image_metrics(images, y, reference=everything, seed=seed)
        out = {k: held[k] for k in KEEP if k in held}
        out.update({f"{k}_all": full[k] for k in ("fd", "precision", "recall", "n_ref")})
        return out

    return score


def teacher_front_rows(cfg: SDDistillConfig, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows for every guidance scale, from ``--cache`` where already sampled."""
    cache = json.loads(args.cache.read_text()) if args.cache and args.cache.exists() else {}
    teacher = load_teacher(cfg)
    score = make_scorer(teacher)
    rows: list[dict[str, Any]] = []
    for w in args.guidance:
        key = json.dumps([w, args.n, args.seed, args.nfe, args.samplers, cfg.teacher, cfg.prompts])
        if key not in cache:
            found = image_rows(
                _Guided(teacher, w), args.samplers, args.nfe, args.n, args.seed, score
            )
            cache[key] = [{**r, "guidance": w} for r in found]
            if args.cache:
                args.cache.parent.mkdir(parents=True, exist_ok=True)
                args.cache.write_text(json.dumps(cache, indent=1))
        rows.extend(cache[key])
    return rows


def student_row(run: Path, args: argparse.Namespace, reference: SDDistillConfig) -> dict:
    """The run's EMA student at its last checkpoint, re-drawn at ``--n`` samples."""
    cfg = run_config(run)
    if (cfg.teacher, cfg.prompts) != (reference.teacher, reference.prompts):
        raise SystemExit(f"{run}: another teacher or prompt list than the front's")
    ckpt = latest_checkpoint(run / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{run}: no complete checkpoint under checkpoints/")
    teacher = load_teacher(cfg)  # a fresh base: LoRA players add adapters to it
    ema, _ = build_players(cfg, teacher)  # a fresh student, given the run's EMA weights
    ema.load_state_dict(module_state(ckpt, "ema"))
    z, labels, _ = student_draw(ema, teacher, args.n, args.seed)
    row = make_scorer(teacher)(teacher, z, labels, args.seed)
    return {"run": str(run), "checkpoint": ckpt.name, "nfe": cfg.student.steps, **row}


def compare(students: list[dict], rows: list[dict], budgets: list[int]) -> None:
    for s in students:
        s["teacher_at_accuracy"] = {}
        for b in budgets:
            best = best_at_accuracy(rows, b, s["class_acc"])
            s["teacher_at_accuracy"][str(b)] = best
            if best is not None:
                s.setdefault("delta_fd", {})[str(b)] = s["fd"] - best["fd"]
                s.setdefault("delta_fd_all", {})[str(b)] = s["fd_all"] - best["fd_all"]


def print_tables(students: list[dict], rows: list[dict], budgets: list[int]) -> None:
    print("\n| run | FD | FD (all) | prompt acc. | recall | "
          + " | ".join(f"teacher ≤ {b} NFE at ≥ acc: FD, FD (all) (CFG, sampler, grid, acc.)"
                       for b in budgets) + " |")  # fmt: skip
    print("|---|---:|---:|---:|---:|" + "---|" * len(budgets))
    for s in students:
        cells = []
        for b in budgets:
            t = s["teacher_at_accuracy"][str(b)]
            cells.append("none as accurate" if t is None else
                         f"{t['fd']:.1f}, {t['fd_all']:.1f} ({t['guidance']:g}, {t['sampler']}, "
                         f"{t['spacing']}, {t['class_acc']:.3f})")  # fmt: skip
        print(
            f"| {Path(s['run']).name} | {s['fd']:.1f} | {s['fd_all']:.1f} | "
            f"{s['class_acc']:.3f} | {s['recall']:.3f} | " + " | ".join(cells) + " |"
        )
    for b in budgets:
        print(f"\nThe teacher's front within {b} NFE (accuracy ↑, FD ↓):\n")
        print("| CFG | sampler | grid | NFE | prompt acc. | FD | FD (all) | recall |")
        print("|---:|---|---|---:|---:|---:|---:|---:|")
        for r in accuracy_front(rows, b):
            print(
                f"| {r['guidance']:g} | {r['sampler']} | {r['spacing']} | {r['nfe']} | "
                f"{r['class_acc']:.3f} | {r['fd']:.1f} | {r['fd_all']:.1f} | "
                f"{r['recall']:.3f} |"
            )


def plot(students: list[dict], rows: list[dict], budgets: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for b in budgets:
        front = accuracy_front(rows, b)
        ax.step([r["class_acc"] for r in front], [r["fd"] for r in front], where="pre",
                marker="o", ms=3, label=f"teacher front ≤ {b} NFE")  # fmt: skip
    for s in students:
        ax.plot(s["class_acc"], s["fd"], "k*", ms=9)
        ax.annotate(Path(s["run"]).name, (s["class_acc"], s["fd"]), fontsize=6)
    ax.set_xlabel("prompt accuracy")
    ax.set_ylabel("FD (450 held-out digits)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("one-step students (★) against the teacher's FD–accuracy front")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--teacher-run", type=Path, default=None)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--guidance", nargs="+", type=float,
                        default=[1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0])  # fmt: skip
    parser.add_argument("--nfe", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp-2m", "heun", "euler"])
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    first = args.teacher_run or (args.runs[0] if args.runs else None)
    if first is None:
        raise SystemExit("give a run folder or --teacher-run")
    reference = run_config(first)
    rows = teacher_front_rows(reference, args)
    students = [student_row(r, args, reference) for r in args.runs]
    budgets = [b for b in args.nfe if b > 1]
    compare(students, rows, budgets)
    print_tables(students, rows, budgets)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"students": students, "teacher": rows}, indent=1))
    if args.plot:
        plot(students, rows, budgets, args.plot)


if __name__ == "__main__":
    main()
