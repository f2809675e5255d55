"""SNOOPI's NASA processor (``sources.nasa_attention``) on a real ``UNet2DConditionModel``.

Checked against computations independent of the processor: every cross-attention layer of a
whole UNet forward returns ``W_o (Z+ - alpha Z-) + b_o`` with ``Z = softmax(Q K^T / sqrt d) V``
written out per head from the layer's own weights (SNOOPI eqs. 7-9); self-attention layers
return the same formula without a negative; ``alpha = 0`` and ``disable_nasa`` give the stock
processors' UNet output; bad ``alpha`` or negative shapes are refused by name.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scoredistill.sources.nasa_attention import (
    NASAAttnProcessor,
    disable_nasa,
    enable_nasa,
    nasa_layers,
)

pytestmark = pytest.mark.usefixtures("one_thread")
NEG = "negative_encoder_hidden_states"
TOL = 1e-5  # float32 sums over <= 64 terms of O(1) values: rounding ~1e-6


@pytest.fixture(scope="module")
def unet(sd_folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(f"{sd_folder}/unet").eval()


def _inputs(unet, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, s, e = unet.config.in_channels, unet.config.sample_size, unet.config.cross_attention_dim
    x = torch.randn(b, c, s, s, generator=g)
    t = torch.tensor([900.0, 400.0, 50.0][:b])
    pos, neg = torch.randn(b, 12, e, generator=g), torch.randn(b, 9, e, generator=g)  # L+ != L-
    return x, t, pos, neg


def _out(unet, x, t, pos, **kwargs):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=pos, **kwargs).sample


def _by_hand(attn, h, ctxs_and_weights):
    """``to_out(sum_i w_i softmax(Q K_i^T / sqrt d) V_i)`` with explicit per-head softmax."""
    assert attn.spatial_norm is None and attn.group_norm is None and attn.norm_cross is None
    assert not attn.residual_connection and attn.rescale_output_factor == 1.0
    heads = attn.heads

    def split(y):  # (B, N, H*d) -> (B, H, N, d)
        return y.view(y.shape[0], y.shape[1], heads, -1).transpose(1, 2)

    q = split(F.linear(h, attn.to_q.weight, attn.to_q.bias))
    z = 0.0
    for ctx, w in ctxs_and_weights:
        k = split(F.linear(ctx, attn.to_k.weight, attn.to_k.bias))
        v = split(F.linear(ctx, attn.to_v.weight, attn.to_v.bias))
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        z = z + w * (p @ v)
    z = z.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1)
    return F.linear(z, attn.to_out[0].weight, attn.to_out[0].bias)


def _record(unet, names):
    """Forward hooks on ``names``: a list of (module, hidden input, kwargs, output)."""
    seen, handles = [], []
    for n in names:
        mod = unet.get_submodule(n)

        def hook(m, args, kwargs, out):
            seen.append((m, args[0], kwargs, out))

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    return seen, handles


def test_layers_found_are_the_cross_attentions(unet):
    names = nasa_layers(unet)
    assert names and all(n.endswith("attn2") for n in names)
    assert len(names) == sum(k.endswith("attn1.processor") for k in unet.attn_processors)


def test_alpha_zero_is_the_stock_unet(unet):
    x, t, pos, neg = _inputs(unet)
    stock = _out(unet, x, t, pos)
    enable_nasa(unet, 0.0, negative=neg)
    try:
        got = _out(unet, x, t, pos, cross_attention_kwargs={NEG: neg})
    finally:
        disable_nasa(unet)
    torch.testing.assert_close(got, stock, atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_every_layer_is_eq9_by_hand_inside_a_unet_forward(unet, alpha):
    x, t, pos, neg = _inputs(unet)
    stock = _out(unet, x, t, pos)
    cross = nasa_layers(unet)
    selfs = [n.removesuffix("attn2") + "attn1" for n in cross]
    enable_nasa(unet, alpha)
    seen, handles = _record(unet, cross + selfs)
    try:
        got = _out(unet, x, t, pos, cross_attention_kwargs={NEG: neg})
    finally:
        for hd in handles:
            hd.remove()
        disable_nasa(unet)
    assert len(seen) == 2 * len(cross)
    for attn, h, kw, out in seen:
        if attn.is_cross_attention:  # eq. 9 with the layer's own projections
            assert kw["encoder_hidden_states"] is pos and kw[NEG] is neg
            want = _by_hand(attn, h, [(pos, 1.0), (neg, -alpha)])
        else:  # self-attention: unchanged (its own input as context, no negative)
            assert kw.get("encoder_hidden_states") is None
            want = _by_hand(attn, h, [(h, 1.0)])
        torch.testing.assert_close(out, want, atol=TOL, rtol=TOL)
    assert (got - stock).abs().max() > 1e-3  # the negative changed the UNet's output


def test_stored_negative_kwargs_and_broadcast_agree(unet):
    x, t, pos, neg = _inputs(unet)
    enable_nasa(unet, 0.5)
    try:
        by_kwarg = _out(unet, x, t, pos, cross_attention_kwargs={NEG: neg[:1]})
        by_alpha = _out(unet, x, t, pos, cross_attention_kwargs={NEG: neg[:1].expand(3, -1, -1),
                                                                  "nasa_alpha": 0.5})  # fmt: skip
        enable_nasa(unet, 0.5, negative=neg[:1])  # re-enabling wraps the stock processors again
        assert not any(isinstance(p.base, NASAAttnProcessor) for p in unet.attn_processors.values())
        stored = _out(unet, x, t, pos)
        off = _out(unet, x, t, pos, cross_attention_kwargs={"nasa_alpha": 0.0})
    finally:
        disable_nasa(unet)
    torch.testing.assert_close(by_alpha, by_kwarg, atol=1e-6, rtol=0)
    torch.testing.assert_close(stored, by_kwarg, atol=1e-6, rtol=0)
    torch.testing.assert_close(off, _out(unet, x, t, pos), atol=1e-6, rtol=0)


def test_disable_restores_the_same_processors_and_outputs(unet):
    x, t, pos, neg = _inputs(unet)
    before = dict(unet.attn_processors)
    stock = _out(unet, x, t, pos)
    enable_nasa(unet, 1.0, negative=neg)
    assert all(isinstance(p, NASAAttnProcessor) for p in unet.attn_processors.values())
    assert not torch.allclose(_out(unet, x, t, pos), stock, atol=1e-3)
    disable_nasa(unet)
    assert all(unet.attn_processors[k] is p for k, p in before.items())
    assert torch.equal(_out(unet, x, t, pos), stock)


@pytest.mark.parametrize("alpha", [-0.1, math.nan, math.inf, "0.1", True])
def test_bad_alpha_is_refused_by_name(unet, alpha):
    with pytest.raises(ValueError, match="alpha"):
        enable_nasa(unet, alpha)
    x, t, pos, neg = _inputs(unet)
    enable_nasa(unet, 0.1)
    try:
        with pytest.raises(ValueError, match="nasa_alpha"):
            _out(unet, x, t, pos, cross_attention_kwargs={NEG: neg, "nasa_alpha": alpha})
    finally:
        disable_nasa(unet)


def test_bad_negative_shape_is_refused_by_name(unet):
    x, t, pos, neg = _inputs(unet)
    e = unet.config.cross_attention_dim
    with pytest.raises(ValueError, match=NEG):
        enable_nasa(unet, 0.1, negative=torch.zeros(3, 9, e + 1))  # wrong width
    with pytest.raises(ValueError, match=NEG):
        enable_nasa(unet, 0.1, negative=torch.zeros(9, e))  # no batch axis
    enable_nasa(unet, 0.1)
    try:
        for bad in (neg[:2], neg[..., :-1], neg[0]):  # batch 2 of 3, width, 2-D
            with pytest.raises(ValueError, match=NEG):
                _out(unet, x, t, pos, cross_attention_kwargs={NEG: bad})
    finally:
        disable_nasa(unet)


def test_stock_pipeline_call_with_cross_attention_kwargs(sd_folder):
    """The user path: ``pipe(..., cross_attention_kwargs={NEG: neg})`` on the saved folder."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a handwritten 3", "a handwritten 7"]
    neg = pipe.encode_prompt(["a bold handwritten 3"] * 2, "cpu", 1, False)[0]

    def run(**kw):
        g = torch.Generator().manual_seed(0)
        return pipe(prompts, num_inference_steps=2, guidance_scale=1.0, generator=g,
                    output_type="latent", **kw).images  # fmt: skip

    stock = run()
    enable_nasa(pipe.unet, 0.0)
    zero = run(cross_attention_kwargs={NEG: neg})
    steered = run(cross_attention_kwargs={NEG: neg, "nasa_alpha": 1.0})
    disable_nasa(pipe.unet)
    torch.testing.assert_close(zero, stock, atol=1e-6, rtol=0)
    assert (steered - stock).abs().max() > 1e-3
