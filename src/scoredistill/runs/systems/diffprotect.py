"""Diff-Protect (Xue, Liang, Wu, Chen, "Toward effective protection against diffusion-based
mimicry through score distillation", ICLR 2024; code xavihart/Diff-Protect@ac5ffdb) on digits.

A protector perturbs an image ``x`` within ``||x_adv - x||_inf <= eps`` so that a latent
diffusion model's mimicry of it (SDEdit) fails. The paper's claims, measured here:

1. SDS, which backpropagates ``eps_phi(z_t, t) - eps`` through the **encoder only**, protects as
   well as the full-gradient attack (AdvDM: ``grad_x E||eps_phi(z_t) - eps||^2`` through encoder
   and denoiser) at about half the time and memory per step;
2. minimising the semantic loss, SDS(-), protects better than maximising it, SDS(+);
3. the encoder is the vulnerable point: the latent moves much more than the image.

Testbed (``diffprotect_lab``): an MLP VAE trained on the digits' train split, the exact latent
class mixture (the teacher, and the ground truth of every metric), an MLP denoiser learned by
DSM on it (``variant = learned``), SDEdit by DDIM at several strengths. Attacks and controls
(``diffprotect_attacks``): none, random ±eps signs, SDS(±), AdvDM(±), and the oracle (PGD on the
exact ``-log p(y | E(x))``, what the budget allows a white-box protector). Metrics on the
held-out images: exact class accuracy and ``log p`` of the SDEdit outputs (lower = better
protection), a pixel-space accuracy of their decodings, PSNR/L2 of the perturbation, the latent
vs image displacement, seconds and autograd-saved bytes per PGD step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...config import ConfigError, PositiveFloat, PositiveInt, Seed, to_dict
from ...eval.metrics import class_accuracy, mean_logp
from ...teachers.testbeds import get_testbed
from ...train.common import latest_checkpoint, load_checkpoint, save_checkpoint
from . import diffprotect_attacks as atk
from .diffprotect_lab import (
    MLPVAE,
    Lab,
    build_lab,
    fit_latent_truth,
    learned_teacher,
    load_split,
    sdedit,
    train_learned_teacher,
)

__all__ = ["METHODS", "DiffProtectConfig", "procedure", "report"]

METHODS = ("none", "random", "sds+", "sds-", "advdm+", "advdm-", "oracle")
VARIANTS = ("exact", "learned")
_HELDOUT = 450  # images in data.load_digits_images("test") (25% of 1797, stratified)


@dataclass(frozen=True)
class DiffProtectConfig:
    """One Diff-Protect system run: the lab, the attacks and the SDEdit evaluation."""

    steps: PositiveInt = 100  # PGD steps (configs/attack/base.yaml: steps 100)
    seed: Seed = 0  # VAE, mixture fit, learned denoiser, attack and SDEdit noise
    # L-inf budget 16/255 and step 1/255, both x2 for images in [-1, 1] (diff_mist.py::init)
    epsilon: PositiveFloat = 32 / 255
    step_size: PositiveFloat = 2 / 255
    # SDEdit t/T: the paper's ddim100 edits use 0.01..0.3 (attacks.py::SDEdit.edit_list); 0.5
    # added as a strong edit. Departure: 0.01 dropped (it returns the input almost unchanged)
    strengths: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    ddim_steps: PositiveInt = 100  # 'ddim100': ceil(100 s) DDIM steps from strength s
    sdedit_draws: PositiveInt = 2  # SDEdit noise draws per image (same draws for every method)
    n_protect: PositiveInt = 300  # held-out images protected (the paper: single images)
    variants: tuple[str, ...] = VARIANTS  # mimicry/attack teacher: exact mixture, learned MLP
    schedule: str = "vp-scaled-linear"  # Stable Diffusion's noise table, as in the paper
    # testbed (departure: a small MLP VAE on 8x8 digits stands in for SD's first stage)
    latent_dim: PositiveInt = 8
    vae_hidden: PositiveInt = 128
    vae_steps: PositiveInt = 1500  # Adam 2e-3, batch 128: recon MSE ~0.04 on held-out digits
    vae_beta: PositiveFloat = 0.02  # KL weight = likelihood variance 0.14^2, one grey level
    mixture_components: PositiveInt = 4  # per class, as the digits testbed
    # covariance floor (latents have unit std): best held-out log-lik of 1e-3, 1e-2, 3e-2 (seed 0)
    mixture_reg: PositiveFloat = 0.03
    denoiser_hidden: PositiveInt = 128
    denoiser_steps: PositiveInt = 800  # DSM, batch 512 (train.dsm defaults otherwise)
    data_seed: Seed = 0  # the train / held-out split of the digits

    def __post_init__(self) -> None:
        if not self.strengths or any(not 0.0 < s <= 1.0 for s in self.strengths):
            raise ConfigError(
                f"config key 'strengths' needs values in (0, 1], got {self.strengths}"
            )
        if not self.variants or set(self.variants) - set(VARIANTS):
            raise ConfigError(
                f"config key 'variants' must be a non-empty subset of {list(VARIANTS)}, "
                f"got {list(self.variants)}"
            )
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"config key 'variants' repeats a value: {list(self.variants)}")
        if self.n_protect > _HELDOUT:
            raise ConfigError(
                f"config key 'n_protect' must be <= {_HELDOUT} (the held-out digits), "
                f"got {self.n_protect}"
            )
        if self.step_size > self.epsilon:
            raise ConfigError(
                f"config key 'step_size' ({self.step_size}) must not exceed 'epsilon' "
                f"({self.epsilon}): one step would leave the ball"
            )


# ---------------------------------------------------------------------- the lab, resumable
def _lab(cfg: DiffProtectConfig) -> tuple[Lab, float]:
    return build_lab(
        latent=cfg.latent_dim,
        hidden=cfg.vae_hidden,
        vae_steps=cfg.vae_steps,
        vae_beta=cfg.vae_beta,
        components=cfg.mixture_components,
        reg=cfg.mixture_reg,
        schedule=cfg.schedule,
        seed=cfg.seed,
        data_seed=cfg.data_seed,
    )


def _restore_lab(cfg: DiffProtectConfig, vae: MLPVAE) -> Lab:
    """The lab around a restored VAE: the mixture fit is deterministic in the seed."""
    x_train, y_train, x_test, y_test = load_split(cfg.data_seed)
    vae.requires_grad_(False).eval()
    scale, truth = fit_latent_truth(
        vae,
        x_train,
        y_train,
        components=cfg.mixture_components,
        reg=cfg.mixture_reg,
        seed=cfg.seed,
        schedule=cfg.schedule,
    )
    return Lab(vae, scale, truth, x_train, y_train, x_test, y_test)


def _lab_info(lab: Lab, vae_loss: float, dsm_loss: float) -> dict[str, float]:
    with torch.no_grad():
        z = lab.encode(lab.x_test).double()
        recon = (lab.decode(lab.encode(lab.x_test)) - lab.x_test).pow(2).mean()
    return {
        "vae_loss": vae_loss,
        "dsm_loss": dsm_loss,
        "recon_mse_heldout": float(recon),
        "latent_acc_heldout": class_accuracy(lab.truth, z, lab.y_test),
        "latent_logp_heldout": mean_logp(lab.truth, z),
        "latent_scale": lab.scale,
    }


# ---------------------------------------------------------------------- one attack + evaluation
def _attack(
    cfg: DiffProtectConfig, lab: Lab, teacher, method: str, x0: Tensor, y: Tensor, seed: int
) -> tuple[Tensor, dict[str, float]]:
    """``x_adv`` for ``method`` and its cost (seconds and saved bytes per step)."""
    rng = torch.Generator().manual_seed(seed)
    if method == "none":
        return x0, {}
    if method == "random":
        return atk.random_sign(x0, cfg.epsilon, rng), {}
    if method == "oracle":
        grad, direction = (lambda x, r: atk.oracle_gradient(x, lab.encode, lab.truth, y)), 1.0
    else:
        fn = atk.sds_gradient if method.startswith("sds") else atk.full_gradient
        grad, direction = (lambda x, r: fn(x, lab.encode, teacher, r)), float(method[-1] + "1")
    saved = atk.saved_bytes(grad, x0, torch.Generator().manual_seed(seed))
    res = atk.pgd(
        x0, grad, eps=cfg.epsilon, step=cfg.step_size, steps=cfg.steps, direction=direction, rng=rng
    )
    return res.x_adv, {"s_per_step": res.s_per_step, "saved_kb_per_step": saved / 1024}


def _spread(v: Tensor) -> float:
    return float((v - v.mean(0)).norm(dim=1).mean())


def _evaluate(
    cfg: DiffProtectConfig, lab: Lab, teacher, x0: Tensor, x_adv: Tensor, y: Tensor, seed: int
) -> dict[str, float | None]:
    """Perturbation size, latent displacement and the SDEdit outputs' exact scores."""
    pixel_truth = get_testbed("digits", 0).truth  # the exact pixel-space digit classifier
    rng = torch.Generator().manual_seed(seed)  # common random numbers across methods
    with torch.no_grad():
        z0, z = lab.encode(x0), lab.encode(x_adv)
    d = x_adv - x0
    mse = float(d.pow(2).mean())  # PSNR of the whole set; peak-to-peak 2 in [-1, 1]
    out: dict[str, float | None] = {
        "linf": float(d.abs().max()),
        "l2": float(d.norm(dim=1).mean()),
        "psnr": 10 * math.log10(4.0 / mse) if mse > 0 else None,
        "dx_rel": float(d.norm(dim=1).mean()) / _spread(x0),
        "dz_rel": float((z - z0).norm(dim=1).mean()) / _spread(z0),
        "enc_acc": class_accuracy(lab.truth, z.double(), y),
        "enc_logp": mean_logp(lab.truth, z.double()),
    }
    ys = y.repeat(cfg.sdedit_draws)
    for s in cfg.strengths:
        zs = torch.cat(
            [
                sdedit(teacher.denoise, teacher.schedule, z, s, cfg.ddim_steps, rng)
                for _ in range(cfg.sdedit_draws)
            ]
        )
        with torch.no_grad():
            decoded = lab.decode(zs.float()).double()
        out[f"acc@{s:g}"] = class_accuracy(lab.truth, zs.double(), ys)
        out[f"logp@{s:g}"] = mean_logp(lab.truth, zs.double())
        out[f"pix_acc@{s:g}"] = class_accuracy(pixel_truth, decoded, ys)
    out["acc_mean"] = sum(out[f"acc@{s:g}"] for s in cfg.strengths) / len(cfg.strengths)
    out["logp_mean"] = sum(out[f"logp@{s:g}"] for s in cfg.strengths) / len(cfg.strengths)
    return out


def _phase(cfg: DiffProtectConfig, lab: Lab, teacher, v: int, m: int) -> dict[str, float]:
    x0, y = lab.x_test[: cfg.n_protect], lab.y_test[: cfg.n_protect]
    x_adv, cost = _attack(cfg, lab, teacher, METHODS[m], x0, y, 1000 * cfg.seed + 10 * v + m)
    if METHODS[m] == "sds-":
        cost["sign_agreement_sds_full"] = atk.sign_agreement(x0, lab.encode, teacher, cfg.seed)
        cost["cpu_time_ratio_sds_full"] = atk.cpu_time_ratio(
            lambda x, r: atk.sds_gradient(x, lab.encode, teacher, r),
            lambda x, r: atk.full_gradient(x, lab.encode, teacher, r),
            x0,
        )
    return {**_evaluate(cfg, lab, teacher, x0, x_adv, y, 1000 * cfg.seed + 10 * v + 9), **cost}


# ---------------------------------------------------------------------- procedure and report
def _claims(res: dict[str, dict[str, float]], variant: str) -> dict[str, float]:
    """The paper's three comparisons as numbers (acc: lower is better protection)."""
    r = {m: res[f"{variant}/{m}"] for m in METHODS}
    return {
        "sds-_minus_advdm-_acc": r["sds-"]["acc_mean"] - r["advdm-"]["acc_mean"],
        "sds+_minus_advdm+_acc": r["sds+"]["acc_mean"] - r["advdm+"]["acc_mean"],
        "sds-_minus_sds+_acc": r["sds-"]["acc_mean"] - r["sds+"]["acc_mean"],
        "time_ratio_sds_over_advdm": r["sds-"]["cpu_time_ratio_sds_full"],
        "memory_ratio_sds_over_advdm": r["sds-"]["saved_kb_per_step"]
        / r["advdm-"]["saved_kb_per_step"],
        "sign_agreement_sds_full": r["sds-"]["sign_agreement_sds_full"],
        "encoder_gain_sds-": r["sds-"]["dz_rel"] / r["sds-"]["dx_rel"],
        "encoder_gain_random": r["random"]["dz_rel"] / r["random"]["dx_rel"],
    }


def procedure(cfg: DiffProtectConfig, out: Path, resume: bool) -> dict[str, Any]:
    """Build the lab, run every (variant, method) phase, checkpoint after each."""
    ckdir = out / "checkpoints"
    found = latest_checkpoint(ckdir) if resume else None
    vae = MLPVAE(64, cfg.latent_dim, cfg.vae_hidden)
    results: dict[str, dict[str, float]] = {}
    denoiser = learned_teacher(cfg.latent_dim, cfg.schedule, cfg.denoiser_hidden, cfg.seed)
    if found is not None:
        state = load_checkpoint(
            found,
            modules={"vae": vae, "denoiser": denoiser},
            optimizers={},
            rngs={},
            config=to_dict(cfg),
            steps_fixed="PGD steps change every attack",
        )
        lab = _restore_lab(cfg, vae)
        results, info = state["extra"]["results"], state["extra"]["lab"]
    else:
        lab, vae_loss = _lab(cfg)
        dsm = train_learned_teacher(denoiser, lab.truth, cfg.denoiser_steps, cfg.seed)
        info = _lab_info(lab, vae_loss, dsm)
    teachers = {"exact": lab.truth, "learned": denoiser}

    def save() -> None:
        save_checkpoint(
            ckdir,
            len(results),
            modules={"vae": lab.vae, "denoiser": denoiser},
            optimizers={},
            rngs={},
            extra={"results": results, "lab": info},
            config=to_dict(cfg),
        )

    save()
    for v, variant in enumerate(cfg.variants):
        for m, method in enumerate(METHODS):
            if f"{variant}/{method}" not in results:
                results[f"{variant}/{method}"] = _phase(cfg, lab, teachers[variant], v, m)
                save()
    claims = {f"{v}/{k}": x for v in cfg.variants for k, x in _claims(results, v).items()}
    return {"lab": info, "results": results, "claims": claims}


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def report(cfg: DiffProtectConfig, metrics: dict[str, Any]) -> str:
    """Markdown: the lab, one table per variant, the claims."""
    lab, res = metrics["lab"], metrics["results"]
    lines = [
        "# Diff-Protect on digits (SDS vs full-gradient protection, SDEdit mimicry)",
        "",
        f"VAE held-out recon MSE {lab['recon_mse_heldout']:.4f}; exact latent classifier "
        f"held-out accuracy {lab['latent_acc_heldout']:.3f}, log p {lab['latent_logp_heldout']:.2f}."
        f" Budget eps = {cfg.epsilon:.4f}, step {cfg.step_size:.4f}, {cfg.steps} PGD steps, "
        f"{cfg.n_protect} held-out images.",
    ]
    strengths = [f"{s:g}" for s in cfg.strengths]
    for variant in cfg.variants:
        head = ["method", "PSNR", "dz/dx", "enc acc"]
        head += [f"acc@{s}" for s in strengths] + ["log p (mean)", "pix acc@max"]
        head += ["CPU ms/step", "saved KB/step"]
        lines += ["", f"## {variant} teacher", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---|" * len(head))
        for m in METHODS:
            r = res[f"{variant}/{m}"]
            row = [m, _fmt(r["psnr"], ".1f"), _fmt(r["dz_rel"] / max(r["dx_rel"], 1e-12), ".2f")]
            row += [_fmt(r["enc_acc"], ".3f")]
            row += [_fmt(r[f"acc@{s}"], ".3f") for s in strengths]
            row += [_fmt(r["logp_mean"], ".1f"), _fmt(r[f"pix_acc@{strengths[-1]}"], ".3f")]
            row += [_fmt(1e3 * r.get("s_per_step", math.nan), ".2f")]
            row += [_fmt(r.get("saved_kb_per_step", math.nan), ".0f")]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Claims (accuracy: lower = stronger protection)", ""]
    lines += [f"- {k}: {_fmt(v, '.3f')}" for k, v in metrics["claims"].items()]
    return "\n".join(lines) + "\n"
