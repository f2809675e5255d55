"""Federated distillation on Dirichlet non-IID clients: FedMD-style averaging, KnFu, EdgeFD.

Clients exchange only soft predictions on a shared proxy ("transfer") set. One round
(reference/knowledge_distillation.md, methods 13/14 and d.2 items 13/14):

1. local cross-entropy training on the client's private split;
2. each client's ``p_j = softmax(z_j/T)`` on the proxy set;
3. the server fuses them into a target ``q_i`` per client:

   - **uniform** (FedMD-style): ``q_i = mean_j p_j`` for every client;
   - **knfu** (Seyedmohammadi et al., arXiv 2403.11892, "effective knowledge fusion") [R]:
     ``D_ij = mean_x KL(p_i ‖ p_j)``, neighbours ``N(i) = {j : D_ij ≤ mean_j D_ij}``,
     ``w_ij = softmax_{j∈N(i)}(−β·D_ij)`` (β = 10, the paper's Eq. (8) value),
     ``q_i = Σ_j w_ij p_j``;
   - **edgefd** (Mujtaba et al., FLTA 2025, arXiv 2508.14769) [R]: each client fits KMeans (k)
     on features ``φ`` of its private inputs and claims a proxy sample when
     ``min_k ‖φ(x) − c_k‖ ≤ τ_q``, the q-quantile of its own training distances; the server
     averages the claimed soft labels per sample and drops samples nobody claims. ``φ`` is the
     raw input (fitted once) or the local model's hidden-layer embedding (refitted every round
     after local training, so the filter follows the model it speaks for);
   - **local**: no exchange (the baseline);

4. local distillation: ``CE(local batch) + λ·T²·KL(q_i ‖ p_i^T)`` on proxy batches.

The reported accuracy is ALMA (average local model accuracy) on the balanced test split, and
``local_accuracy`` re-weights each client's per-class test accuracy by its own label mix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import (
    LearningRate,
    NonNegativeFloat,
    OpenUnitFloat,
    PositiveFloat,
    PositiveInt,
    Seed,
    UnitFloat,
)
from ...kd.losses import kd_loss
from ...kd.models import MLP
from ...kd.tasks import load_task
from .proc_common import seeded, sub_rng

__all__ = [
    "FedConfig",
    "dirichlet_split",
    "edgefd_claims",
    "edgefd_features",
    "knfu_fuse",
    "networks",
    "procedure",
    "report",
    "run_federated",
]


@dataclass(frozen=True)
class FedConfig:
    """Note d.2 items 13/14: digits, 8 clients, Dirichlet α, 20% proxy set, 10 rounds."""

    method: Literal["local", "uniform", "knfu", "edgefd"] = "knfu"
    task: str = "digits"
    n_clients: PositiveInt = 8
    dirichlet_alpha: PositiveFloat = 0.1  # label skew: 0.1 strong, 1.0 mild
    proxy_fraction: OpenUnitFloat = 0.2  # of the training split, shared and unlabelled
    ood_fraction: NonNegativeFloat = (
        0.0  # pixel-shuffled copies added to the proxy set (EdgeFD: 0.5)
    )
    widths: tuple[int, ...] = (32,)
    rounds: PositiveInt = 10
    local_steps: PositiveInt = 30  # CE steps per round
    distill_steps: PositiveInt = 30  # CE + KD steps per round
    batch_size: PositiveInt = 32
    lr: LearningRate = 3e-3  # Adam, kept across rounds
    temperature: PositiveFloat = 2.0
    lam: NonNegativeFloat = 1.0  # λ, weight of the KD term
    knfu_beta: PositiveFloat = 10.0  # β of the fusion softmax (paper: 10 in all experiments)
    kmeans_k: PositiveInt = 10  # EdgeFD clusters per client
    kmeans_quantile: UnitFloat = 0.95  # EdgeFD distance threshold q
    # EdgeFD φ: "raw" pixels (fitted once) or "embedding" = the local MLP's last hidden layer
    filter_features: Literal["raw", "embedding"] = "raw"
    seed: Seed = 0
    data_seed: Seed = 0


def dirichlet_split(
    y: Tensor, n_clients: int, alpha: float, rng: torch.Generator, min_size: int = 10
) -> list[Tensor]:
    """Row indices per client: each class's rows divided by proportions ``~ Dir(α·1)``.

    Redrawn (up to 100 times) until every client holds ``min_size`` rows, as NIID-Bench does.
    """
    np_rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=rng)))
    for _ in range(100):
        parts = _dirichlet_once(y, n_clients, alpha, rng, np_rng)
        if min(len(p) for p in parts) >= min_size:
            break
    return [torch.tensor(sorted(p), dtype=torch.int64) for p in parts]


def _dirichlet_once(
    y: Tensor, n_clients: int, alpha: float, rng: torch.Generator, np_rng: np.random.Generator
) -> list[list[int]]:
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    for c in y.unique().tolist():
        rows = torch.nonzero(y == c).squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=rng)].tolist()
        cuts = (np.cumsum(np_rng.dirichlet([alpha] * n_clients))[:-1] * len(rows)).astype(int)
        for i, chunk in enumerate(np.split(np.array(rows), cuts)):
            parts[i] += chunk.tolist()
    return parts


def knfu_fuse(probs: Tensor, beta: float) -> Tensor:
    """KnFu targets ``q (K, N, C)`` from client predictions ``probs (K, N, C)`` [R]."""
    log_p = probs.clamp_min(1e-12).log()
    # D[i, j] = mean_x KL(p_i ‖ p_j)
    d = (probs.unsqueeze(1) * (log_p.unsqueeze(1) - log_p.unsqueeze(0))).sum(-1).mean(-1)
    neighbour = d <= d.mean(dim=1, keepdim=True)  # includes i itself (D_ii = 0)
    w = torch.where(neighbour, -beta * d, torch.full_like(d, -torch.inf)).softmax(dim=1)
    return torch.einsum("ij,jnc->inc", w, probs)


def edgefd_claims(
    local_x: Tensor,
    proxy_x: Tensor,
    k: int,
    quantile: float,
    seed: int,
    fit_ms: list[float] | None = None,
) -> Tensor:
    """EdgeFD client filter [R]: bool ``(N_proxy,)``, True where the client claims the sample.

    ``local_x (N, F)`` and ``proxy_x (M, F)`` are features φ; the KMeans fit time (ms) is
    appended to ``fit_ms`` when given.
    """
    from sklearn.cluster import KMeans

    if len(local_x) < 2:
        return torch.zeros(len(proxy_x), dtype=torch.bool)
    k = min(k, len(local_x))
    t0 = time.perf_counter()
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(local_x.numpy())
    if fit_ms is not None:
        fit_ms.append(1e3 * (time.perf_counter() - t0))
    tau = np.quantile(km.transform(local_x.numpy()).min(1), quantile)
    return torch.as_tensor(km.transform(proxy_x.numpy()).min(1) <= tau)


@torch.no_grad()
def edgefd_features(model: MLP, x: Tensor, kind: Literal["raw", "embedding"]) -> Tensor:
    """φ(x): ``x (B, D)`` itself or the model's last hidden layer ``model.body(x) (B, H)``."""
    if kind == "raw":
        return x
    if kind == "embedding":
        return model.eval().body(x)
    raise ValueError(f"filter_features must be 'raw' or 'embedding', got {kind!r}")


def _claims(
    cfg: FedConfig,
    models: list[MLP],
    data: list[tuple[Tensor, Tensor]],
    proxy_x: Tensor,
    fit_ms: list[float],
) -> Tensor:
    """Every client's EdgeFD claims on the proxy set, bool ``(K, N_proxy)``."""
    return torch.stack(
        [
            edgefd_claims(
                edgefd_features(m, x, cfg.filter_features),
                edgefd_features(m, proxy_x, cfg.filter_features),
                cfg.kmeans_k,
                cfg.kmeans_quantile,
                cfg.seed,
                fit_ms,
            )
            for m, (x, _) in zip(models, data, strict=True)
        ]
    )


def _steps(
    model: MLP,
    opt: torch.optim.Optimizer,
    data: tuple[Tensor, Tensor],
    steps: int,
    cfg: FedConfig,
    rng: torch.Generator,
    proxy: tuple[Tensor, Tensor] | None = None,
) -> None:
    """``steps`` Adam steps of CE on ``data``, plus ``λ·KD`` towards ``proxy = (x, q)``."""
    x, y = data
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=rng)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if proxy is not None and len(proxy[0]) > 0:
            jdx = torch.randint(len(proxy[0]), (cfg.batch_size,), generator=rng)
            target = proxy[1][jdx].clamp_min(1e-12).log() * cfg.temperature  # logits of q at T
            loss = loss + cfg.lam * kd_loss(model(proxy[0][jdx]), target, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _proxy(task: Any, cfg: FedConfig, rng: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Private rows, proxy inputs and a bool marking the proxy's OOD rows."""
    n = len(task.x_train)
    perm = torch.randperm(n, generator=rng)
    n_proxy = int(cfg.proxy_fraction * n)
    proxy_x, private = task.x_train[perm[:n_proxy]], perm[n_proxy:]
    n_ood = int(cfg.ood_fraction * n_proxy)
    src = proxy_x[torch.randint(n_proxy, (n_ood,), generator=rng)]
    shuffle = torch.rand(src.shape, generator=rng).argsort(dim=1)  # pixel-shuffled digits
    ood = src.gather(1, shuffle)
    is_ood = torch.cat(
        [torch.zeros(n_proxy, dtype=torch.bool), torch.ones(n_ood, dtype=torch.bool)]
    )
    return private, torch.cat([proxy_x, ood]), is_ood


def _targets(
    cfg: FedConfig, probs: Tensor, claims: Tensor | None
) -> list[tuple[Tensor, Tensor]] | None:
    """Per-client ``(rows of the proxy set, target probabilities)``; None for local-only."""
    k = len(probs)
    if cfg.method == "local":
        return None
    if cfg.method == "knfu":
        q = knfu_fuse(probs, cfg.knfu_beta)
        return [(torch.arange(probs.shape[1]), q[i]) for i in range(k)]
    if cfg.method == "uniform":
        return [(torch.arange(probs.shape[1]), probs.mean(0))] * k
    count = claims.sum(0)  # (N,) edgefd: average over the claiming clients
    keep = torch.nonzero(count > 0).squeeze(1)
    q = (probs * claims.unsqueeze(-1)).sum(0)[keep] / count[keep].unsqueeze(-1)
    return [(keep, q)] * k


@torch.no_grad()
def _accuracies(model: MLP, task: Any, mix: Tensor) -> tuple[float, float]:
    """Balanced-test accuracy and the client-mix-weighted per-class accuracy."""
    model.eval()
    correct = (model(task.x_test).argmax(-1) == task.y_test).float()
    per_class = torch.zeros(task.num_classes).index_add_(0, task.y_test, correct)
    per_class = per_class / torch.bincount(task.y_test, minlength=task.num_classes)
    return float(correct.mean()), float((mix * per_class).sum())


def _client_models(
    cfg: FedConfig, dim: int, classes: int, n: int, rng: torch.Generator
) -> list[MLP]:
    """``n`` untrained client MLPs ``(dim -> widths -> classes)``, each seeded from ``rng``."""
    models = []
    for _ in range(n):
        with seeded(rng):
            models.append(MLP(dim, cfg.widths, classes))
    return models


def networks(cfg: FedConfig) -> dict[str, Any]:
    """``--dry-run``: every client's MLP (``n_clients`` of them, each with its own Adam kept
    across the rounds: 4 fp32 copies each, all held at once), built untrained by
    :func:`_client_models`. There is no teacher network; the baselines (local-only, uniform)
    rerun the same clients after the method, so their memory is the same."""
    from torch import nn

    from ..dry_run import network_report

    task = load_task(cfg.task, seed=cfg.data_seed)
    rng = torch.Generator().manual_seed(cfg.seed)
    models = _client_models(cfg, task.dim, task.num_classes, cfg.n_clients, rng)
    key = f"clients ({cfg.n_clients} x MLP{tuple(cfg.widths)})"
    return network_report({key: nn.ModuleList(models)}, exact_teacher=False)


def run_federated(cfg: FedConfig) -> dict[str, Any]:
    """``cfg.rounds`` rounds of ``cfg.method``; returns ALMA and the filter statistics."""
    task = load_task(cfg.task, seed=cfg.data_seed)
    rng = torch.Generator().manual_seed(cfg.seed)
    private, proxy_x, is_ood = _proxy(task, cfg, sub_rng(rng))
    y_priv = task.y_train[private]
    clients = [private[s] for s in dirichlet_split(y_priv, cfg.n_clients, cfg.dirichlet_alpha, rng)]
    init_rng, train_rng = sub_rng(rng), sub_rng(rng)
    models = _client_models(cfg, task.dim, task.num_classes, len(clients), init_rng)
    opts = [torch.optim.Adam(m.parameters(), cfg.lr) for m in models]
    data = [(task.x_train[c], task.y_train[c]) for c in clients]
    claims, history, fit_ms = None, [], []  # history: the claims used in each round
    if cfg.method == "edgefd" and cfg.filter_features == "raw":
        claims = _claims(cfg, models, data, proxy_x, fit_ms)  # pixels do not change
    for _ in range(cfg.rounds):
        for model, opt, d in zip(models, opts, data, strict=True):
            _steps(model, opt, d, cfg.local_steps, cfg, train_rng)
        if cfg.method == "edgefd" and cfg.filter_features == "embedding":
            claims = _claims(cfg, models, data, proxy_x, fit_ms)
        if claims is not None:
            history.append(claims.any(0))
        with torch.no_grad():
            probs = torch.stack([(m.eval()(proxy_x) / cfg.temperature).softmax(-1) for m in models])
        targets = _targets(cfg, probs, claims)
        for i, (model, opt, d) in enumerate(zip(models, opts, data, strict=True)):
            if targets is not None:
                rows, q = targets[i]
                _steps(model, opt, d, cfg.distill_steps, cfg, train_rng, (proxy_x[rows], q))
            elif cfg.distill_steps:  # local-only: the same number of steps, CE only
                _steps(model, opt, d, cfg.distill_steps, cfg, train_rng)
    mixes = [torch.bincount(y, minlength=task.num_classes).float() / len(y) for _, y in data]
    accs = [_accuracies(m, task, mix) for m, mix in zip(models, mixes, strict=True)]
    out = {
        "accuracy": float(np.mean([a for a, _ in accs])),
        "local_accuracy": float(np.mean([b for _, b in accs])),
        "client_sizes": [len(c) for c in clients],
    }
    if history:  # averaged over the rounds' exchanges (all equal for raw features)
        claimed = torch.stack(history).float()
        rejected = 1 - claimed[:, is_ood].mean(1) if is_ood.any() else torch.ones(len(claimed))
        retained = claimed[:, ~is_ood].mean(1)
        out |= {"ood_rejection": float(rejected.mean()), "id_retention": float(retained.mean())}
        out |= {"ood_rejection_last": float(rejected[-1]), "id_retention_last": float(retained[-1])}
        out["kmeans_fit_ms"] = float(np.mean(fit_ms)) if fit_ms else 0.0  # per client fit
    return out


def procedure(cfg: FedConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """``cfg.method`` next to local-only training and uniform (unfiltered) averaging."""
    import dataclasses

    del out, resume
    t0 = time.perf_counter()
    m = run_federated(cfg)
    base = run_federated(dataclasses.replace(cfg, method="local"))
    uni = run_federated(dataclasses.replace(cfg, method="uniform"))
    for prefix, r in (("baseline_", base), ("uniform_", uni)):
        m |= {f"{prefix}{k}": r[k] for k in ("accuracy", "local_accuracy")}
    m["train_s"] = time.perf_counter() - t0
    return m


def report(cfg: FedConfig, m: dict[str, Any]) -> str:
    """Markdown summary of one federated run."""
    lines = [
        f"# Federated distillation ({cfg.method}) on {cfg.task}",
        "",
        f"{cfg.n_clients} clients, Dirichlet α = {cfg.dirichlet_alpha} (sizes "
        f"{m['client_sizes']}), proxy set {cfg.proxy_fraction:.0%} of the training split "
        f"(+{cfg.ood_fraction:.0%} OOD), {cfg.rounds} rounds, seed {cfg.seed}.",
        "",
        "| method | ALMA (balanced test) | local-mix accuracy |",
        "|---|---:|---:|",
    ]
    for name, p in (
        (cfg.method, ""),
        ("uniform averaging", "uniform_"),
        ("local only", "baseline_"),
    ):
        lines.append(f"| {name} | {m[p + 'accuracy']:.4f} | {m[p + 'local_accuracy']:.4f} |")
    if "ood_rejection" in m:
        lines += [
            "",
            f"OOD proxy samples rejected by every client: {m['ood_rejection']:.3f}; "
            f"ID proxy samples claimed: {m['id_retention']:.3f} (φ = {cfg.filter_features}, "
            f"mean over rounds; last round {m['ood_rejection_last']:.3f} / "
            f"{m['id_retention_last']:.3f}); KMeans fit {m['kmeans_fit_ms']:.1f} ms per client.",
        ]
    return "\n".join(lines) + "\n"
