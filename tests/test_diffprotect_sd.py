"""Diff-Protect on a diffusers latent pipeline (``runs.systems.diffprotect_sd``), on the tiny
``sd_folder`` pipeline: the SDS and AdvDM gradients against autograd of losses written here with
the raw diffusers VAE / UNet / CLIP (the library's adapter not used), the L-inf budget and image
range, the autograd-saved memory, seeded determinism, config errors and one small end-to-end run.
"""

from __future__ import annotations

import pytest
import torch

from scoredistill.config import ConfigError
from scoredistill.data import load_digits_images
from scoredistill.objectives._ingredients import sample_t
from scoredistill.runs.systems import diffprotect_attacks as atk
from scoredistill.runs.systems.diffprotect_sd import (
    DiffProtectSDConfig,
    attack_gradient,
    load_mimicry,
    mimic,
    protect,
    run_measurement,
)
from scoredistill.teachers.diffusers_latent import load_latent_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(sd_folder):
    return load_latent_teacher(sd_folder)


@pytest.fixture(scope="module")
def raw(sd_folder):
    """The folder's components loaded by diffusers / transformers themselves."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"local_files_only": True}
    vae = AutoencoderKL.from_pretrained(sd_folder / "vae", **kw).eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet", **kw).eval()
    tok = CLIPTokenizer.from_pretrained(sd_folder / "tokenizer", **kw)
    text = CLIPTextModel.from_pretrained(sd_folder / "text_encoder", **kw).eval()
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    with torch.no_grad():
        null = text(ids.input_ids)[0]
    sched = DDIMScheduler.from_pretrained(sd_folder / "scheduler", **kw)
    return vae, unet.requires_grad_(False), null, sched.alphas_cumprod.double()


@pytest.fixture(scope="module")
def digits():
    data = load_digits_images("test")
    return data.x[:3], data.labels[:3]


def _raw_terms(raw, x, seed, teacher, ehs=None):
    """``(z, eps_phi(z_t, t, "") - eps)`` with the same ``(t, eps)`` draws as the attacks: ``t``
    the k = 999 t fraction of the table, ``alpha, sigma`` from log-SNR interpolated linearly
    between the table's entries (the VP table convention, docs/architecture.md)."""
    vae, unet, null, ac = raw
    rng = torch.Generator().manual_seed(seed)
    z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor  # (B, 4, 4, 4)
    t = sample_t(x.shape[0], teacher.schedule, (0.0, 1.0), rng, reference=None)
    eps = torch.randn(z.flatten(1).shape, generator=rng).reshape(z.shape)
    k = 999 * t.double()
    lam_tab = (ac / (1 - ac)).log()
    lo = k.floor().long().clamp(max=998)
    lam = lam_tab[lo] + (k - lo) * (lam_tab[lo + 1] - lam_tab[lo])
    alpha, sigma = (torch.sigmoid(lam).sqrt().float(), torch.sigmoid(-lam).sqrt().float())
    z_t = alpha[:, None, None, None] * z + sigma[:, None, None, None] * eps
    ehs = null.expand(x.shape[0], -1, -1) if ehs is None else ehs
    eps_phi = unet(z_t, timestep=k.float(), encoder_hidden_states=ehs).sample
    return z, eps_phi - eps


def _close(got, want):
    # float32: the adapter's eps -> x0 -> eps round trip divides by sigma_t >= 0.029 (SD table,
    # k = 0), ~3e-6 relative; 1e-4 of the largest entry leaves a margin of 30
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))


def test_sds_is_the_encoder_only_gradient_of_the_surrogate(teacher, raw, digits):
    x = digits[0].clone().requires_grad_(True)
    z, r = _raw_terms(raw, x, 7, teacher)
    (want,) = torch.autograd.grad((r.detach() * z).sum(), x)  # <sg(eps_phi - eps), E(x)>
    got = attack_gradient("sds+", teacher)(digits[0], torch.Generator().manual_seed(7))
    _close(got, want)


def test_advdm_is_the_full_autograd_gradient(teacher, raw, digits):
    x = digits[0].clone().requires_grad_(True)
    _, r = _raw_terms(raw, x, 7, teacher)
    (want,) = torch.autograd.grad(r.pow(2).sum(), x)  # through encoder and UNet
    got = attack_gradient("advdm-", teacher)(digits[0], torch.Generator().manual_seed(7))
    _close(got, want)
    sds = attack_gradient("sds-", teacher)(digits[0], torch.Generator().manual_seed(7))
    cos = torch.nn.functional.cosine_similarity(sds.flatten(), got.flatten(), dim=0)
    assert cos < 0.99  # the UNet's Jacobian is not dropped: a different direction


def test_a_class_aware_prompt_conditions_each_image_on_its_own_class(
    teacher, raw, sd_folder, digits
):
    from transformers import CLIPTextModel, CLIPTokenizer

    x0, y = digits
    cfg = DiffProtectSDConfig(attack_prompt="a handwritten {digit}")
    prompts = cfg.attack_prompts(y)
    assert prompts == [f"a handwritten {int(d)}" for d in y] and len(set(prompts)) > 1
    kw = {"local_files_only": True}  # the prompts encoded by transformers, not the adapter
    tok = CLIPTokenizer.from_pretrained(sd_folder / "tokenizer", **kw)
    text = CLIPTextModel.from_pretrained(sd_folder / "text_encoder", **kw).eval()
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    with torch.no_grad():
        ehs = text(ids.input_ids)[0]
    x = x0.clone().requires_grad_(True)
    z, r = _raw_terms(raw, x, 7, teacher, ehs)
    (want,) = torch.autograd.grad((r.detach() * z).sum(), x)
    got = attack_gradient("sds+", teacher, prompts)(x0, torch.Generator().manual_seed(7))
    _close(got, want)
    generic = attack_gradient("sds+", teacher)(x0, torch.Generator().manual_seed(7))
    assert not torch.allclose(got, generic)  # the class changed the gradient
    with pytest.raises(ValueError, match="labels"):
        protect(
            x0, "sds-", teacher, DiffProtectSDConfig(steps=1, **{"attack_prompt": "a {digit}"}), 0
        )
    x_adv, _ = protect(
        x0, "sds-", teacher, DiffProtectSDConfig(steps=1, attack_prompt="a {digit}"), 0, y
    )
    assert x_adv.shape == x0.shape


def test_pgd_respects_the_budget_and_the_image_range(teacher, digits):
    x0 = digits[0]
    # 4 steps of 0.06 can travel 0.24: the projection onto eps = 0.1 must act
    cfg = DiffProtectSDConfig(steps=4, epsilon=0.1, step_size=0.06)
    assert bool((x0 == -1).any())  # background pixels: clipping at -1 is exercised
    for method in ("sds+", "sds-", "advdm+", "random"):
        x_adv, _ = protect(x0, method, teacher, cfg, seed=3)
        d = (x_adv - x0).abs()
        assert float(d.max()) <= 0.1 + 1e-6
        assert float(d.max()) >= 0.1 - 1e-6  # the budget is reached somewhere
        assert float(x_adv.min()) >= -1.0 and float(x_adv.max()) <= 1.0


def test_sds_saves_only_the_encoders_activations(teacher, digits):
    x0 = digits[0]

    def encoder_only(x, rng):  # the backward pass SDS needs: E's activations, nothing else
        x = x.detach().requires_grad_(True)
        teacher.encode(x).sum().backward()
        return x.grad

    enc = atk.saved_bytes(encoder_only, x0, torch.Generator().manual_seed(0))
    sds = atk.saved_bytes(attack_gradient("sds-", teacher), x0, torch.Generator().manual_seed(0))
    full = atk.saved_bytes(attack_gradient("advdm-", teacher), x0, torch.Generator().manual_seed(0))
    assert sds == enc  # the UNet runs without a graph
    assert full > 2 * enc  # the UNet's activations (x5 on the bundled teacher) come on top


def test_seeded_determinism(teacher, sd_folder, digits):
    x0, y = digits
    cfg = DiffProtectSDConfig(steps=2, inference_steps=20)
    a, _ = protect(x0, "sds-", teacher, cfg, seed=5)
    b, _ = protect(x0, "sds-", teacher, cfg, seed=5)
    c, _ = protect(x0, "sds-", teacher, cfg, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    pipe = load_mimicry(sd_folder)
    m1, m2, m3 = (mimic(pipe, x0, y, 0.3, cfg, s) for s in (1, 1, 2))
    assert m1.shape == x0.shape and float(m1.abs().max()) <= 1.0
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("strengths", (0.0,)),
        ("strengths", (0.005,)),  # int(100 * 0.005) = 0 img2img steps
        ("methods", ("sds", "none")),
        ("methods", ("none", "none")),
        ("n_images", 451),
        ("step_size", 1.0),
        ("mimic_prompt", "a handwritten digit"),
        ("attack_prompt", "a handwritten {class}"),  # the only placeholder is {digit}
    ],
)
def test_bad_config_names_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        DiffProtectSDConfig(**{key: value})


@pytest.mark.slow
def test_end_to_end_small(sd_folder):
    cfg = DiffProtectSDConfig(
        teacher=str(sd_folder),
        steps=2,
        n_images=4,
        inference_steps=20,
        strengths=(0.1, 0.3),
        methods=("none", "sds-", "advdm-"),
    )
    saved = []
    out = run_measurement(cfg, save=lambda r: saved.append(sorted(r)))
    res = out["results"]
    assert saved[-1] == ["advdm-", "none", "sds-"]
    assert res["none"]["linf"] == 0.0 and res["none"]["pert_psnr"] is None
    assert 0 < res["sds-"]["linf"] <= cfg.epsilon + 1e-6
    assert res["advdm-"]["saved_kib_per_step"] > res["sds-"]["saved_kib_per_step"]
    for r in res.values():
        assert 0.0 <= r["acc_mean"] <= 1.0 and r["l2@0.3"] > 0
    assert 0.0 < out["claims"]["sign_agreement_sds_advdm"] < 1.0
    assert "l2_mean:sds--advdm-" in out["claims"]
