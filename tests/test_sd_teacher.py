"""The tiny text-to-image teacher's recipe (``train.sd_teacher``).

The two training stages need only diffusers and run here with a stand-in text encoder; the
pipeline round trip (CLIP text encoder, ``StableDiffusionPipeline.save_pretrained``, stock
``DiffusionPipeline.from_pretrained(...)("a handwritten 3")``) needs transformers and is skipped
where it is not installed.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from torch import nn

from scoredistill.cli import main
from scoredistill.data import load_digits_images
from scoredistill.train.sd_teacher import (
    PromptTable,
    SDTeacherConfig,
    digit_prompts,
    fit_text_unet,
    fit_vae,
    make_clip_text,
    make_text_unet,
    make_vae,
    prompt_table,
    train_sd_teacher,
)

TINY = SDTeacherConfig(steps=3, vae_steps=3, batch_size=8, seed=0)


def test_prompts_split_each_digit_into_ink_terciles():
    data = load_digits_images("train")
    prompts = digit_prompts(data.x, data.labels)
    ink = (data.x.flatten(1) + 1).mean(1) / 2
    for d in range(10):
        mine = [p for p, y in zip(prompts, data.labels.tolist(), strict=True) if y == d]
        counts = [sum(p == f"a {s}handwritten {d}" for p in mine) for s in ("thin ", "", "bold ")]
        assert sum(counts) == len(mine) and max(counts) - min(counts) <= 1
        sel = data.labels == d
        bold = torch.tensor([p.startswith("a bold") for p in prompts])[sel]
        thin = torch.tensor([p.startswith("a thin") for p in prompts])[sel]
        assert float(ink[sel][bold].min()) >= float(ink[sel][thin].max())
    assert digit_prompts(data.x[:3], torch.tensor([0, 0, 1]), ("zero", "one"))[2] == (
        "a thin handwritten one"
    )


class StandIn(nn.Module):
    """A frozen text encoder of the right shape: one random vector per prompt, 6 tokens."""

    def forward(self, prompts: list[str]) -> torch.Tensor:
        seeds = [zlib.crc32(p.encode()) for p in prompts]  # stable across processes
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return torch.stack([torch.randn(6, TINY.text_width, generator=g) for g in gens])


def test_the_two_stages_train_and_scale_latents_to_unit_variance():
    data = load_digits_images("train")
    x, labels = data.x[:64], data.labels[:64]
    torch.manual_seed(0)
    vae, unet = make_vae(1, TINY), make_text_unet(4, TINY)
    rng = torch.Generator().manual_seed(0)
    info = fit_vae(vae, x, TINY, rng, progress=False)
    assert math.isfinite(info["vae_final_loss"]) and not vae.training
    with torch.no_grad():
        z = vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(5))
    # 64 images x 64 latent values: the std's relative standard error is 1/sqrt(2 * 4096) ~ 1.1 %
    # for fresh posterior samples; 5 standard errors
    assert abs(float(z.std()) * vae.config.scaling_factor - 1) < 5 / math.sqrt(2 * z.numel())
    assert vae.config.scaling_factor == info["scaling_factor"]
    ids, table, texts = prompt_table(digit_prompts(x, labels), StandIn())
    assert table.shape == (len(texts) + 1, 6, TINY.text_width) and texts == sorted(set(texts))
    assert [texts[i] for i in ids.tolist()] == digit_prompts(x, labels)
    before = [p.clone() for p in unet.parameters()]
    ema, unet_info = fit_text_unet(unet, vae, x, ids, table, TINY, rng, progress=False)
    assert math.isfinite(unet_info["unet_final_loss"]) and not ema.training
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters(), strict=True))
    assert all(not p.requires_grad for p in ema.parameters())


def test_the_text_encoder_trains_with_the_unet_and_ends_at_its_ema():
    """LDM's joint τθ: the encoder's weights move, end frozen, and equal the EMA of the raw
    weights after each optimiser step, replayed here from a recording (global step hook)."""
    pytest.importorskip("transformers")
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from scoredistill.train.common import ema_decay

    data = load_digits_images("train")
    x, labels = data.x[:32], data.labels[:32]
    cfg = SDTeacherConfig(steps=5, vae_steps=2, batch_size=8, seed=0)
    torch.manual_seed(0)
    vae, unet = make_vae(1, cfg), make_text_unet(4, cfg)
    tokenizer, encoder = make_clip_text(cfg)
    weight = encoder.get_parameter("final_layer_norm.weight")
    raw = [weight.detach().clone()]
    rng = torch.Generator().manual_seed(0)
    fit_vae(vae, x, cfg, rng, progress=False)
    ids, _, texts = prompt_table(digit_prompts(x, labels), lambda p: torch.zeros(len(p)))
    table = PromptTable(tokenizer, encoder, texts)
    handle = register_optimizer_step_post_hook(lambda *_: raw.append(weight.detach().clone()))
    try:
        fit_text_unet(unet, vae, x, ids, table, cfg, rng, progress=False)
    finally:
        handle.remove()
    assert len(raw) == cfg.steps + 1 and not torch.equal(raw[-1], raw[0])
    ema = raw[0].clone()
    for step in range(cfg.steps):  # the loop's ramped half-life
        decay = ema_decay(max(min(cfg.ema_halflife_steps, 0.05 * (step + 1)), 1e-8))
        ema.lerp_(raw[step + 1], 1 - decay)
    torch.testing.assert_close(weight, ema, rtol=0, atol=1e-7)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert table().shape == (len(texts) + 1, cfg.max_length, cfg.text_width)


def test_cli_refuses_resume_and_unlabelled_data(tmp_path, capsys):
    args = ["train-teacher", "--arch", "sd", "--quiet", "--out", str(tmp_path / "o")]
    assert main([*args, "--resume"]) == 2
    assert "--resume is for --arch unet" in capsys.readouterr().err
    from PIL import Image

    (tmp_path / "loose").mkdir()
    for i in range(2):
        Image.new("L", (8, 8), color=40 * i).save(tmp_path / "loose" / f"{i}.png")
    assert main([*args, "--data", str(tmp_path / "loose")]) == 2
    assert "prompts need class subfolders" in capsys.readouterr().err
    try:
        import transformers  # noqa: F401
    except ImportError:
        assert main([*args, "--steps", "1"]) == 2
        assert "needs transformers (pip install transformers)" in capsys.readouterr().err


def test_pipeline_round_trip_with_stock_diffusers(tmp_path):
    pytest.importorskip("transformers")
    from diffusers import DiffusionPipeline

    from scoredistill.teachers.diffusers_latent import load_latent_teacher

    data = load_digits_images("train")
    info = train_sd_teacher(data.x, data.labels, tmp_path, config=TINY, progress=False)
    folder = tmp_path / "pipeline"
    assert info["bytes"] <= 15 * 2**20
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"):
        assert (folder / part).exists()
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    out = pipe("a handwritten 3", num_inference_steps=20, output_type="np").images
    assert out.shape == (1, 8, 8, 1) and bool((out >= 0).all() and (out <= 1).all())
    teacher = load_latent_teacher(folder)
    mine = teacher.encode_prompts(["a handwritten 3"])
    theirs, negative = pipe.encode_prompt("a handwritten 3", "cpu", 1, True)
    torch.testing.assert_close(mine.embeds, theirs)
    torch.testing.assert_close(mine.null, negative)
    d = teacher.denoise(torch.zeros(1, teacher.dim), torch.tensor([0.5]), mine)
    assert d.shape == (1, 64) and bool(torch.isfinite(d).all())
    with pytest.raises(ValueError, match="already holds a teacher"):
        train_sd_teacher(data.x, data.labels, tmp_path, config=TINY, progress=False)


def test_noisy_images_blend_uniform_noise_into_the_last_rows():
    """``(1 − a) x + a u`` with ``a ~ U(0, 1)``, ``u ~ U[−1, 1]``: on black images (x = 0) each
    pixel is ``a u``, so E[y²] = E[a²] E[u²] = 1/3 · 1/3 = 1/9 (the mean over 10 000 noisy
    images has std ≈ 0.001, mostly from a², var 4/45, shared by each image's pixels: 3σ
    allowed); the first rows are untouched."""
    from scoredistill.train.sd_teacher import noisy_images

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(20_000, 1, 8, 8)
    y = noisy_images(x, 10_000, g)
    assert torch.equal(y[:10_000], x[:10_000]) and y.shape == x.shape
    assert abs(float(y[10_000:].square().mean()) - 1 / 9) < 0.003
    assert float(y.abs().max()) <= 1.0
    assert torch.equal(noisy_images(x, 0, g), x)


def test_vae_noise_share_trains_and_is_validated(tmp_path, capsys):
    x = load_digits_images("train").x[:64]
    cfg = SDTeacherConfig(steps=3, vae_steps=3, batch_size=8, seed=0, vae_noise_share=0.5)
    info = fit_vae(make_vae(1, cfg), x, cfg, torch.Generator().manual_seed(0), progress=False)
    assert math.isfinite(info["vae_final_loss"]) and info["scaling_factor"] > 0
    with pytest.raises(ValueError, match="vae_noise_share"):
        train_sd_teacher(x, torch.zeros(64, dtype=torch.long), tmp_path / "t",
                         config=SDTeacherConfig(vae_noise_share=1.5), progress=False)  # fmt: skip
    code = main(["train-teacher", "--arch", "sd", "--vae-noise-share", "2", "--out",
                 str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--vae-noise-share" in err[0]
