"""AutoDistil-style few-shot weight-sharing search of MLP students, trained with KD.

Xu et al., NeurIPS 2022 ("AutoDistil: Few-shot Task-agnostic Neural Architecture Search for
Distilling Large Language Models"); reference/knowledge_distillation.md, method 11 and d.2
item 11, scaled down to MLPs on digits:

1. a **SuperMLP** (widths ``W`` × depths ``D``); a sub-network ``(w, d)`` uses the first ``d``
   hidden layers, the first ``w`` units of each, and the matching columns of the head (weight
   sharing by slicing);
2. **few-shot**: ``K`` supernets, one per depth (K = 2) — or one for every sub-network (K = 1);
3. **sandwich training** from the teacher: each step sums the distillation loss of the largest,
   the smallest and ``n_random`` random sub-networks of a supernet. ``objective="kd"``: logit
   KD, ``T²·KL``. ``objective="relation"``: the MiniLM-style relation loss of
   :func:`relation_loss` on the last hidden features;
4. **search without retraining**: rank sub-networks by a proxy on a validation split (``kd``:
   inherited-weight accuracy; ``relation``: minus the relation loss, AutoDistil's "rank by the
   distillation loss on held-out data") and pick the best one whose FLOPs
   (:mod:`scoredistill.kd.flops`, per example) are within ``flops_budget``.

The check: Kendall τ between the proxy ranking and sub-networks trained alone with the same KD
loss, and the chosen sub-network's stand-alone accuracy against the best one in budget.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import LearningRate, NonNegativeInt, OpenUnitFloat, PositiveFloat, PositiveInt, Seed
from ...kd.flops import mlp_flops, mlp_params
from ...kd.losses import kd_loss
from ...kd.models import MLP
from ...kd.tasks import load_task
from .proc_common import fit, seeded

__all__ = [
    "AutoDistilConfig",
    "SuperMLP",
    "kendall_tau",
    "networks",
    "procedure",
    "relation_loss",
    "report",
    "run_autodistil",
    "subnet_flops",
]

Arch = tuple[int, int]  # (width, depth)


@dataclass(frozen=True)
class AutoDistilConfig:
    """Note d.2 item 11: widths {16, 32, 64, 128} × depths {1, 2}, K = 2 vs K = 1."""

    task: str = "digits"
    widths: tuple[int, ...] = (16, 32, 64, 128)
    depths: tuple[int, ...] = (1, 2)
    shots: PositiveInt = 2  # K supernets (one per depth when K = len(depths)); compared with K = 1
    n_random: NonNegativeInt = 2  # random sub-networks per sandwich step
    super_steps: PositiveInt = 400  # per supernet
    standalone_steps: PositiveInt = 300  # per sub-network trained alone
    flops_budget: PositiveInt = (
        20_000  # per-example FLOPs (2·MACs); the largest sub-network: 51,712
    )
    objective: Literal["kd", "relation"] = "kd"  # supernet distillation loss (and its proxy)
    val_fraction: OpenUnitFloat = 0.2  # of the training split, for the proxy ranking
    temperature: PositiveFloat = 4.0
    lr: LearningRate = 1e-2
    teacher_widths: tuple[int, ...] = (256, 256)
    teacher_steps: PositiveInt = 1000
    teacher_lr: LearningRate = 1e-3
    seed: Seed = 0
    data_seed: Seed = 0


class SuperMLP(nn.Module):
    """Weight-sharing MLP: ``forward(x, (w, d))`` runs the sliced sub-network ``(B, D) -> (B, C)``."""

    def __init__(self, in_dim: int, max_width: int, max_depth: int, classes: int) -> None:
        super().__init__()
        dims = [in_dim] + [max_width] * max_depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.head = nn.Linear(max_width, classes)

    def features(self, x: Tensor, arch: Arch) -> Tensor:
        """Last hidden features ``(B, width)`` of sub-network ``arch = (width, depth)``."""
        width, depth = arch
        h = x
        for i, layer in enumerate(self.layers[:depth]):
            cols = h.shape[1] if i == 0 else width
            h = F.relu(F.linear(h, layer.weight[:width, :cols], layer.bias[:width]))
        return h

    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        """Logits of sub-network ``arch = (width, depth)``."""
        return F.linear(self.features(x, arch), self.head.weight[:, : arch[0]], self.head.bias)


def subnet_flops(in_dim: int, arch: Arch, classes: int) -> int:
    """Per-example FLOPs of sub-network ``arch``: those of the plain ``MLP`` it slices."""
    return mlp_flops(in_dim, (arch[0],) * arch[1], classes)


def relation_loss(h_s: Tensor, h_t: Tensor) -> Tensor:
    """MiniLM-style relation distillation over the batch: ``h_s (B, D_s)``, ``h_t (B, D_t)``.

    ``R = softmax_row(H Hᵀ / √D)`` (``B × B``) for each network; the loss is
    ``KL(R_t ‖ R_s)`` summed over a row and averaged over the ``B`` rows; 0 iff the relations
    agree. [R] MiniLM (Wang et al., 2020) and AutoDistil distil the last layer's self-attention
    and value relations, ``softmax(QKᵀ/√d)`` and ``softmax(VVᵀ/√d)`` over a sequence's tokens.
    An MLP has no tokens or attention, so the batch plays the sequence and the last hidden
    features play the values; as there, the ``B × B`` relation does not depend on the student's
    width, so no projection to the teacher's width is learned.
    """
    log_r_s = (h_s @ h_s.T / math.sqrt(h_s.shape[1])).log_softmax(-1)
    log_r_t = (h_t @ h_t.T / math.sqrt(h_t.shape[1])).log_softmax(-1)
    return F.kl_div(log_r_s, log_r_t, reduction="batchmean", log_target=True)


def n_params(in_dim: int, arch: Arch, classes: int) -> int:
    """Parameters of the stand-alone MLP for ``arch``."""
    return mlp_params(in_dim, (arch[0],) * arch[1], classes)


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall τ-a between two score lists (ties count as neither concordant nor discordant)."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    s = sum(
        (1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
        for i, j in pairs
    )
    return s / max(len(pairs), 1)


def _distill(net: SuperMLP, arch: Arch, x: Tensor, target: Tensor, cfg: AutoDistilConfig) -> Tensor:
    """Supernet loss of ``arch`` on ``x (B, D)``; ``target``: teacher logits (kd) or features."""
    if cfg.objective == "relation":
        return relation_loss(net.features(x, arch), target)
    return kd_loss(net(x, arch), target, cfg.temperature)


def _sandwich(
    net: SuperMLP,
    archs: list[Arch],
    target: Tensor,
    x: Tensor,
    cfg: AutoDistilConfig,
    rng: torch.Generator,
) -> None:
    """Sandwich training of one supernet over its ``archs`` (sorted small → large)."""
    opt = torch.optim.Adam(net.parameters(), cfg.lr)
    for _ in range(cfg.super_steps):
        idx = torch.randint(len(x), (128,), generator=rng)
        picks = [archs[0], archs[-1]] + [
            archs[int(torch.randint(len(archs), (1,), generator=rng))] for _ in range(cfg.n_random)
        ]
        loss = sum(_distill(net, a, x[idx], target[idx], cfg) for a in picks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def _proxy(
    nets: dict[Arch, SuperMLP], x: Tensor, y: Tensor, target: Tensor, cfg: AutoDistilConfig
) -> dict[Arch, float]:
    """Validation proxy, higher is better: accuracy (kd) or minus the relation loss."""
    if cfg.objective == "relation":
        return {a: -float(_distill(net, a, x, target, cfg)) for a, net in nets.items()}
    return {a: float((net(x, a).argmax(-1) == y).float().mean()) for a, net in nets.items()}


def _archs(cfg: AutoDistilConfig) -> list[Arch]:
    """Every ``(width, depth)``, by depth then width."""
    return sorted(itertools.product(cfg.widths, cfg.depths), key=lambda a: (a[1], a[0]))


def _groups(cfg: AutoDistilConfig, shots: int) -> list[list[Arch]]:
    """The sub-networks of each supernet: all in one (``shots = 1``), else one per depth."""
    archs = _archs(cfg)
    return [archs] if shots == 1 else [[a for a in archs if a[1] == d] for d in cfg.depths]


def _supernet(
    cfg: AutoDistilConfig, group: list[Arch], dims: tuple[int, int], rng: torch.Generator
) -> SuperMLP:
    """An untrained supernet wide and deep enough for every ``(width, depth)`` of ``group``."""
    with seeded(rng):
        return SuperMLP(dims[0], max(cfg.widths), max(a[1] for a in group), dims[1])


def _supernets(
    cfg: AutoDistilConfig, shots: int, dims: tuple[int, int], target: Tensor, x: Tensor, seed: int
) -> dict[Arch, SuperMLP]:
    """Train ``shots`` supernets (1: shared by all; else one per depth); arch -> its supernet."""
    rng, out = torch.Generator().manual_seed(seed), {}
    for group in _groups(cfg, shots):
        net = _supernet(cfg, group, dims, rng)
        _sandwich(
            net, sorted(group, key=lambda a: subnet_flops(dims[0], a, dims[1])), target, x, cfg, rng
        )
        out |= {a: net for a in group}
    return out


def _standalone_net(arch: Arch, dims: tuple[int, int], seed: int) -> MLP:
    with seeded(torch.Generator().manual_seed(seed)):
        return MLP(dims[0], (arch[0],) * arch[1], dims[1])


def _teacher(cfg: AutoDistilConfig, dims: tuple[int, int], rng: torch.Generator) -> MLP:
    with seeded(rng):
        return MLP(dims[0], cfg.teacher_widths, dims[1])


def networks(cfg: AutoDistilConfig) -> dict[str, Any]:
    """``--dry-run``, an upper bound summed over the phases: the teacher (trained first, then
    frozen: 1 fp32 copy), the ``shots`` few-shot supernets (each trained by Adam in turn, all
    held until ranked: 4 copies each) and the largest sub-network trained alone (4 copies; they
    train one at a time), built untrained as the run builds them. The one-shot (K = 1) baseline
    supernet trains after the few-shot ones are dropped and is no larger than their sum: not
    listed."""
    from ..dry_run import network_report

    task = load_task(cfg.task, seed=cfg.data_seed)
    dims, rng = (task.dim, task.num_classes), torch.Generator().manual_seed(cfg.seed)
    teacher = _teacher(cfg, dims, rng)
    supers = nn.ModuleList(_supernet(cfg, g, dims, rng) for g in _groups(cfg, cfg.shots))
    arch = max(_archs(cfg), key=lambda a: (n_params(dims[0], a, dims[1]), a))
    trained = {f"supernets ({len(supers)}, few-shot)": supers}
    trained[f"sub-network alone (largest, {arch})"] = _standalone_net(arch, dims, cfg.seed)
    return network_report(trained, {"teacher (frozen)": teacher}, exact_teacher=False)


def _standalone(
    cfg: AutoDistilConfig, arch: Arch, task: Any, x: Tensor, y: Tensor, teacher: MLP, seed: int
) -> MLP:
    """``arch`` trained alone with the same KD loss (``fit`` over the supervised KD loop)."""
    model = _standalone_net(arch, (task.dim, task.num_classes), seed)

    def loss(b: Any) -> Tensor:
        return kd_loss(b.student_logits, b.teacher_logits, cfg.temperature)

    return fit(
        model, x, y, steps=cfg.standalone_steps, lr=cfg.lr, seed=seed, loss_fn=loss, teacher=teacher
    )


def _choose(cfg: AutoDistilConfig, proxy: dict[Arch, float], budget_ok: set[Arch]) -> Arch:
    return max((a for a in proxy if a in budget_ok), key=lambda a: proxy[a])


def _row(a: Arch, *tables: dict[Arch, Any]) -> dict[str, Any]:
    keys = ("params", "flops", "proxy_few", "proxy_one", "standalone_val", "standalone_test")
    return {"arch": list(a)} | {k: t[a] for k, t in zip(keys, tables, strict=True)}


def run_autodistil(cfg: AutoDistilConfig) -> dict[str, Any]:
    """Few-shot (K = shots) and one-shot (K = 1) supernets vs stand-alone sub-networks."""
    task = load_task(cfg.task, seed=cfg.data_seed)
    rng = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(task.x_train), generator=rng)
    n_val = int(cfg.val_fraction * len(perm))
    x, y = task.x_train[perm[n_val:]], task.y_train[perm[n_val:]]
    xv, yv = task.x_train[perm[:n_val]], task.y_train[perm[:n_val]]
    teacher = _teacher(cfg, (task.dim, task.num_classes), rng)
    flops = {a: subnet_flops(task.dim, a, task.num_classes) for a in _archs(cfg)}
    budget = {a for a, f in flops.items() if f <= cfg.flops_budget}
    if not budget:
        raise ValueError(
            f"flops_budget={cfg.flops_budget} admits no sub-network; the smallest has "
            f"{min(flops.values())} FLOPs"
        )
    fit(teacher, x, y, steps=cfg.teacher_steps, lr=cfg.teacher_lr, seed=cfg.seed)
    # what the supernets distil: logits (kd) or last hidden features (relation)
    target = teacher.body if cfg.objective == "relation" else teacher
    with torch.no_grad():
        t, tv = target(x), target(xv)
    dims, seed = (task.dim, task.num_classes), int(torch.randint(2**31, (1,), generator=rng))
    t0 = time.perf_counter()
    few = _proxy(_supernets(cfg, cfg.shots, dims, t, x, seed), xv, yv, tv, cfg)
    one = _proxy(_supernets(cfg, 1, dims, t, x, seed), xv, yv, tv, cfg)
    super_s = time.perf_counter() - t0
    archs = list(few)
    alone, test = {}, {}
    for a in archs:
        model = _standalone(cfg, a, task, x, y, teacher, seed)
        with torch.no_grad():
            alone[a] = float((model(xv).argmax(-1) == yv).float().mean())
            test[a] = float((model(task.x_test).argmax(-1) == task.y_test).float().mean())
    size = {a: n_params(task.dim, a, task.num_classes) for a in archs}
    best = max(test[a] for a in budget)
    pick_few, pick_one = _choose(cfg, few, budget), _choose(cfg, one, budget)
    ref = [alone[a] for a in archs]
    return {
        "kendall_tau": kendall_tau([few[a] for a in archs], ref),
        "baseline_kendall_tau": kendall_tau([one[a] for a in archs], ref),  # K = 1
        "regret": best - test[pick_few],  # best stand-alone test accuracy in budget minus pick
        "baseline_regret": best - test[pick_one],
        "chosen": list(pick_few),
        "chosen_flops": flops[pick_few],
        "best_in_budget_accuracy": best,
        "supernet_s": super_s,
        "archs": [_row(a, size, flops, few, one, alone, test) for a in archs],
    }


def procedure(cfg: AutoDistilConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """Run-folder entry point (short: ``resume`` recomputes)."""
    del out, resume
    t0 = time.perf_counter()
    m = run_autodistil(cfg)
    m["train_s"] = time.perf_counter() - t0
    return m


def report(cfg: AutoDistilConfig, m: dict[str, Any]) -> str:
    """Markdown: proxy vs stand-alone accuracy of every sub-network."""
    lines = [
        f"# AutoDistil-style search on {cfg.task}",
        "",
        f"Kendall τ(proxy, stand-alone): K = {cfg.shots}: {m['kendall_tau']:.3f}, K = 1: "
        f"{m['baseline_kendall_tau']:.3f} (supernet objective: {cfg.objective}). Budget "
        f"{cfg.flops_budget} FLOPs per example; chosen (width, depth) = {m['chosen']} "
        f"({m['chosen_flops']} FLOPs), regret {m['regret']:.4f} (K = 1: "
        f"{m['baseline_regret']:.4f}).",
        "",
        "| (width, depth) | params | FLOPs | proxy K=shots | proxy K=1 | alone (val) | alone (test) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['arch']} | {r['params']} | {r['flops']} | {r['proxy_few']:.4f} | "
        f"{r['proxy_one']:.4f} | "
        f"{r['standalone_val']:.4f} | {r['standalone_test']:.4f} |"
        for r in m["archs"]
    ]
    return "\n".join(lines) + "\n"
