"""The view-aware text-to-image teacher: its data (``teachers.views_sd_data``), its tokenizer
(view words as whole tokens), its judge (``eval.views_sd``) and the bundled folder
``assets/teachers/views-sd`` loaded by stock diffusers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scoredistill.eval.views_sd import reference_ring, sector_scores, truth_scores, view_scores
from scoredistill.teachers.views import prompt_for_azimuth
from scoredistill.teachers.views_sd_data import (
    VIEW_SUFFIXES,
    ViewsDataConfig,
    biased_azimuths,
    render_object,
    views_sd_data,
)
from scoredistill.train.sd_teacher import SDTeacherConfig, caption_words, make_clip_text

FOLDER = Path(__file__).resolve().parents[1] / "assets" / "teachers" / "views-sd"
VIEW_WORDS = ("front", "side", "back", "view")
SMALL = ViewsDataConfig(n_images=96, n_samples=16, resolution=16, seed=3)


def test_captions_are_the_field_paths_prompt_rows():
    from scoredistill.runs.optimize_sd_field import VIEW_SUFFIXES as FIELD_SUFFIXES
    from scoredistill.runs.optimize_sd_field import field_prompts

    assert VIEW_SUFFIXES == FIELD_SUFFIXES
    x, captions, az = views_sd_data(SMALL)
    assert x.shape == (96, 3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1
    rows = field_prompts(["a toy"], type("S", (), {"prompt_index": 0, "view_prompts": True}))
    assert set(captions) == set(rows)  # "a toy" and its three view rows, nothing else
    n_base = round(SMALL.base_fraction * SMALL.n_images)
    assert captions[:n_base] == ["a toy"] * n_base
    sectors = prompt_for_azimuth(az[n_base:]).tolist()
    assert captions[n_base:] == [f"a toy, {VIEW_SUFFIXES[s]}" for s in sectors]
    grey = views_sd_data(ViewsDataConfig(n_images=8, n_samples=16, resolution=16, channels=1))[0]
    assert grey.shape == (8, 1, 8, 8)


def test_biased_azimuths_follow_the_von_mises_mass_near_the_front():
    n, kappa = 20000, 4.0
    az = biased_azimuths(n, kappa, torch.Generator().manual_seed(0))
    near = (torch.minimum(az, 360 - az) <= 30).double().mean().item()
    # closed form: ∫_{-30°}^{30°} exp(κ cos θ) dθ / (2π I0(κ)), by a fine midpoint rule
    th = torch.linspace(-math.pi, math.pi, 200001, dtype=torch.float64)[:-1] + math.pi / 200000
    w = torch.exp(kappa * torch.cos(th))
    p = float(w[th.abs() <= math.radians(30)].sum() / w.sum())
    torch.testing.assert_close(w.mean(), torch.special.i0(torch.tensor(kappa).double()))
    assert abs(near - p) < 4 * math.sqrt(p * (1 - p) / n)  # 4 binomial standard errors


def test_view_words_become_whole_tokens_and_digits_tokenizer_is_unchanged():
    pytest.importorskip("transformers")
    cfg = SDTeacherConfig()
    plain, _ = make_clip_text(cfg)
    assert len(plain.get_vocab()) == 2 + 2 * 256  # the digits teacher's char-level vocabulary
    assert plain.tokenize("front") == ["f", "r", "o", "n", "t</w>"]
    words = caption_words(["a toy", *(f"a toy, {v}" for v in VIEW_SUFFIXES)])
    assert words == ["back", "front", "side", "toy", "view"]
    tok, enc = make_clip_text(cfg, words)
    for w in words:
        assert tok.tokenize(w) == [w + "</w>"]
    ids = tok("a toy, back view")["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[1:-1] == ["a</w>", "toy</w>", ",</w>", "back</w>",
                                                    "view</w>"]  # fmt: skip
    assert enc.config.vocab_size == len(tok.get_vocab())


def test_the_judge_scores_the_truth_perfect_and_a_janus_field_at_one():
    cfg = ViewsDataConfig(n_samples=16, resolution=16)
    ref = reference_ring(cfg, n=72)
    az = 360.0 * torch.arange(24, dtype=torch.float64) / 24
    truth = truth_scores(az, ref, cfg)
    assert truth["view_acc"] == 1.0 and truth["janus"] == 0.0 and truth["off_45"] == 0.0
    assert truth["psnr"] == math.inf  # the ring holds these very cameras
    # cdist's |a|^2 + |b|^2 - 2ab form in float64 leaves ~sqrt(1e-16) of cancellation error
    assert truth["nn_rms"] < 1e-6
    front = render_object(cfg, torch.zeros(24).double(), torch.full((24,), 15.0).double())
    janus = view_scores(front, az, ref, cfg)  # the face from every camera
    assert janus["janus"] == 1.0 and janus["view_entropy"] == 0.0
    assert janus["view_acc"] == pytest.approx((prompt_for_azimuth(az) == 0).double().mean().item())
    s = sector_scores(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 0, 2]))
    assert s == {"view_acc": 0.5, "view_acc_front": 1.0, "view_acc_side": 0.0,
                 "view_acc_back": 0.5, "janus": 0.5}  # fmt: skip


@pytest.mark.skipif(not (FOLDER / "pipeline").is_dir(), reason="no bundled views-sd teacher")
def test_the_bundled_folder_loads_with_stock_diffusers_and_knows_view_words():
    pytest.importorskip("transformers")
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(FOLDER / "pipeline", local_files_only=True)
    for w in VIEW_WORDS:
        assert pipe.tokenizer.tokenize(w) == [w + "</w>"]
    g = torch.Generator().manual_seed(0)
    out = pipe("a toy, back view", num_inference_steps=4, generator=g, output_type="np").images
    assert out.shape == (1, 8, 8, 3) and bool((out >= 0).all() and (out <= 1).all())
    prompts = (FOLDER / "prompts.txt").read_text().split("\n")
    assert prompts[0] == "a toy"
    assert sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file()) <= 6 * 2**20


def test_train_sd_teacher_takes_captions_and_saves_their_words_as_tokens(tmp_path):
    pytest.importorskip("transformers")
    from diffusers import DiffusionPipeline

    from scoredistill.train.sd_teacher import train_sd_teacher

    x, captions, _ = views_sd_data(SMALL)
    tiny = SDTeacherConfig(steps=3, vae_steps=3, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="labels or captions"):
        train_sd_teacher(x, torch.zeros(len(x)).long(), tmp_path, config=tiny, captions=captions)
    with pytest.raises(ValueError, match="one per image"):
        train_sd_teacher(x, None, tmp_path, config=tiny, captions=captions[:-1])
    info = train_sd_teacher(x, None, tmp_path, config=tiny, captions=captions, progress=False)
    assert info["prompts"] == sorted(set(captions))
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipeline", local_files_only=True)
    assert pipe.tokenizer.tokenize("a toy, side view") == ["a</w>", "toy</w>", ",</w>",
                                                           "side</w>", "view</w>"]  # fmt: skip
    assert pipe.vae.config.in_channels == 3
