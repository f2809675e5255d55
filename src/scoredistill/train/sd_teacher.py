"""A tiny latent text-to-image teacher (Stable Diffusion in miniature) trained on 8×8 digits.

Three parts, as in SD (Rombach et al. 2022), trained in two stages:

1. ``AutoencoderKL`` 1×8×8 → 4×4×4: loss ``‖D(z) − x‖² + β·KL(q(z|x) ‖ N(0, I))`` per pixel,
   ``z ~ q(z|x)`` (Rombach et al. 2022, App. G, without the perceptual and GAN terms, which 8×8
   digits do not need). ``scaling_factor = 1 / std(z)`` over the training latents, as SD's
   0.18215 was chosen, so the diffusion model sees unit-variance latents.
2. Text: a char-level ``CLIPTokenizer`` (the 256 byte-level symbols, their ``</w>`` forms,
   ``<|startoftext|>`` and ``<|endoftext|>``, no merges; reference note §3) and a randomly
   initialised ``CLIPTextModel`` **trained jointly with the UNet** in stage 3, as LDM trains its
   transformer text encoder τθ with the UNet (Rombach et al. 2022, Eq. 3, Sec. 4.3.1). SD keeps a
   *pretrained* CLIP frozen; a *random* frozen CLIP here carried too little of the digit (its
   causal attention averages the digit's token into the shared "a handwritten " prefix: the
   teacher reached prompt accuracy 0.14-0.25, chance 0.1; docs/text_to_image.md), so
   ``train_text_encoder=False`` keeps that variant for comparison only.
3. ``UNet2DConditionModel`` with cross-attention on those embeddings: DDPM ε-prediction
   (Ho et al. 2020, Eq. 14) ``‖ε − ε_θ(√ᾱ_t·z0 + √(1−ᾱ_t)·ε, t, c)‖²``, ``z0 = z·scaling_factor``,
   ``t ~ U{0, …, 999}``, SD's ``scaled_linear`` β table (0.00085 → 0.012) so that time ranges
   quoted in SD steps mean the same here; 10 % of prompts replaced by the empty prompt so one
   network is also the unconditional model that CFG needs. EMA weights are saved.

Prompts: ``"a handwritten 7"``, with ``"a thin …"`` / ``"a bold …"`` for the lightest /
heaviest third of each digit's images by ink (mean brightness); ``captions=`` replaces them
(``teachers.views_sd_data``), their words made whole tokens (``word_merges``). The result is
saved with ``StableDiffusionPipeline(...).save_pretrained`` (a ``DDIMScheduler`` with SD's
settings and ``trailing`` spacing, so few-step sampling starts at the top step, note §7
pitfall 3).
Stages 1 and 3 need only diffusers (``fit_vae``, ``fit_text_unet``); the text encoder and the
pipeline need ``transformers``.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..io import atomic_write_json
from ..teachers.text_cond import encode_text
from .common import check_finite, ema_decay, ema_update
from .sd_text import caption_words, make_clip_text, word_merges
from .unet_teacher import _lr_factor

__all__ = [
    "PromptTable",
    "SDTeacherConfig",
    "caption_words",
    "digit_prompts",
    "fit_text_unet",
    "fit_vae",
    "make_clip_text",
    "make_text_unet",
    "make_vae",
    "noisy_images",
    "prompt_table",
    "train_sd_teacher",
    "word_merges",
]

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
STYLES = ("thin ", "", "bold ")  # by ink tercile within each digit


@dataclass(frozen=True)
class SDTeacherConfig:
    """Hyperparameters of ``train_sd_teacher``."""

    steps: int = 1700  # UNet (stage 3) steps: ~0.26 CPU-s each; the run fits 10 CPU-minutes
    vae_steps: int = 500  # VAE (stage 1) optimiser steps: test MSE 0.021, see docs
    batch_size: int = 64
    lr: float = 2e-3  # UNet AdamW; both stages: 5 % warm-up, cosine decay
    vae_lr: float = 1e-3
    kl_weight: float = 1e-3  # β: KL per latent value against MSE per pixel
    # share of each VAE batch that is a training image blended with uniform pixel noise
    # (weight a ~ U(0, 1)) and must be reconstructed as it is (``noisy_images``): 0 = SD's VAE
    vae_noise_share: float = 0.0
    vae_channels: tuple[int, ...] = (16, 32)  # two levels: 8×8 → 4×4 latents
    latent_channels: int = 4  # as SD
    unet_channels: tuple[int, ...] = (32, 64)
    text_width: int = 32  # CLIP hidden size = the UNet's cross_attention_dim
    text_layers: int = 2
    max_length: int = 32  # tokens: "a bold handwritten 7" is 17 characters + 2 specials
    prompt_dropout: float = 0.1  # empty prompt, for classifier-free guidance
    train_text_encoder: bool = True  # LDM's joint τθ; False: random frozen CLIP (reads poorly)
    ema_halflife_steps: float = 500.0  # ramped as the pixel teacher's: ≤ 5 % of steps done
    weight_decay: float = 0.01
    seed: int = 0


def digit_prompts(images: Tensor, labels: Tensor, classes: Sequence[str] = ()) -> list[str]:
    """One prompt per image: ``"a {thin |bold |}handwritten {name}"`` by ink tercile within
    its class; ``name`` is ``classes[label]`` (default: the label itself)."""
    ink = (images.flatten(1) + 1).mean(1) / 2
    prompts = [""] * len(labels)
    for d in labels.unique().tolist():
        idx = (labels == d).nonzero().flatten()
        rank = ink[idx].argsort().argsort()  # 0 = lightest
        for i, r in zip(idx.tolist(), rank.tolist(), strict=True):
            name = classes[d] if classes else str(d)
            prompts[i] = f"a {STYLES[3 * r // len(idx)]}handwritten {name}"
    return prompts


def make_vae(in_channels: int, cfg: SDTeacherConfig) -> Any:
    """``AutoencoderKL`` with ``len(vae_channels)`` levels (no mid-block attention at 4×4)."""
    from diffusers import AutoencoderKL

    levels = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        latent_channels=cfg.latent_channels,
        block_out_channels=cfg.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=1,
        norm_num_groups=8,
        mid_block_add_attention=False,
    )


def make_text_unet(sample_size: int, cfg: SDTeacherConfig) -> Any:
    """``UNet2DConditionModel``: cross-attention at the latent resolution and in the middle."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cfg.text_width,
        attention_head_dim=8,
        norm_num_groups=8,
    )


class PromptTable(nn.Module):
    """``forward() -> (P + 1, L, E)``: the distinct training prompts, then the empty one, through
    a text encoder that ``fit_text_unet`` trains with the UNet (``encode_text``: the pipeline's
    own embedding path, so the saved pipeline sees what the UNet was trained on)."""

    def __init__(self, tokenizer: Any, encoder: nn.Module, texts: Sequence[str]) -> None:
        super().__init__()
        self.encoder, self.tokenizer, self.texts = encoder, tokenizer, [*texts, ""]

    def forward(self) -> Tensor:
        return encode_text(self.tokenizer, self.encoder, self.texts)


def _adamw(module: nn.Module, lr: float, cfg: SDTeacherConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=cfg.weight_decay)


def noisy_images(x: Tensor, n: int, rng: torch.Generator) -> Tensor:
    """``x`` with its last ``n`` rows blended with uniform noise: ``(1 − a) x + a u``, ``u ~
    U[−1, 1]`` per pixel, ``a ~ U(0, 1)`` per image. Reconstructing them as they are teaches the
    encoder to keep noise in the latent instead of mapping it onto the data (a voxel field's
    colour-noise renders fooled the plain encoder: docs/text_to_image.md)."""
    if n <= 0:
        return x
    u = torch.rand(n, *x.shape[1:], generator=rng) * 2 - 1
    a = torch.rand(n, *(1,) * (x.dim() - 1), generator=rng)
    return torch.cat([x[: len(x) - n], (1 - a) * x[len(x) - n :] + a * u])


def fit_vae(
    vae: nn.Module, images: Tensor, cfg: SDTeacherConfig, rng: torch.Generator, progress: bool
) -> dict[str, float]:
    """Stage 1 on ``images: (N, C, H, W)`` in [-1, 1]; sets ``scaling_factor``; returns the
    final loss, ``scaling_factor`` and the posterior std (mean over latent values)."""
    opt, losses = _adamw(vae, cfg.vae_lr, cfg), []
    vae.train()
    for step in tqdm(range(cfg.vae_steps), disable=not progress, desc="vae"):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(step, cfg.vae_steps)
        x = images[torch.randint(images.shape[0], (cfg.batch_size,), generator=rng)]
        x = noisy_images(x, round(cfg.vae_noise_share * cfg.batch_size), rng)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(rng)).sample
        kl = dist.kl().mean() / dist.mean[0].numel()  # per latent value
        loss = (recon - x).square().mean() + cfg.kl_weight * kl
        check_finite(loss, step, "VAE loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        dist = vae.encode(images).latent_dist
        z = dist.sample(rng)
    scale = 1.0 / float(z.std())  # SD: 1 / std of the training latents
    vae.register_to_config(scaling_factor=scale)
    window = losses[-max(1, cfg.vae_steps // 20) :]
    return {"vae_final_loss": sum(window) / len(window), "scaling_factor": scale,
            "posterior_std": float(dist.std.mean())}  # fmt: skip


def fit_text_unet(
    unet: nn.Module,
    vae: nn.Module,
    images: Tensor,
    prompt_ids: Tensor,
    table: Tensor | PromptTable,
    cfg: SDTeacherConfig,
    rng: torch.Generator,
    progress: bool,
) -> tuple[nn.Module, dict[str, float]]:
    """Stage 3: ``prompt_ids: (N,)`` index the rows of ``table`` (``(P + 1, L, E)``, last row
    the empty prompt). A ``PromptTable`` trains with the UNet (one optimiser, one EMA) and ends
    holding its EMA weights, frozen; a tensor stays fixed. Returns the EMA UNet (eval, frozen)
    and the final loss."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, **SD_BETAS, clip_sample=False)
    with torch.no_grad():
        dist = vae.encode(images).latent_dist
    mean, std, sf = dist.mean, dist.std, vae.config.scaling_factor
    joint = isinstance(table, PromptTable)
    model = nn.ModuleDict({"unet": unet, **({"text": table.encoder} if joint else {})})
    model.requires_grad_(True).train()
    ema, opt, losses = copy.deepcopy(model).requires_grad_(False), _adamw(model, cfg.lr, cfg), []
    null = len(table.texts) - 1 if joint else table.shape[0] - 1
    for step in tqdm(range(cfg.steps), disable=not progress, desc="unet"):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg.steps)
        idx = torch.randint(images.shape[0], (cfg.batch_size,), generator=rng)
        drop = torch.rand(cfg.batch_size, generator=rng) < cfg.prompt_dropout
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=rng)) * sf
        t = torch.randint(1000, (cfg.batch_size,), generator=rng)
        eps = torch.randn(z0.shape, generator=rng)
        rows = table() if joint else table
        context = rows[torch.where(drop, null, prompt_ids[idx])]
        pred = unet(scheduler.add_noise(z0, eps, t), t, encoder_hidden_states=context).sample
        loss = (pred - eps).square().mean()
        check_finite(loss, step, "text UNet loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        check_finite(nn.utils.clip_grad_norm_(model.parameters(), 1.0), step, "gradient norm")
        opt.step()
        halflife = max(min(cfg.ema_halflife_steps, 0.05 * (step + 1)), 1e-8)
        ema_update(ema, model, ema_decay(halflife))
        losses.append(loss.item())
    if joint:
        table.encoder.load_state_dict(ema["text"].state_dict())
        table.encoder.eval().requires_grad_(False)
    window = losses[-max(1, cfg.steps // 20) :]
    return ema["unet"].eval(), {"unet_final_loss": sum(window) / len(window)}


def prompt_table(
    prompts: Sequence[str], encode: Callable[[list[str]], Tensor]
) -> tuple[Tensor, Tensor, list[str]]:
    """``(ids (N,), table (P + 1, L, E), texts)``: the distinct prompts, then the empty one."""
    texts = sorted(set(prompts))
    with torch.no_grad():
        table = encode([*texts, ""]).detach()
    ids = torch.tensor([texts.index(p) for p in prompts])
    return ids, table, texts


def _save_pipeline(parts: dict[str, Any], out: Path) -> Path:
    """``StableDiffusionPipeline(**parts).save_pretrained`` into ``out/pipeline`` atomically."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sched = DDIMScheduler(
        num_train_timesteps=1000, **SD_BETAS, clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, timestep_spacing="trailing",
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        **parts, scheduler=sched, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    final, tmp = out / "pipeline", out / f".pipeline-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def train_sd_teacher(
    images: Tensor,
    labels: Tensor | None,
    out: str | os.PathLike,
    *,
    config: SDTeacherConfig | None = None,
    classes: Sequence[str] = (),
    captions: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the tiny text-to-image teacher on ``images: (N, C, H, H)`` in [-1, 1] with
    ``labels: (N,)`` (named by ``classes``, default the digit; prompts ``digit_prompts``) or
    one caption per image (``captions``, whose words also become tokens: ``caption_words``),
    and save ``out/pipeline`` (``StableDiffusionPipeline`` layout) and ``out/train_info.json``.
    Reproducible from ``config.seed`` (one generator); no resume: the whole run takes minutes."""
    cfg = config or SDTeacherConfig()
    if cfg.steps < 1 or cfg.vae_steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps, vae_steps and batch_size must be >= 1; got {cfg}")
    if not 0.0 <= cfg.vae_noise_share <= 1.0:
        raise ValueError(f"vae_noise_share must lie in [0, 1]; got {cfg.vae_noise_share}")
    out = Path(out)
    if (out / "pipeline").exists():
        raise ValueError(f"{out} already holds a teacher (pipeline/); pass another --out")
    if (captions is None) == (labels is None) or len(images) != len(captions or images):
        raise ValueError("give labels or captions (not both), one per image")
    words = caption_words(captions) if captions is not None else ()
    tokenizer, text_encoder = make_clip_text(cfg, words)
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # diffusers initialises weights from the global RNG
        vae = make_vae(images.shape[1], cfg)
        unet = make_text_unet(images.shape[-1] // 2 ** (len(cfg.vae_channels) - 1), cfg)
    rng = torch.Generator().manual_seed(cfg.seed)
    x = images.to(torch.float32)
    info: dict[str, Any] = fit_vae(vae, x, cfg, rng, progress)
    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    info["vae_train_mse"] = float((recon - x).square().mean())

    ids, table, texts = prompt_table(
        list(captions) if captions else digit_prompts(x, labels, classes),
        lambda p: encode_text(tokenizer, text_encoder, p),
    )
    if cfg.train_text_encoder:
        table = PromptTable(tokenizer, text_encoder, texts)  # text_encoder ends at its EMA
    ema, unet_info = fit_text_unet(unet, vae, x, ids, table, cfg, rng, progress)
    parts = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": ema}
    path = _save_pipeline(parts, out)
    info |= unet_info | {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "params": {
            k: sum(p.numel() for p in m.parameters())
            for k, m in parts.items()
            if isinstance(m, nn.Module)
        },
        "prompts": texts,
        "pipeline": str(path),
        "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        **asdict(cfg),
    }
    atomic_write_json(out / "train_info.json", info)
    return info
