"""The tiny text-to-image teacher's two training stages with a **stand-in** text encoder, for
machines without transformers (``docs/text_to_image.md``, "Measured")::

    OMP_NUM_THREADS=1 python benchmarks/sd_teacher_standin.py --json sd_standin.json

The stand-in is a random, frozen, char-level causal transformer of CLIP's shape (width 32,
2 layers, 32 tokens, final LayerNorm); the VAE and UNet recipe are ``train.sd_teacher``'s.
Reports the VAE's reconstruction MSE and the digits classifier's accuracy on held-out
reconstructions, CPU seconds per stage, and FD / prompt accuracy / precision / recall of 500
samples (prompt ``"a handwritten d"``, 50 per digit) from diffusers' ``DDIMScheduler`` (the
scheduler the pipeline saves, 20 steps) at each CFG scale.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from scoredistill.data import load_digits_images
from scoredistill.eval.features import image_metrics, load_digits_feature_net
from scoredistill.train.sd_teacher import (
    SD_BETAS,
    SDTeacherConfig,
    digit_prompts,
    fit_text_unet,
    fit_vae,
    make_text_unet,
    make_vae,
    prompt_table,
)


class StandInText(nn.Module):
    """Bytes + bos/eos, padded with eos to ``length``; random frozen causal transformer."""

    def __init__(self, length: int = 32, width: int = 32, layers: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.length = length
        self.tok, self.pos = nn.Embedding(258, width), nn.Embedding(length, width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, 4, 2 * width, 0.0, batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.ln = nn.LayerNorm(width)
        self.eval().requires_grad_(False)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = [([256, *p.replace(" ", "").encode(), 257] + [257] * self.length)[: self.length]
               for p in prompts]  # fmt: skip
        h = self.tok(torch.tensor(ids)) + self.pos.weight[None]
        mask = nn.Transformer.generate_square_subsequent_mask(self.length)
        for layer in self.layers:
            h = layer(h, src_mask=mask, is_causal=True)
        return self.ln(h)


@torch.no_grad()
def sample(unet, vae, enc, labels: torch.Tensor, w: float, steps: int) -> torch.Tensor:
    """DDIM (the saved pipeline's scheduler) with CFG ``u + w (c - u)``; images in [-1, 1]."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          timestep_spacing="trailing")  # fmt: skip
    sched.set_timesteps(steps)
    ctx = enc([f"a handwritten {d}" for d in labels.tolist()])
    null = enc([""]).expand_as(ctx)
    size = unet.config.sample_size
    z = torch.randn(len(labels), unet.config.in_channels, size, size,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    for t in sched.timesteps:
        e_u, e_c = unet(
            torch.cat([z, z]), t, encoder_hidden_states=torch.cat([null, ctx])
        ).sample.chunk(2)
        z = sched.step(e_u + w * (e_c - e_u), t, z).prev_sample
    return vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=SDTeacherConfig.steps)
    p.add_argument("--vae-steps", type=int, default=SDTeacherConfig.vae_steps)
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cfg = SDTeacherConfig(steps=args.steps, vae_steps=args.vae_steps)
    train, test = load_digits_images("train"), load_digits_images("test")
    torch.manual_seed(cfg.seed)
    vae, unet = make_vae(1, cfg), make_text_unet(4, cfg)
    rng, out = torch.Generator().manual_seed(cfg.seed), {}
    c0 = time.process_time()
    out |= fit_vae(vae, train.x, cfg, rng, progress=False)
    out["vae_cpu_s"] = time.process_time() - c0
    with torch.no_grad():
        recon = vae.decode(vae.encode(test.x).latent_dist.mean).sample.clamp(-1, 1)
    net = load_digits_feature_net()
    out["vae_test_mse"] = float((recon - test.x).square().mean())
    out["vae_test_recon_acc"] = float((net.logits(recon).argmax(1) == test.labels).double().mean())
    enc = StandInText(cfg.max_length, cfg.text_width, cfg.text_layers)
    ids, table, _ = prompt_table(digit_prompts(train.x, train.labels), enc)
    c0 = time.process_time()
    ema, info = fit_text_unet(unet, vae, train.x, ids, table, cfg, rng, progress=False)
    out |= info | {"unet_cpu_s": time.process_time() - c0}
    labels = torch.arange(args.n) % 10
    for w in args.cfg:
        m = image_metrics(sample(ema, vae, enc, labels, w, 20), labels)
        out[f"cfg{w:g}"] = {k: m[k] for k in ("fd", "class_acc", "precision", "recall")}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
