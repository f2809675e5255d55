"""DisWOT: training-free student search by teacher–student similarity at initialisation.

Dong, Li and Wei, CVPR 2023 ("DisWOT: Student Architecture Search for Distillation WithOut
Training", README "Core Code"; reference/knowledge_distillation.md, method 10 and d.2 item 10).
Each candidate student is scored at random initialisation on **one batch** against the trained
teacher::

    relation:  G = row-normalise(f fᵀ)  (B×B),  d_rel = ‖G_t − G_s‖²_F / B²
    semantic:  E = row-normalise(g gᵀ)  (C×C),  d_sem = ‖E_t − E_s‖²_F / C²
    score = −(d_rel + d_sem)                                   (higher is better)

with ``f`` the penultimate features (the MLP's ``body``, captured by a forward hook) and ``g``
the gradient of the classifier weight (``head.weight.grad``, ``(C, D)``) after a
cross-entropy backward. [R] The README's semantic term compares Grad-CAM-like class×channel maps;
for MLPs (no spatial dim) we compare their class–class Gram matrices, whose size does not depend
on the student's width. Candidates are then trained with KD and the rank correlation between
score and accuracy is compared with the parameter count as a proxy.

The search: regularised evolution (:mod:`scoredistill.kd.evolution`) maximises the score over
MLP widths {8, …, 128} × depths 1–3 under a parameter budget, scoring ``search_population +
search_cycles`` candidates at init. The pick is trained with the same KD budget and compared
with the largest-parameter architecture in the same budget (what a params-only search returns).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import LearningRate, NonNegativeInt, PositiveFloat, PositiveInt, Seed, UnitFloat
from ...kd.evolution import MLPSpace, evolve
from ...kd.flops import mlp_params
from ...kd.losses import kd_loss
from ...kd.models import MLP
from ...kd.tasks import load_task
from ...train.kd import FeatureHooks, KDBatch
from .proc_common import class_scores, fit, seeded, spearman, sub_rng

__all__ = [
    "DisWOTConfig",
    "diswot_score",
    "networks",
    "procedure",
    "report",
    "run_diswot",
    "search_student",
]

# the note's space: MLP widths 8-128, depths 1-3
CANDIDATES: tuple[tuple[int, ...], ...] = (
    (8,),
    (16,),
    (32,),
    (64,),
    (128,),
    (8, 8),
    (16, 16),
    (64, 64),
    (128, 32),
    (8, 8, 8),
    (32, 32, 32),
    (128, 64, 32),
)


@dataclass(frozen=True)
class DisWOTConfig:
    """Scoring and the short KD training used to check the ranking."""

    task: str = "digits"
    batch: PositiveInt = 64  # one batch at initialisation (paper: one batch)
    teacher_widths: tuple[int, ...] = (256, 256)
    teacher_steps: PositiveInt = 1000
    teacher_lr: LearningRate = 1e-3
    steps: PositiveInt = 300  # KD steps per candidate (~30 epochs of 1257 digits at batch 128)
    lr: LearningRate = 1e-2
    temperature: PositiveFloat = 4.0
    alpha: UnitFloat = 0.5  # label-CE weight in the candidates' KD
    n_candidates: PositiveInt = 12  # first n of CANDIDATES
    param_budget: PositiveInt = 5000  # search: student parameters (the teacher has 85k)
    search_widths: tuple[int, ...] = (8, 16, 24, 32, 48, 64, 96, 128)  # per hidden layer
    search_max_depth: PositiveInt = 3  # hidden layers 1..max
    search_population: PositiveInt = 10  # regularised evolution P (Real et al.: 100)
    search_cycles: NonNegativeInt = 40  # C: P + C = 50 candidates scored
    search_tournament: PositiveInt = 3  # S drawn per parent (Real et al.: 25 of 100)
    seed: Seed = 0
    data_seed: Seed = 0


def _gram(a: Tensor) -> Tensor:
    """Row-normalised Gram matrix ``normalize(a aᵀ)``: ``(N, D) -> (N, N)``."""
    return F.normalize(a @ a.T, dim=1)


def _probe(model: MLP, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Penultimate features ``(B, D)`` and ``head.weight`` gradient ``(C, D)`` of CE on (x, y)."""
    model.zero_grad(set_to_none=True)
    with FeatureHooks(model, ["body"]) as hooks:
        F.cross_entropy(model(x), y).backward()
    grad = model.head.weight.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return hooks["body"].detach().flatten(1), grad


def diswot_score(student: MLP, teacher: MLP, x: Tensor, y: Tensor) -> dict[str, float]:
    """``score = −(d_rel + d_sem)`` of ``student`` against ``teacher`` on ``x (B, D)``, ``y (B,)``."""
    f_s, g_s = _probe(student, x, y)
    f_t, g_t = _probe(teacher, x, y)
    b, c = len(x), g_s.shape[0]
    d_rel = float((_gram(f_t) - _gram(f_s)).pow(2).sum()) / b**2
    d_sem = float((_gram(g_t) - _gram(g_s)).pow(2).sum()) / c**2
    return {"score": -(d_rel + d_sem), "d_rel": d_rel, "d_sem": d_sem}


def _candidate(widths: tuple[int, ...], dim: int, classes: int, rng: torch.Generator) -> MLP:
    with seeded(rng):
        return MLP(dim, widths, classes)


def _in_budget(cfg: DisWOTConfig, dim: int, classes: int) -> dict[tuple[int, ...], int]:
    """The search space's architectures within ``param_budget`` -> their parameter counts."""
    space = MLPSpace(cfg.search_widths, cfg.search_max_depth)
    size = {a: mlp_params(dim, a, classes) for a in space}
    return {a: n for a, n in size.items() if n <= cfg.param_budget}


def networks(cfg: DisWOTConfig) -> dict[str, Any]:
    """``--dry-run``: the teacher (trained first, then frozen: 1 fp32 copy) and the largest
    student the run KD-trains (4 copies; the students train one at a time): the largest of the
    first ``n_candidates`` candidates and of the search space within ``param_budget`` (the
    params-only pick, no smaller than the search's own), built untrained by :func:`_candidate`.
    The search scores its candidates at initialisation (no optimizer): they are not listed."""
    from ..dry_run import network_report

    task = load_task(cfg.task, seed=cfg.data_seed)
    dim, classes = task.dim, task.num_classes
    rng = torch.Generator().manual_seed(cfg.seed)
    teacher = _candidate(cfg.teacher_widths, dim, classes, rng)
    sizes = {a: mlp_params(dim, a, classes) for a in CANDIDATES[: cfg.n_candidates]}
    sizes |= _in_budget(cfg, dim, classes)
    widths = max(sizes, key=lambda a: (sizes[a], a))
    student = {f"student (largest, MLP{widths})": _candidate(widths, dim, classes, rng)}
    return network_report(student, {"teacher (frozen)": teacher}, exact_teacher=False)


def search_student(
    cfg: DisWOTConfig, teacher: MLP, x: Tensor, y: Tensor, classes: int, rng: torch.Generator
) -> dict[str, Any]:
    """Evolve the DisWOT score on one batch ``x (B, D)``, ``y (B,)`` under ``param_budget``.

    Returns the pick, the params-only pick (largest in budget) and the search's cost.
    """
    space = MLPSpace(cfg.search_widths, cfg.search_max_depth)
    size = {a: mlp_params(x.shape[1], a, classes) for a in space}
    fits = set(_in_budget(cfg, x.shape[1], classes))
    if not fits:
        raise ValueError(
            f"param_budget={cfg.param_budget} admits no architecture; the smallest of the "
            f"space has {min(size.values())} parameters"
        )

    teacher = copy.deepcopy(teacher).requires_grad_(True)  # KD froze it; d_sem needs its grad

    def score(widths: tuple[int, ...]) -> float:
        return diswot_score(_candidate(widths, x.shape[1], classes, rng), teacher, x, y)["score"]

    t0 = time.perf_counter()
    found = evolve(
        score, space, fits.__contains__, population=cfg.search_population,
        cycles=cfg.search_cycles, tournament=cfg.search_tournament, rng=rng,
    )  # fmt: skip
    search_s = time.perf_counter() - t0
    by_params = max(fits, key=lambda a: (size[a], a))  # ties: the wider first layer
    return {
        "search_s": search_s,
        "search_evaluated": found.evaluated,
        "search_widths": list(found.best),
        "search_params": size[found.best],
        "search_score": found.best_score,
        "baseline_search_widths": list(by_params),
        "baseline_search_params": size[by_params],
    }


def run_diswot(cfg: DisWOTConfig) -> dict[str, Any]:
    """Score every candidate at init, KD-train each and correlate ranks; then search and train."""
    task = load_task(cfg.task, seed=cfg.data_seed)
    x, y = task.x_train, task.y_train
    rng = torch.Generator().manual_seed(cfg.seed)
    teacher = fit(
        _candidate(cfg.teacher_widths, task.dim, task.num_classes, rng),
        x, y, steps=cfg.teacher_steps, lr=cfg.teacher_lr, seed=cfg.seed,
    )  # fmt: skip
    rows = torch.randperm(len(x), generator=rng)[: cfg.batch]
    t0, candidates = time.perf_counter(), []
    for widths in CANDIDATES[: cfg.n_candidates]:
        model = _candidate(widths, task.dim, task.num_classes, rng)
        params = sum(p.numel() for p in model.parameters())
        candidates.append({"widths": list(widths), "params": params, "model": model})
        candidates[-1] |= diswot_score(model, teacher, x[rows], y[rows])
    score_s = time.perf_counter() - t0

    def loss(b: KDBatch) -> Tensor:
        ce = F.cross_entropy(b.student_logits, b.labels)
        return cfg.alpha * ce + (1 - cfg.alpha) * kd_loss(
            b.student_logits, b.teacher_logits, cfg.temperature
        )

    with torch.no_grad():
        t_pred = teacher(task.x_test).argmax(-1)

    def kd_accuracy(model: nn.Module) -> float:
        fit(model, x, y, steps=cfg.steps, lr=cfg.lr, seed=cfg.seed, loss_fn=loss, teacher=teacher)
        return class_scores(model, task.x_test, task.y_test, t_pred)["accuracy"]

    for c in candidates:
        c["accuracy"] = kd_accuracy(c.pop("model"))
    # drawn after the ranking study, so its numbers do not depend on the search settings
    search_rng = sub_rng(rng)
    search = search_student(cfg, teacher, x[rows], y[rows], task.num_classes, search_rng)
    for key in ("search", "baseline_search"):
        model = _candidate(tuple(search[f"{key}_widths"]), task.dim, task.num_classes, search_rng)
        search[f"{key}_accuracy"] = kd_accuracy(model)
    return {"candidates": candidates, "score_s": score_s} | search


def _summary(raw: dict[str, Any]) -> dict[str, Any]:
    cands = raw["candidates"]
    acc = [c["accuracy"] for c in cands]
    best = max(acc)
    by_score = max(cands, key=lambda c: c["score"])
    by_params = max(cands, key=lambda c: c["params"])
    return {
        "spearman": spearman([c["score"] for c in cands], acc),
        "baseline_spearman": spearman([c["params"] for c in cands], acc),  # params as proxy
        "spearman_d_rel": spearman([-c["d_rel"] for c in cands], acc),
        "spearman_d_sem": spearman([-c["d_sem"] for c in cands], acc),
        "regret": best - by_score["accuracy"],  # best accuracy minus the top-scored one's
        "baseline_regret": best - by_params["accuracy"],
        "best_accuracy": best,
        **raw,
    }


def procedure(cfg: DisWOTConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """Run-folder entry point (short: ``resume`` recomputes)."""
    del out, resume
    t0 = time.perf_counter()
    m = _summary(run_diswot(cfg))
    m["train_s"] = time.perf_counter() - t0
    return m


def report(cfg: DisWOTConfig, m: dict[str, Any]) -> str:
    """Markdown table: candidates by score, with their KD accuracy."""
    lines = [
        f"# DisWOT on {cfg.task}",
        "",
        f"Spearman ρ(score, KD accuracy) = {m['spearman']:.3f} (parameter count: "
        f"{m['baseline_spearman']:.3f}); scoring {len(m['candidates'])} candidates took "
        f"{m['score_s']:.2f} s; {cfg.steps} KD steps each (T = {cfg.temperature}).",
        "",
        f"Evolutionary search ({m['search_evaluated']} candidates scored in {m['search_s']:.2f} s, "
        f"≤ {cfg.param_budget} parameters): {m['search_widths']} ({m['search_params']} params), "
        f"KD accuracy {m['search_accuracy']:.4f}; largest in budget "
        f"{m['baseline_search_widths']} ({m['baseline_search_params']} params): "
        f"{m['baseline_search_accuracy']:.4f}.",
        "",
        "| widths | params | score | d_rel | d_sem | KD accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in sorted(m["candidates"], key=lambda c: -c["score"]):
        lines.append(
            f"| {c['widths']} | {c['params']} | {c['score']:.4f} | {c['d_rel']:.4f} | "
            f"{c['d_sem']:.4f} | {c['accuracy']:.4f} |"
        )
    return "\n".join(lines) + "\n"
