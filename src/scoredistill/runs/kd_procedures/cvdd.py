"""CV-DD: dataset distillation by committee voting, on 8×8 digits.

Cui et al., arXiv 2501.07575 (code ``Jiacheng8/CV-DD``, built on SRe²L);
reference/knowledge_distillation.md, method 12 and d.2 item 12. Squeeze → recover → relabel →
validate:

1. **squeeze**: train a committee of small BatchNorm CNNs on the real data (optionally on
   batches shifted by ≤ ``squeeze_pad`` px, as SRe²L's teachers train on crops); prior
   ``a_m`` = test accuracy in percent;
2. **recover** ``IPC`` images per class from Gaussian noise, Adam(lr 0.1, betas (0.5, 0.9)),
   cosine LR, random jitter (≤ 1 px here, 4 px on CIFAR), on the committee loss::

       L(x) = Σ_m w_m·[CE(f_m(x), y) + r_bn·Σ_l mult_l·(‖μ_l(x) − μ_l^BN‖₂ + ‖σ²_l(x) − σ²_l^BN‖₂)]
       w = softmax(a / 5),  r_bn = 0.05,  mult_1 = 10 (first BN), others 1

3. **relabel** with batch-specific soft labels (BSSL): the committee in **train mode** (BN uses
   the synthetic batch's statistics), each half batch separately, logits mixed with
   ``softmax(a / 10)``. With ``relabel_crops = K ≥ 2`` each image is relabelled under K random
   views (FKD/SRe²L-style stored crops: here ±``crop_pad``-pixel shifts with mean padding, see
   :func:`shift_views`), one BSSL pass per view;
4. **validate**: a fresh student trained only on the synthetic set (all stored (view, soft
   label) pairs) with ``KL(softmax(soft/T) ‖ softmax(out/T))``, batchmean, T = 3, no T².

Ablations reported next to it: random real images (same IPC, same relabelling and the same
views: the baseline), a one-model "committee", and eval-mode relabelling.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import (
    LearningRate,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
)
from ...kd.losses import kd_loss
from ...kd.models import MLP
from ...kd.tasks import load_task
from .proc_common import seeded, sub_rng

__all__ = [
    "CVDDConfig",
    "SmallCNN",
    "bn_matching_loss",
    "multi_crop_relabel",
    "networks",
    "procedure",
    "recover",
    "relabel",
    "report",
    "run_cvdd",
    "shift_views",
]


@dataclass(frozen=True)
class CVDDConfig:
    """Note d.2 item 12 (IPC 10, 300 recovery steps, committee of 2-3 CNNs with BN)."""

    task: str = "digits"
    committee_widths: tuple[int, ...] = (8, 16, 32)  # first conv width of each member
    committee_size: PositiveInt = 2  # top-N members by prior (paper default N = 2)
    member_steps: PositiveInt = 300
    ipc: PositiveInt = 10  # images per class
    recover_steps: PositiveInt = 300
    recover_lr: LearningRate = 0.1
    r_bn: NonNegativeFloat = 0.05
    first_bn_mult: NonNegativeFloat = 10.0
    jitter: NonNegativeInt = 1  # max shift in pixels
    relabel_crops: NonNegativeInt = (
        0  # stored views per image; 0 or 1 = the image itself, unaugmented
    )
    crop_pad: NonNegativeInt = (
        1  # max shift (px) of a relabel view; vacated pixels = the pixel mean
    )
    squeeze_pad: NonNegativeInt = (
        0  # members train on batches shifted ≤ this (SRe²L teachers see crops)
    )
    # the paper validates with a CNN (ResNet-18); "mlp" uses MLP(student_widths) on the pixels
    student: Literal["cnn", "mlp"] = "cnn"
    student_width: PositiveInt = 16  # cnn: first conv width
    student_widths: tuple[int, ...] = (32,)  # mlp: hidden widths
    student_steps: PositiveInt = 300
    temperature: PositiveFloat = 3.0
    lr: LearningRate = 1e-2
    seed: Seed = 0
    data_seed: Seed = 0


class SmallCNN(nn.Module):
    """Conv(w)-BN-ReLU-Conv(2w)-BN-ReLU-GAP-Linear on ``(B, 1, 8, 8)``."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)``."""
        return self.head(self.body(x))


def bn_matching_loss(model: nn.Module, x: Tensor, first_mult: float) -> tuple[Tensor, Tensor]:
    """``(logits, Σ_l mult_l·(‖μ_l(x) − μ_l^BN‖₂ + ‖σ²_l(x) − σ²_l^BN‖₂))`` in one forward."""
    terms: list[Tensor] = []

    def hook(bn: nn.BatchNorm2d, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        h = inputs[0]
        mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        terms.append((mean - bn.running_mean).norm() + (var - bn.running_var).norm())

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [bn.register_forward_hook(hook) for bn in bns]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    mults = [first_mult] + [1.0] * (len(terms) - 1)
    return logits, sum(m * t for m, t in zip(mults, terms, strict=True))


def _synthetic(n: int, rng: torch.Generator) -> Tensor:
    """The ``(n, 1, 8, 8)`` Gaussian noise the synthetic images start from."""
    return torch.randn(n, 1, 8, 8, generator=rng)


def _jitter(x: Tensor, max_shift: int, rng: torch.Generator) -> Tensor:
    if max_shift == 0:
        return x
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=rng).tolist()
    return torch.roll(x, (dx, dy), dims=(2, 3))


def recover(
    committee: list[nn.Module], priors: Tensor, y: Tensor, cfg: CVDDConfig, rng: torch.Generator
) -> Tensor:
    """Synthetic images ``(len(y), 1, 8, 8)`` optimised on the committee loss."""
    for m in committee:
        m.eval().requires_grad_(False)
    w = (priors / 5).softmax(0)
    x = _synthetic(len(y), rng).requires_grad_(True)
    opt = torch.optim.Adam([x], cfg.recover_lr, betas=(0.5, 0.9))
    for step in range(cfg.recover_steps):
        for group in opt.param_groups:  # cosine schedule
            group["lr"] = 0.5 * cfg.recover_lr * (1 + math.cos(math.pi * step / cfg.recover_steps))
        xj = _jitter(x, cfg.jitter, rng)
        loss = x.new_zeros(())
        for wm, model in zip(w, committee, strict=True):
            logits, bn = bn_matching_loss(model, xj, cfg.first_bn_mult)
            loss = loss + wm * (F.cross_entropy(logits, y) + cfg.r_bn * bn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return x.detach()


@torch.no_grad()
def relabel(committee: list[nn.Module], priors: Tensor, x: Tensor, train_mode: bool) -> Tensor:
    """Committee soft logits ``(N, C)``; BSSL (``train_mode``) forwards each half batch alone."""
    w = (priors / 10).softmax(0)
    halves = x.chunk(2) if train_mode else (x,)
    out = []
    for part in halves:
        logits = 0
        for wm, model in zip(w, committee, strict=True):
            model = copy.deepcopy(model).train(train_mode)  # running stats stay untouched
            logits = logits + wm * model(part)
        out.append(logits)
    return torch.cat(out)


def shift_views(x: Tensor, pad: int, rng: torch.Generator) -> Tensor:
    """Random crop with padding: ``x (N, 1, H, W)`` with each image shifted by its own
    ``(dy, dx) ∈ [−pad, pad]²``; vacated pixels are 0, content pushed past the edge is lost.

    The 8×8 stand-in for FKD's RandomResizedCrop + flip: at 8×8 a rescaled crop is mostly
    interpolation blur, and flips are off because digits are not mirror-invariant (a flipped
    2 reads as a 5, a flipped 3 as an ε). It acts on the models' own inputs, the per-pixel
    standardised z-scores, so a vacated pixel gets 0 = its training mean. Shifting raw ink
    instead and re-standardising puts ink on border pixels whose training std is ~0 (|z| up
    to 400 at ±1 px, seed 0): a member scored 0.49 on such views of the test digits against
    0.79 for the z-space shift (0.93 clean), and every student fell to chance.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=rng).tolist()
    return torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(offsets)])


def multi_crop_relabel(
    committee: list[nn.Module],
    priors: Tensor,
    x: Tensor,
    crops: int,
    pad: int,
    rng: torch.Generator,
    train_mode: bool = True,
) -> tuple[Tensor, Tensor]:
    """Stored views ``(K, N, 1, 8, 8)`` of standardised ``x (N, 1, 8, 8)`` and their committee
    soft logits ``(K, N, C)``; ``K = 1`` (the image itself) when ``crops ≤ 1``.

    Every view is relabelled as one batch (BSSL: train-mode BN on that batch's statistics).
    """
    if crops <= 1:
        return x.unsqueeze(0), relabel(committee, priors, x, train_mode).unsqueeze(0)
    views = torch.stack([shift_views(x, pad, rng) for _ in range(crops)])
    soft = torch.stack([relabel(committee, priors, v, train_mode) for v in views])
    return views, soft


def _train(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    steps: int,
    lr: float,
    rng: torch.Generator,
    temperature: float | None = None,
    shift_pad: int = 0,
) -> nn.Module:
    """Adam on CE (``target`` labels) or, with ``temperature``, KL to soft logits (no T²);
    ``shift_pad > 0`` shifts every batch by :func:`shift_views`."""
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(64, len(x)),), generator=rng)
        xb = shift_views(x[idx], shift_pad, rng) if shift_pad > 0 else x[idx]
        out = model(xb)
        if temperature is None:
            loss = F.cross_entropy(out, target[idx])
        else:
            loss = kd_loss(out, target[idx], temperature, scale_t2=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def _member(width: int, classes: int, rng: torch.Generator) -> SmallCNN:
    with seeded(rng):
        return SmallCNN(width, classes)


def _student(cfg: CVDDConfig, dim: int, classes: int, rng: torch.Generator) -> nn.Module:
    """The untrained validation student (``cfg.student``) on ``(B, 1, 8, 8)`` images."""
    with seeded(rng):
        if cfg.student == "cnn":
            return SmallCNN(cfg.student_width, classes)
        return nn.Sequential(nn.Flatten(), MLP(dim, cfg.student_widths, classes))


def _squeeze(task: Any, cfg: CVDDConfig, rng: torch.Generator) -> tuple[list[nn.Module], Tensor]:
    """Train every member on the real images; the top ``committee_size`` by prior, priors (%)."""
    x, xt = task.x_train.view(-1, 1, 8, 8), task.x_test.view(-1, 1, 8, 8)
    members, priors = [], []
    for width in cfg.committee_widths:
        model = _member(width, task.num_classes, rng)
        _train(model, x, task.y_train, cfg.member_steps, 1e-2, rng, shift_pad=cfg.squeeze_pad)
        with torch.no_grad():
            acc = (model(xt).argmax(-1) == task.y_test).float().mean()
        members.append(model)
        priors.append(100 * float(acc))
    order = sorted(range(len(members)), key=lambda i: -priors[i])[: cfg.committee_size]
    return [members[i] for i in order], torch.tensor([priors[i] for i in order])


def _validate(task: Any, x: Tensor, soft: Tensor, cfg: CVDDConfig, rng: torch.Generator) -> float:
    student = _student(cfg, task.dim, task.num_classes, rng)
    _train(student, x, soft, cfg.student_steps, cfg.lr, rng, cfg.temperature)
    with torch.no_grad():
        pred = student(task.x_test.view(-1, 1, 8, 8)).argmax(-1)
    return float((pred == task.y_test).float().mean())


def networks(cfg: CVDDConfig) -> dict[str, Any]:
    """``--dry-run``, an upper bound summed over the stages (each member trains alone, then the
    committee is held frozen while the images are recovered, then the student trains):
    the committee (every member of ``committee_widths``, 1 fp32 copy; the top ``committee_size``
    recover), the synthetic images (``ipc`` per class, the tensor Adam optimises in
    :func:`recover`: 4 copies) and the validation student (4 copies), built untrained as the run
    builds them. The stored relabelled views and soft labels are data: not listed."""
    from ..dry_run import network_report

    task = load_task(cfg.task, seed=cfg.data_seed)
    c, rng = task.num_classes, torch.Generator().manual_seed(cfg.seed)
    members = nn.ModuleList(_member(w, c, rng) for w in cfg.committee_widths)
    images = nn.ParameterList([nn.Parameter(_synthetic(cfg.ipc * c, rng))])
    trained = {f"synthetic images ({cfg.ipc} per class)": images}
    trained[f"student ({cfg.student})"] = _student(cfg, task.dim, c, rng)
    frozen = {f"committee ({len(members)} members, frozen)": members}
    return network_report(trained, frozen, exact_teacher=False)


def run_cvdd(cfg: CVDDConfig) -> dict[str, Any]:
    """Committee CV-DD and its ablations; test accuracies of the students trained on them."""
    if min(cfg.relabel_crops, cfg.crop_pad, cfg.squeeze_pad) < 0:
        raise ValueError(
            "relabel_crops, crop_pad and squeeze_pad must be >= 0, got "
            f"{cfg.relabel_crops}, {cfg.crop_pad}, {cfg.squeeze_pad}"
        )
    task = load_task(cfg.task, seed=cfg.data_seed)
    rng = torch.Generator().manual_seed(cfg.seed)
    committee, priors = _squeeze(task, cfg, sub_rng(rng))
    y = torch.arange(task.num_classes).repeat(cfg.ipc)  # interleaved: each half holds all classes
    synth = recover(committee, priors, y, cfg, sub_rng(rng))
    single = recover(committee[:1], priors[:1], y, cfg, sub_rng(rng))
    real_rows = torch.cat(
        [
            torch.nonzero(task.y_train == c).squeeze(1)[
                torch.randperm(int((task.y_train == c).sum()), generator=rng)[: cfg.ipc]
            ]
            for c in range(task.num_classes)
        ]
    )
    real = task.x_train[real_rows[torch.randperm(len(real_rows), generator=rng)]].view(-1, 1, 8, 8)
    val_rng, crop_rng = sub_rng(rng), sub_rng(rng)

    def twin(g: torch.Generator) -> torch.Generator:
        return torch.Generator().set_state(g.get_state())

    def score(x: Tensor, members: list[nn.Module], pri: Tensor, bssl: bool = True) -> float:
        # every variant draws the same shifts and trains the same student init
        views, soft = multi_crop_relabel(
            members, pri, x, cfg.relabel_crops, cfg.crop_pad, twin(crop_rng), bssl
        )
        return _validate(task, views.flatten(0, 1), soft.flatten(0, 1), cfg, twin(val_rng))

    return {
        "accuracy": score(synth, committee, priors),
        "baseline_accuracy": score(real, committee, priors),  # random real images, same IPC
        "single_accuracy": score(single, committee[:1], priors[:1]),
        "eval_relabel_accuracy": score(synth, committee, priors, bssl=False),
        "committee_priors": priors.tolist(),
    }


def procedure(cfg: CVDDConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """Run-folder entry point (short: ``resume`` recomputes)."""
    del out, resume
    t0 = time.perf_counter()
    m = run_cvdd(cfg)
    m["train_s"] = time.perf_counter() - t0
    return m


def report(cfg: CVDDConfig, m: dict[str, Any]) -> str:
    """Markdown summary of one CV-DD run."""
    rows = [
        ("committee recover + BSSL relabel (CV-DD)", "accuracy"),
        ("single-model recover + BSSL", "single_accuracy"),
        ("committee recover + eval-mode relabel", "eval_relabel_accuracy"),
        ("random real images + BSSL (baseline)", "baseline_accuracy"),
    ]
    lines = [
        f"# CV-DD on {cfg.task}",
        "",
        f"IPC {cfg.ipc}; committee priors {m['committee_priors']} (%); {cfg.recover_steps} "
        f"recovery steps; student {cfg.student} trained only on the "
        f"{cfg.ipc * 10} distilled images (T = {cfg.temperature}), seed {cfg.seed}; "
        f"{max(cfg.relabel_crops, 1)} stored view(s) per image (±{cfg.crop_pad} px shifts); "
        f"committee trained on ±{cfg.squeeze_pad} px shifts.",
        "",
        "| data | student test accuracy |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {m[key]:.4f} |" for name, key in rows]
    return "\n".join(lines) + "\n"
