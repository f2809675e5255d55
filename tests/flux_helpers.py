"""A tiny ``FluxPipeline`` built from configs (offline): the CLIP tokenizer and T5 of
``test_sd3_teacher``, a ``CLIPTextModel`` (pooled output), a one-block
``FluxTransformer2DModel`` and a 2×-downsampling ``AutoencoderKL`` with ``shift_factor``; the
VAE's ``sample_size`` 8 is the teacher's image size (latents 4×4, 2×2 packed tokens)."""

from __future__ import annotations

import torch
import transformers
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)

from test_sd3_teacher import _clip_tokenizer, _t5

PROMPTS = ["a photo of a cat", "two dogs"]
SIZE, LATENT = 8, 4  # pixels (vae sample_size), latent side
T5_LENGTH = 16  # the T5 tokenizer's model_max_length: the teacher's max_sequence_length
SCHEDULER = {  # FLUX.1-dev's scheduler_config.json
    "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}  # fmt: skip


def clip_text_model(seed: int = 1, width: int = 16):
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(
        vocab_size=514, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )  # fmt: skip
    return transformers.CLIPTextModel(config).eval()


def flux_pipe(guidance_embeds: bool = True) -> FluxPipeline:
    torch.manual_seed(4)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4),
    ).eval()  # fmt: skip
    torch.manual_seed(5)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=1.5, shift_factor=0.1,
        sample_size=SIZE, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()  # fmt: skip
    t5, t5_tokenizer = _t5()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
        text_encoder=clip_text_model(), tokenizer=_clip_tokenizer(16),
        text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe
