"""Sparse3D on the ``views`` variants (issue 14): sparse-view reconstruction with a score prior.

Paper: Zou, Cheng, Cao, Huang, Shan, Zhang, "Sparse3D: Distilling Multiview-Consistent Diffusion for Object
Reconstruction from Sparse Views", AAAI 2024 (arXiv 2308.14078). Its objective: a photometric
loss on the sparse input views plus score distillation from a view-conditioned (multiview-
consistent) diffusion model; it replaces SDS by "category-score distillation sampling (C-SDS)"
to "enhance detail" where SDS is blurry.

**C-SDS is not built.** Its update rule is not in any stored source (only the abstract is: no
equation, no code), and the issue asks that it be verified first; a guessed rule would measure
the guess. ``arms`` rejects ``c-sds`` with that reason, and ``metrics.json`` says so.

Testbed (``teachers.views_variants``): 6 variants of the ``views`` object that differ behind the
body, the true one seen from ring cameras at azimuths 0 and 30 (elevation 15); the exact
posterior over variants gives the teachers. Arms, from the same field initialisation, steps and
seed (Adam on the raw voxels, ``optimize`` presets' lr):

    recon         L = 0.5 mean_v ||x(c_v) - y_v||^2                      (input views only)
    sds-agnostic  L + lambda SDS(x(c); camera-agnostic teacher)          (c: random ring cameras)
    sds-view      L + lambda SDS(x(c); view-conditioned teacher, cond = c)

SDS is ``objectives.sds.SDS`` (DreamFusion eq. 3) with guidance 1 (the teachers are exact; no
CFG). Metrics at the 108 held-out cameras (between the ring's azimuths, 3 elevations) against the
TRUE variant: PSNR (also on the back half, |azimuth| > 90), occupancy IoU, sharpness (image-
gradient energy ratio to the truth, ``eval.metrics3d.sharpness``), Janus rate; and PSNR against
the posterior-mean render, the best an image-space estimator can do on the unseen back; and
the back half's PSNR against every variant (which one, if any, the field commits to).

Finding (preset, seeds 0-2, docs/seed_systems.md): SDS with the view-conditioned teacher
wins every metric on every seed (held-out PSNR 22.4 vs 17.3 camera-agnostic vs 15.0
reconstruction only; IoU 0.73 / 0.63 / 0.28; sharpness 0.75 / 0.64 / 0.32; Janus 0 / 0.58 /
0.44); the camera-agnostic prior adds geometry but also Janus views. Its back commits to no
variant's tail: it reads as the tail-less variant (29 dB), the one nearest the posterior mean.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...config import ConfigError, LearningRate, NonNegativeFloat, PositiveFloat, PositiveInt, Seed
from ...eval.metrics3d import janus_rate, occupancy_iou, psnr, sharpness
from ...io import atomic_write_json, json_safe
from ...objectives.sds import SDS
from ...scene.field3d import VoxelField
from ...teachers.views_variants import VARIANTS, VariantsTestbed, build_variants

__all__ = ["ARMS", "C_SDS_STATUS", "Sparse3DConfig", "fit", "procedure", "report"]

ARMS = ("recon", "sds-agnostic", "sds-view")
RING_STEP = 5.0  # degrees between the 72 ring cameras (the views testbed's)
C_SDS_STATUS = (
    "not built: C-SDS's update rule could not be confirmed (the stored sources hold only the "
    "paper's abstract: no equation, no code)"
)


@dataclass(frozen=True)
class Sparse3DConfig:
    """One Sparse3D comparison (no paper values are used: none could be read; see docstring)."""

    true_variant: int = 0  # index into VARIANTS (red tail straight back)
    input_azimuths: tuple[float, ...] = (0.0, 30.0)  # issue 14: 2-3 views, front and front-side
    image_size: PositiveInt = 16  # the optimize presets' CPU size (the testbed's 32 is 4x slower)
    kappa: NonNegativeFloat = 4.0  # camera-agnostic view bias exp(kappa cos az), as ``views``
    std: PositiveFloat = 0.05  # teachers' per-pixel std and the posterior's likelihood std
    resolution: PositiveInt = 32  # voxels per axis (the ground truth's)
    n_samples: PositiveInt = 48  # samples per ray (the ground truth's)
    init_density: PositiveFloat = 0.1  # almost transparent start (optimize presets)
    init_noise: NonNegativeFloat = 0.1
    steps: PositiveInt = 1200  # Adam steps per arm (CPU budget: ~2 min per SDS arm, 1 core)
    lr: LearningRate = 0.05  # optimize presets' lr on the raw voxels
    batch_size: PositiveInt = 4  # SDS cameras per step, uniform over the ring
    # lambda: SDS and photometric terms at equal weight per image. Tried on seed 0: 0.3, 1, 3 at
    # 300 steps and 1, 3 at 1500; the arms ranked the same at every value, 1 and 3 within 0.2 dB
    sds_weight: PositiveFloat = 1.0
    arms: tuple[str, ...] = ARMS
    seed: Seed = 0

    def __post_init__(self) -> None:
        if not 0 <= self.true_variant < len(VARIANTS):
            raise ConfigError(
                f"config key 'true_variant' must lie in [0, {len(VARIANTS)}), got "
                f"{self.true_variant}"
            )
        if not 1 <= len(self.input_azimuths) <= 3:
            raise ConfigError(
                f"config key 'input_azimuths' needs 1-3 views, got {self.input_azimuths}"
            )
        if any(a % RING_STEP for a in self.input_azimuths):
            raise ConfigError(
                f"config key 'input_azimuths' must be ring azimuths (multiples of {RING_STEP:g} "
                f"degrees), got {self.input_azimuths}"
            )
        for arm in self.arms:
            if arm == "c-sds":
                raise ConfigError(f"config key 'arms': c-sds is {C_SDS_STATUS}")
            if arm not in ARMS:
                raise ConfigError(f"config key 'arms': unknown {arm!r}; valid: {', '.join(ARMS)}")
        if not self.arms:
            raise ConfigError(f"config key 'arms' needs at least one of {', '.join(ARMS)}")


def testbed(cfg: Sparse3DConfig) -> VariantsTestbed:
    return build_variants(
        cfg.true_variant, tuple(cfg.input_azimuths), image_size=cfg.image_size,
        resolution=cfg.resolution, kappa=cfg.kappa, std=cfg.std, n_samples=cfg.n_samples,
    )  # fmt: skip


def new_field(cfg: Sparse3DConfig) -> VoxelField:
    """The untrained field every arm starts from (seeded by ``cfg.seed``)."""
    return VoxelField(
        cfg.resolution, image_size=cfg.image_size, n_samples=cfg.n_samples,
        init_density=cfg.init_density, init_noise=cfg.init_noise,
        rng=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip


def fit(cfg: Sparse3DConfig, tb: VariantsTestbed, arm: str) -> VoxelField:
    """Optimise a fresh field (seeded by ``cfg.seed``, the same for every arm) for ``arm``."""
    field = new_field(cfg)
    rng = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.Adam(field.parameters(), lr=cfg.lr)
    teacher = {"sds-agnostic": tb.camera_agnostic, "sds-view": tb.view_conditioned}.get(arm)
    sds = SDS(guidance=1.0)  # exact teachers: no CFG
    cams, y = list(tb.input_cameras), tb.input_images
    for _ in range(cfg.steps):
        x_in = field(cams, rng=rng)
        loss = 0.5 * (x_in - y).pow(2).flatten(1).sum(1).mean()
        if teacher is not None:
            j = torch.randint(len(tb.ring), (cfg.batch_size,), generator=rng)
            x = field([tb.ring[i] for i in j.tolist()], rng=rng)
            cond = j if arm == "sds-view" else None
            prior = sds.generator_loss(x, cond, teacher=teacher, rng=rng).value
            loss = loss + cfg.sds_weight * prior
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return field.requires_grad_(False)


def _back(tb: VariantsTestbed) -> Tensor:
    az = torch.tensor([c.azimuth for c in tb.heldout], dtype=torch.float64) % 360.0
    return (az > 90.0) & (az < 270.0)


def image_metrics(tb: VariantsTestbed, x: Tensor) -> dict[str, float]:
    """Held-out renders ``x: (M, 3, H, W)`` against the true variant's and the posterior mean."""
    truth, back = tb.heldout_images[tb.true_index], _back(tb)
    by_variant = [psnr(x[back], v[back]) for v in tb.heldout_images]
    return {
        "psnr": psnr(x, truth),
        "psnr_back": psnr(x[back], truth[back]),
        "psnr_posterior_mean": psnr(x, tb.posterior_mean(tb.heldout_images)),
        "sharpness": sharpness(x, truth),
        # which variant the back looks like: one (committed) or none (an average)
        "psnr_back_by_variant": dict(zip(tb.names, by_variant, strict=True)),
    }


def evaluate(tb: VariantsTestbed, field: VoxelField) -> dict[str, float]:
    """``image_metrics`` of the field's held-out renders, occupancy IoU, Janus rate (sweep at
    the ring's elevation against the true variant's ring) and the PSNR at the input views."""
    with torch.no_grad():
        x, x_in = field(list(tb.heldout)), field(list(tb.input_cameras))
    sweep = [c for c in tb.heldout if c.elevation == tb.elevation]
    ring_true = tb.ring_images[tb.true_index]
    return image_metrics(tb, x) | {
        "iou": occupancy_iou(field, tb.true_field),
        "janus_rate": janus_rate(field, ring_true, tb.ring_azimuths, sweep),
        "input_psnr": psnr(x_in, tb.input_images),
    }


def _arm(cfg: Sparse3DConfig, tb: VariantsTestbed, arm: str, out: Path, resume: bool):
    path = out / f"arm_{arm}.json"
    if resume and path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    field = fit(cfg, tb, arm)
    row = evaluate(tb, field) | {"fit_s": time.perf_counter() - start}
    torch.save(field.state_dict(), out / f"field_{arm}.pt")
    atomic_write_json(path, json_safe(row))
    return json_safe(row)


def procedure(cfg: Sparse3DConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """Fit every arm from the same initialisation; score them and two references."""
    torch.manual_seed(cfg.seed)
    tb = testbed(cfg)
    rows = {arm: _arm(cfg, tb, arm, out, resume) for arm in cfg.arms}
    nan = float("nan")
    blank = {"iou": nan, "janus_rate": nan, "input_psnr": nan}
    mean_render = image_metrics(tb, tb.posterior_mean(tb.heldout_images)) | blank
    refs = json_safe({"posterior-mean render": mean_render, "truth": evaluate(tb, tb.true_field)})
    best = {k: max(rows, key=lambda a, k=k: rows[a][k]) for k in ("psnr", "psnr_back", "iou")}
    best["sharpness"] = min(rows, key=lambda a: abs(math.log(max(rows[a]["sharpness"], 1e-12))))
    claims = {}
    if {"recon", "sds-view"} <= set(rows):
        claims["claim_view_sds_beats_recon"] = rows["sds-view"]["psnr"] > rows["recon"]["psnr"]
    if {"sds-agnostic", "sds-view"} <= set(rows):
        v, a = rows["sds-view"]["psnr"], rows["sds-agnostic"]["psnr"]
        claims["claim_view_beats_agnostic"] = v > a
    return {
        "rows": rows,
        "references": refs,
        "best": best,
        **claims,
        "c_sds": C_SDS_STATUS,
        "variants": list(tb.names),
        "true_variant": tb.names[tb.true_index],
        "posterior": [float(w) for w in tb.posterior],
    }


def _cell(v: float | None) -> str:
    """A table cell: 3 significant decimals; ``None`` (NaN or inf in the run) as a dash."""
    return "—" if v is None else f"{v:.3f}"


def report(cfg: Sparse3DConfig, m: dict[str, Any]) -> str:
    """Markdown: one row per arm and reference, the posterior, the C-SDS status."""
    post = ", ".join(f"{n} {w:.3f}" for n, w in zip(m["variants"], m["posterior"], strict=True))
    lines = [
        "# Sparse3D on the views variants",
        "",
        f"True variant {m['true_variant']}, input azimuths {list(cfg.input_azimuths)}, "
        f"{cfg.image_size}x{cfg.image_size}; {cfg.steps} Adam steps per arm, lr {cfg.lr}, "
        f"SDS weight {cfg.sds_weight} on {cfg.batch_size} ring cameras, seed {cfg.seed}.",
        f"Posterior over variants: {post}.",
        "",
        "| arm | PSNR ↑ | PSNR back ↑ | PSNR vs posterior mean ↑ | IoU ↑ | sharpness (1) "
        "| Janus ↓ | input PSNR ↑ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = ("psnr", "psnr_back", "psnr_posterior_mean", "iou", "sharpness", "janus_rate")
    for name, r in [*m["rows"].items(), *m["references"].items()]:
        cells = [_cell(r[k]) for k in (*keys, "input_psnr")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "PSNR on the back half against each variant (which one the back resembles):", "",
              "| arm | " + " | ".join(m["variants"]) + " |",
              "|---|" + "---:|" * len(m["variants"])]  # fmt: skip
    for name, r in [*m["rows"].items(), *m["references"].items()]:
        cells = [_cell(r["psnr_back_by_variant"][v]) for v in m["variants"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Best arm per metric: "
              + ", ".join(f"{k} {v}" for k, v in m["best"].items()) + ".",
              "", f"C-SDS: {m['c_sds']}."]  # fmt: skip
    return "\n".join(lines) + "\n"
