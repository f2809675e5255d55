"""SNOOPI's NASA on an attribute grid (issue 14): negative prompts in a one-step student.

Paper: Nguyen, Nguyen, Dao, Nguyen, Pham, Tran, Tran, "SNOOPI: Supercharged One-step Diffusion
Distillation with Proper Guidance" (arXiv 2412.02687; v3, Sep 2025: "Supercharged One-step
Text-to-Image Diffusion Models with Negative Prompts"). NASA-I (training-free, Sec. 5.2,
eqs. 7-9): in every cross-attention layer of the one-step generator,

    Z+ = softmax(Q K+^T / sqrt d) V+,   Z- = softmax(Q K-^T / sqrt d) V-,   Z_NASA = Z+ - alpha Z-

with the keys and values of the negative prompt from the same projections. The paper's alpha:
0.1 (SDv1.5), 0.2 (SDv2.1), 0.5 (PixArt-alpha), 1 in its best row (Table 3), swept 0..1.5 in
Fig. 7. Its claim (Table 2, Sec. 4.2): output-space CFG on a one-step model "leads to undesirable
image blending" and removes the unwanted feature poorly; NASA removes it (97-100 %).

Testbed (``nasa_lab``): 16 Gaussian modes on a 4x4 grid whose modes carry a row and a column
token; the exact teacher of a token set is the mixture restricted to matching modes. A one-step
cross-attention student is trained by DMD2 (``objectives.dmd``, ``train.two_player``) on random
token sets, with a fake critic that reads the set, after a regression on the teacher's PF-ODE
map (there are no teacher weights to copy). Evaluation: positive ``{row r}`` and
negative ``{column c}`` (and the transpose), all 32 pairs; the exact target of "P and not N" is
the mixture on P's modes outside N. Compared on the same noise: the student with P alone, NASA
at several alpha, output-space negative CFG ``x = G(z,P) + w (G(z,P) - G(z,N))`` at several w,
and exact target samples. Metrics: mass on negative modes, off-mode (blending) mass, target
mass and MMD^2 to the exact target, averaged over the pairs.

Finding (seeds 0-2, docs/seed_systems.md): NASA at alpha 0.1-0.2 is closer to the exact target
than P alone and than any CFG w (MMD^2 0.25 vs 0.29 vs >= 0.90), and blends less than CFG at
equal negative mass; but the negative mass NASA removes goes mostly off-mode, not to the target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import (
    ConfigError,
    LearningRate,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
)
from ...eval.metrics import default_bandwidths, mmd_rbf
from ...io import atomic_write_json
from ...objectives.dmd import DMD
from ...samplers import sample
from ...schedules import get_schedule
from ...sources.float_cond import FloatCondDenoiserNet, TeacherResidualDenoiser
from ...teachers.conditional_mixture import PerSampleTeacher
from ...train.common import latest_checkpoint
from ...train.two_player import TwoPlayerConfig, train_two_player
from .nasa_lab import GRID, TOKENS, CrossAttentionGenerator, Grid, mode_masses

__all__ = ["NASAConfig", "eval_pairs", "procedure", "report"]


@dataclass(frozen=True)
class NASAConfig:
    """One NASA run: testbed, DMD2 student, inference sweep (departures marked)."""

    spacing: PositiveFloat = 1.5  # grid step h (issue 14 hint: 1-2)
    std: PositiveFloat = 0.1  # mode std s (issue 14 hint)
    # student: one cross-attention block (SD's UNet has 16; one keeps the test readable)
    latent: PositiveInt = 2  # noise dimension
    width: PositiveInt = 32  # attention width (token embeddings, queries, keys, values)
    heads: PositiveInt = 4
    hidden: PositiveInt = 128  # query and output MLPs
    critic_hidden: PositiveInt = 128
    # student init. DMD2 starts from the teacher's weights; this student has no teacher copy, and
    # DMD2 from scratch left ~80 % of draws between modes after 1000 steps. Stand-in (DMD v1's
    # regression pairs, DD2's DD1 init): regress G(z, S) on the teacher's PF-ODE map of z
    # (Heun, init_nfe evaluations) for init_steps on random sets; 0 = from scratch
    init_steps: NonNegativeInt = 2000
    init_nfe: PositiveInt = 31
    init_pairs: PositiveInt = 16384
    lr_init: LearningRate = 3e-3  # Adam on the regression
    # DMD2 loop (train.two_player; DMD2's TTUR 5:1, 2 here for the CPU budget)
    steps: PositiveInt = 800  # generator updates (CPU budget: ~2 min a run)
    batch_size: PositiveInt = 256
    lr_generator: LearningRate = 3e-4  # from scratch (DMD2 fine-tunes a teacher copy at 2e-6)
    lr_critic: LearningRate = 1e-3
    critic_updates: PositiveInt = 2
    ema_halflife: NonNegativeFloat = 100.0  # the EMA student is evaluated
    # DMD2's w averages |x - D_real| over a sample's pixels; here D = 2 values, so a per-sample w
    # -> 0 for samples on a mode and blows their update up (as dd2): one batch-wide w
    normalization: Literal["per_sample", "batch", "none"] = "batch"
    checkpoint_every: PositiveInt = 1000
    # inference sweep: SNOOPI's alphas (0.1, 0.2, 0.5 per backbone, 1 best) and beyond
    alphas: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 1.5)
    cfg_scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # w of negative CFG on the student
    samples_per_pair: PositiveInt = 256  # draws per (P, N) pair, 32 pairs
    radius: PositiveFloat = 3.0  # "on a mode": within radius * std of its mean
    seed: Seed = 0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"width={self.width} must be a multiple of heads={self.heads}")
        if self.spacing < 2 * self.radius * self.std:
            raise ConfigError(
                f"spacing={self.spacing} must be >= 2 radius std = {2 * self.radius * self.std}"
                " (the mode balls must not overlap)"
            )
        if self.init_steps and self.latent != 2:
            raise ConfigError(
                f"latent must be 2 (the PF-ODE's noise) when init_steps > 0, got {self.latent}"
            )
        for key, vals in (("alphas", self.alphas), ("cfg_scales", self.cfg_scales)):
            if not vals or any(v < 0 for v in vals):
                raise ConfigError(f"config key {key!r} needs values >= 0, got {vals}")


def eval_pairs() -> tuple[Tensor, Tensor]:
    """All 32 (P, N) pairs ``(32, 8)`` each: P = {row r}, N = {column c}, then the transpose."""
    r, c = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    row, col = F.one_hot(r.reshape(-1), TOKENS).float(), F.one_hot(c.reshape(-1) + GRID, TOKENS)
    col = col.float()
    return torch.cat([row, col]), torch.cat([col, row])


def build(cfg: NASAConfig):
    grid = Grid(cfg.spacing, cfg.std)
    teacher = PerSampleTeacher(grid.law, get_schedule("rf"), 2)
    gen = CrossAttentionGenerator(cfg.latent, cfg.width, cfg.heads, cfg.hidden)
    critic = TeacherResidualDenoiser(
        teacher, FloatCondDenoiserNet(2, TOKENS, hidden=cfg.critic_hidden)
    )
    return grid, teacher, gen, critic


def init_generator(cfg: NASAConfig, grid: Grid, teacher, gen) -> float | None:
    """``init_steps`` of ``mean ||G(z, S) - ODE_T(z, S)||^2`` on minibatches of a fixed pool of
    ``init_pairs`` (noise, set, teacher PF-ODE output) triples; returns the last loss."""
    if cfg.init_steps == 0:
        return None
    rng = torch.Generator().manual_seed(cfg.seed + 17)
    z, sets = gen.sample_latent(cfg.init_pairs, rng), grid.draw_sets(cfg.init_pairs, rng)
    with torch.no_grad():
        y, _ = sample(teacher, "heun", cfg.init_nfe, len(z), rng=rng, cond=sets, z=z)
    opt = torch.optim.Adam(gen.parameters(), cfg.lr_init)
    loss = torch.zeros(())
    for _ in range(cfg.init_steps):
        i = torch.randint(0, cfg.init_pairs, (cfg.batch_size,), generator=rng)
        loss = (gen(z[i], sets[i]) - y[i]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def train(cfg: NASAConfig, out: Path, resume: bool, grid, teacher, gen, critic) -> dict[str, Any]:
    """DMD2 on random token sets (the fake critic starts at the teacher, as DMD2's copy)."""
    loop = TwoPlayerConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, lr_generator=cfg.lr_generator,
        lr_critic=cfg.lr_critic, critic_updates=cfg.critic_updates, ema_halflife=cfg.ema_halflife,
        eval_every=0, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed,
    )  # fmt: skip
    dmd = DMD(t_reference="schedule", normalization=cfg.normalization)
    return train_two_player(
        loop, objective=dmd, generator=gen, critic=critic, teacher=teacher,
        sample_latent=lambda n, rng: gen.sample_latent(n, rng), sample_cond=grid.draw_sets,
        evaluate=lambda _: {}, out_dir=out, resume=resume,
    )  # fmt: skip


def samplers(cfg: NASAConfig, gen, grid: Grid) -> dict[str, Any]:
    """``name -> f(z, P, N) -> x``: the student with P alone, NASA per alpha, CFG per w, exact."""
    out: dict[str, Any] = {"positive": lambda z, p, n: gen(z, p)}
    for a in cfg.alphas:
        out[f"nasa@{a:g}"] = lambda z, p, n, a=a: gen(z, p, neg=n, alpha=a)
    for w in cfg.cfg_scales:
        out[f"cfg@{w:g}"] = lambda z, p, n, w=w: (1 + w) * gen(z, p) - w * gen(z, n)
    rng = torch.Generator().manual_seed(cfg.seed + 211)
    out["exact"] = lambda z, p, n: grid.target(p, n).sample(rng)[0]
    return out


def evaluate(cfg: NASAConfig, gen, grid: Grid) -> dict[str, dict[str, float]]:
    """Each sampler's masses and MMD^2 to exact target samples, averaged over the 32 pairs."""
    pos, neg = eval_pairs()
    m = cfg.samples_per_pair
    p, n = pos.repeat_interleave(m, 0), neg.repeat_interleave(m, 0)
    z = gen.sample_latent(len(p), torch.Generator().manual_seed(cfg.seed + 101))
    ref = grid.target(p, n).sample(torch.Generator().manual_seed(cfg.seed + 307))[0]
    ref = ref.reshape(len(pos), m, 2)
    rows = {}
    for name, draw in samplers(cfg, gen, grid).items():
        with torch.no_grad():
            x = draw(z, p, n).double()
        r = mode_masses(x, grid, p, n, cfg.radius * cfg.std)
        xs = x.reshape(len(pos), m, 2)
        mmd = [mmd_rbf(xs[i], ref[i], default_bandwidths(ref[i])) for i in range(len(pos))]
        rows[name] = r | {"mmd2": sum(mmd) / len(mmd)}
    return rows


def claims(rows: dict[str, dict[str, float]]) -> dict[str, Any]:
    """NASA suppresses (best alpha halves the negative mass of P alone); NASA beats CFG (best
    MMD^2 over alpha below the best over w; off-mode mass at those settings reported)."""
    nasa = {k: v for k, v in rows.items() if k.startswith("nasa@")}
    cfgs = {k: v for k, v in rows.items() if k.startswith("cfg@")}
    best_n = min(nasa, key=lambda k: nasa[k]["mmd2"])
    best_c = min(cfgs, key=lambda k: cfgs[k]["mmd2"])
    least_neg = min(nasa, key=lambda k: nasa[k]["neg_mass"])
    pos = rows["positive"]["neg_mass"]
    return {
        "best_nasa": best_n,
        "best_cfg": best_c,
        "claim_nasa_suppresses": pos > 0 and nasa[least_neg]["neg_mass"] <= 0.5 * pos,
        "claim_nasa_beats_cfg": nasa[best_n]["mmd2"] < cfgs[best_c]["mmd2"],
        "claim_nasa_less_blending": nasa[best_n]["off_mass"] < cfgs[best_c]["off_mass"],
    }


def procedure(cfg: NASAConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """Train the student by DMD2, then sweep NASA and CFG on it against the exact targets."""
    torch.manual_seed(cfg.seed)
    grid, teacher, gen, critic = build(cfg)
    init_file = out / "init_metrics.json"
    if not (resume and latest_checkpoint(out / "checkpoints") is not None):
        atomic_write_json(init_file, {"init_loss": init_generator(cfg, grid, teacher, gen)})
    init_loss = json.loads(init_file.read_text())["init_loss"]
    result = train(cfg, out, resume, grid, teacher, gen, critic)
    ema = result["ema"].eval()
    rows = evaluate(cfg, ema, grid)
    return {
        "rows": rows,
        **claims(rows),
        "init_loss": init_loss,
        "final_critic_loss": result["logs"]["critic_loss"],
        "train_s": result["wall_s"],
    }


def report(cfg: NASAConfig, m: dict[str, Any]) -> str:
    """Markdown: one row per sampler, then the claims."""
    lines = [
        "# SNOOPI's NASA on the attribute grid",
        "",
        f"4x4 grid, spacing {cfg.spacing}, std {cfg.std}; one-step cross-attention student, "
        f"{cfg.steps} DMD2 steps of {cfg.batch_size}, seed {cfg.seed}; 32 (P, N) pairs x "
        f"{cfg.samples_per_pair} draws, on a mode = within {cfg.radius:g} std.",
        "",
        "| sampler | negative mass ↓ | off-mode mass ↓ | target mass ↑ | MMD² to exact ↓ |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in m["rows"].items():
        lines.append(
            f"| {name} | {r['neg_mass']:.4f} | {r['off_mass']:.4f} | {r['target_mass']:.4f} "
            f"| {r['mmd2']:.4g} |"
        )
    yes = {True: "holds", False: "does not hold"}
    best_n, best_c = m["rows"][m["best_nasa"]], m["rows"][m["best_cfg"]]
    lines += [
        "",
        f"NASA suppresses the negative (some alpha halves the negative mass of P alone): "
        f"**{yes[m['claim_nasa_suppresses']]}**.",
        f"NASA closer to the exact target than negative CFG (best {m['best_nasa']} MMD² "
        f"{best_n['mmd2']:.4g} vs best {m['best_cfg']} {best_c['mmd2']:.4g}): "
        f"**{yes[m['claim_nasa_beats_cfg']]}**; off-mode mass there {best_n['off_mass']:.4f} vs "
        f"{best_c['off_mass']:.4f} (less blending: **{yes[m['claim_nasa_less_blending']]}**).",
    ]
    return "\n".join(lines) + "\n"
